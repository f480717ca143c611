"""Clustering, selection, truth matching and padding, checked against by-hand loops."""

from __future__ import annotations

import awkward as ak
import numpy as np

from jetscan.core.jets import cluster_fat_jets, delta_r, match_jets, padded_constituents, take_jets
from jetscan.core.study import JetConfig


def spray(rng, pt, eta, phi, n=30, width=0.05):
    """n massless particles around (eta, phi) sharing pt."""
    shares = rng.dirichlet(np.ones(n)) * pt
    etas = eta + width * rng.standard_normal(n)
    phis = phi + width * rng.standard_normal(n)
    return shares, etas, phis


def events_from(sprays_per_event):
    out = []
    for sprays in sprays_per_event:
        pt = np.concatenate([s[0] for s in sprays])
        eta = np.concatenate([s[1] for s in sprays])
        phi = np.concatenate([s[2] for s in sprays])
        out.append(
            {
                "px": pt * np.cos(phi),
                "py": pt * np.sin(phi),
                "pz": pt * np.sinh(eta),
                "e": pt * np.cosh(eta),
                "pt": pt,
                "eta": eta,
                "phi": phi,
                "kind": np.zeros(len(pt), np.int8),
            }
        )
    return ak.zip({k: ak.Array([ev[k].tolist() for ev in out]) for k in out[0]})


def test_two_back_to_back_sprays_give_two_jets_in_window():
    rng = np.random.default_rng(3)
    ev = events_from(
        [
            [spray(rng, 850.0, 0.2, 0.0), spray(rng, 820.0, -0.4, np.pi - 0.01)],
            [spray(rng, 500.0, 0.0, 1.0), spray(rng, 860.0, 1.5, -2.0)],  # soft, and too forward
        ]
    )
    jets = cluster_fat_jets(ev, JetConfig(r=0.8, pt_window_gev=(800.0, 900.0), abs_eta_max=1.0))
    assert jets["event"].tolist() == [0, 0]
    assert jets["pt"][0] >= jets["pt"][1]  # pT-ordered within the event
    np.testing.assert_allclose(jets["pt"], [850.0, 820.0], rtol=0.01)
    counts = np.diff(jets["offsets"])
    assert counts.tolist() == [30, 30]
    # constituents are pT-ordered and sum to the jet
    for j in range(2):
        c = slice(jets["offsets"][j], jets["offsets"][j + 1])
        assert np.all(np.diff(jets["c_pt"][c]) <= 0)
        np.testing.assert_allclose(jets["c_px"][c].sum(), jets["px"][j], rtol=1e-9)


def test_take_and_pad():
    rng = np.random.default_rng(4)
    ev = events_from([[spray(rng, 850.0, 0.0, 0.0, n=40), spray(rng, 830.0, 0.1, 3.0, n=10)]])
    jets = cluster_fat_jets(ev, JetConfig(pt_window_gev=(800.0, 900.0)))
    second = take_jets(jets, np.array([1]))
    assert np.diff(second["offsets"]).tolist() == [10]
    pad = padded_constituents(jets, 20)
    assert pad["pt"].shape == (2, 20)
    assert (pad["kind"][0] >= 0).all()  # 40 constituents clipped to 20
    assert (pad["kind"][1, 10:] == -1).all() and (pad["pt"][1, 10:] == 0).all()
    np.testing.assert_allclose(pad["pt"][0], jets["c_pt"][:20].astype(np.float32))


def test_match_agrees_with_a_by_hand_loop():
    rng = np.random.default_rng(9)
    n_ev = 50
    jets = {
        "event": np.repeat(np.arange(n_ev), 2),
        "eta": rng.uniform(-1, 1, 2 * n_ev),
        "phi": rng.uniform(-np.pi, np.pi, 2 * n_ev),
        "pt": np.full(2 * n_ev, 850.0),
    }
    res_event = np.sort(rng.integers(0, n_ev, 80))
    n_res = len(res_event)
    r_eta = rng.uniform(-1, 1, n_res)
    r_phi = rng.uniform(-np.pi, np.pi, n_res)
    prod_counts = rng.integers(1, 4, n_res)
    res_of = np.repeat(np.arange(n_res), prod_counts)
    truth = {
        "event": res_event,
        "pt": np.full(n_res, 900.0),
        "eta": r_eta,
        "phi": r_phi,
        "prod_offsets": np.concatenate([[0], np.cumsum(prod_counts)]),
        "prod_eta": r_eta[res_of] + rng.normal(0, 0.3, len(res_of)),
        "prod_phi": r_phi[res_of] + rng.normal(0, 0.3, len(res_of)),
    }
    got = match_jets(jets, truth, 0.6)
    want = []
    for j in range(len(jets["eta"])):
        ok = False
        for r in np.flatnonzero(res_event == jets["event"][j]):
            near = delta_r(jets["eta"][j], jets["phi"][j], r_eta[r], r_phi[r]) < 0.6
            a, b = truth["prod_offsets"][r], truth["prod_offsets"][r + 1]
            merged = all(
                delta_r(jets["eta"][j], jets["phi"][j], truth["prod_eta"][p], truth["prod_phi"][p]) < 0.6 for p in range(a, b)
            )
            ok = ok or (near and merged)
        want.append(ok)
    assert got.tolist() == want
    assert 0 < sum(want) < len(want)  # the sample exercises both outcomes


def test_delta_r_wraps_phi():
    assert np.isclose(delta_r(0.0, np.pi - 0.05, 0.0, -np.pi + 0.05), 0.1)
