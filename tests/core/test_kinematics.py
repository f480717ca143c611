"""Tests for jetscan.core.kinematics: conversions, delta_phi, rest-frame boosts, LoLa inputs.

Physics is checked against by-hand loops and invariants (energyflow-style), on seeded
synthetic constituents (no Pythia).
"""

from __future__ import annotations

import math

import numpy as np
import pytest


from jetscan.core import kinematics as kin
from jetscan.core.errors import ConfigError


def make_jets(n_jets=64, m_max=80, n_range=(20, 60), seed=1, dtype=np.float64):
    """Seeded fat jets: 3 gaussian prongs, exponential pT, massive-ish constituents, padded."""
    rng = np.random.default_rng(seed)
    n_const = rng.integers(n_range[0], n_range[1] + 1, n_jets)
    real = np.arange(m_max)[None, :] < n_const[:, None]
    prongs = rng.normal(0, 0.25, (n_jets, 3, 2))
    which = rng.integers(0, 3, (n_jets, m_max))
    d = prongs[np.arange(n_jets)[:, None], which] + rng.normal(0, 0.05, (n_jets, m_max, 2))
    pt = np.where(real, rng.exponential(15.0, (n_jets, m_max)), 0.0)
    order = np.argsort(-pt, axis=1, kind="stable")
    pt, d = np.take_along_axis(pt, order, 1), d[np.arange(n_jets)[:, None], order]
    eta = np.where(real, rng.uniform(-2, 2, (n_jets, 1)) + d[..., 0], 0.0)
    phi = np.where(real, kin.delta_phi(rng.uniform(-np.pi, np.pi, (n_jets, 1)) + d[..., 1], 0.0), 0.0)
    mass = np.where(real, rng.choice([0.0, 0.13957, 0.10566], (n_jets, m_max)), 0.0)
    e = np.where(real, np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2), 0.0)
    return {k: v.astype(dtype) for k, v in dict(pt=pt, eta=eta, phi=phi, e=e, m=mass).items()} | {
        "n_constituents": n_const
    }


@pytest.fixture
def tiny_jets():
    return make_jets()


def _p4s_by_hand(pt, eta, phi, e):
    return np.array([e, pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)])


def test_p4s_from_ptetaphie_matches_by_hand(tiny_jets):
    j = tiny_jets
    p4s = kin.p4s_from_ptetaphie(j["pt"], j["eta"], j["phi"], j["e"])
    assert p4s.shape == j["pt"].shape + (4,)
    for jet, i in [(0, 0), (3, 5), (10, 17)]:
        ref = _p4s_by_hand(j["pt"][jet, i], j["eta"][jet, i], j["phi"][jet, i], j["e"][jet, i])
        np.testing.assert_allclose(p4s[jet, i], ref, rtol=1e-12, atol=1e-9)
    padding = j["pt"] == 0
    assert np.all(p4s[padding] == 0)


def test_conversions_round_trip(tiny_jets):
    j = tiny_jets
    p4s = kin.p4s_from_ptetaphims(j["pt"], j["eta"], j["phi"], j["m"])
    back = kin.ptetaphims_from_p4s(p4s)
    real = j["pt"] > 0
    np.testing.assert_allclose(back[..., 0][real], j["pt"][real], rtol=1e-10)
    np.testing.assert_allclose(back[..., 1][real], j["eta"][real], atol=1e-9)
    np.testing.assert_allclose(kin.delta_phi(back[..., 2][real], j["phi"][real]), 0, atol=1e-9)
    np.testing.assert_allclose(back[..., 3][real], j["m"][real], atol=1e-5)  # m << E: cancellation
    assert np.all(back[~real] == 0) and not np.isnan(back).any()


def test_ptetaphims_float32_and_beam_axis():
    out = kin.ptetaphims_from_p4s(np.array([[5.0, 0, 0, 5.0], [0, 0, 0, 0]], dtype=np.float32))
    assert out.dtype == np.float32
    assert out[0, 1] == np.inf and np.all(out[1] == 0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ms_from_p4s_numpy_and_torch(backend):
    p4s = np.array(
        [
            [5.0, 3.0, 0.0, 0.0],  # m = 4
            [13.0, 3.0, 4.0, 0.0],  # m = 12
            [1.0, 1.0, 1.0, 0.0],  # m^2 = -1: unphysical -> 0
            [0.0, 0.0, 0.0, 0.0],  # padding
            [600.0, 0.0, 0.0, 600.0],  # massless
        ]
    )
    expected = np.array([4.0, 12.0, 0.0, 0.0, 0.0])
    if backend == "torch":
        torch = pytest.importorskip("torch")
        for dtype in (torch.float32, torch.float64):
            m = kin.ms_from_p4s(torch, torch.tensor(p4s, dtype=dtype))
            assert isinstance(m, torch.Tensor) and m.dtype == dtype
            assert not torch.isnan(m).any()
            np.testing.assert_allclose(m.numpy(), expected, atol=1e-5)
    else:
        for dtype in (np.float32, np.float64):
            m = kin.ms_from_p4s(np, p4s.astype(dtype))
            assert m.dtype == dtype and not np.isnan(m).any()
            np.testing.assert_allclose(m, expected, atol=1e-5)


def test_ms_from_p4s_batched_shapes():
    p4s = np.tile(np.array([5.0, 3.0, 0.0, 0.0]), (2, 3, 1))
    assert kin.ms_from_p4s(np, p4s).shape == (2, 3)


def test_delta_phi_range_and_by_hand():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-10, 10, 2000), rng.uniform(-10, 10, 2000)
    d = kin.delta_phi(a, b)
    assert np.all(d >= -np.pi) and np.all(d < np.pi)
    by_hand = np.array([math.remainder(x - y, 2 * math.pi) for x, y in zip(a, b)])
    np.testing.assert_allclose(d, by_hand, atol=1e-12)
    assert kin.delta_phi(np.pi, 0.0) == -np.pi  # the half-open end
    assert kin.delta_phi(3.0, -3.0) == pytest.approx(6.0 - 2 * np.pi)
    assert kin.delta_phi(np.float32(3.0), np.float32(-3.0)).dtype == np.float32


def test_delta_phi_torch():
    torch = pytest.importorskip("torch")
    d = kin.delta_phi(torch.tensor([3.0, np.pi, -3.0]), torch.tensor([-3.0, 0.0, 3.0]))
    assert isinstance(d, torch.Tensor)
    np.testing.assert_allclose(d.numpy(), [6 - 2 * np.pi, -np.pi, 2 * np.pi - 6], atol=1e-6)


def _jets_p4s(j):
    p4s = kin.p4s_from_ptetaphie(j["pt"], j["eta"], j["phi"], j["e"]).astype(np.float64)
    return p4s, p4s.sum(axis=1)


def test_boost_to_rest_frame_invariants(tiny_jets):
    p4s, jets = _jets_p4s(tiny_jets)
    rest = kin.boost_to_rest_frame(p4s, jets)
    jet_pt, jet_m = np.hypot(jets[:, 1], jets[:, 2]), kin.ms_from_p4s(np, jets)
    np.testing.assert_allclose(rest[..., 1:].sum(axis=1), 0, atol=1e-9 * jet_pt.max())
    np.testing.assert_allclose(rest[..., 0].sum(axis=1), jet_m, rtol=1e-9)
    # a boost keeps every constituent's mass (sqrt of a rounded m^2 ~ 0 for photons); padding stays 0
    np.testing.assert_allclose(kin.ms_from_p4s(np, rest), kin.ms_from_p4s(np, p4s), atol=1e-4)
    assert np.all(rest[tiny_jets["pt"] == 0] == 0)


def test_boost_matches_by_hand_lorentz_matrix(tiny_jets):
    p4s, jets = _jets_p4s(tiny_jets)
    rest = kin.boost_to_rest_frame(p4s[:3], jets[:3])
    for jet in range(3):
        beta = jets[jet, 1:] / jets[jet, 0]
        b2 = beta @ beta
        gamma = 1 / math.sqrt(1 - b2)
        lam = np.eye(4)  # boost by -beta: the matrix that takes the jet to rest
        lam[0, 0] = gamma
        lam[0, 1:] = lam[1:, 0] = -gamma * beta
        lam[1:, 1:] += (gamma - 1) * np.outer(beta, beta) / b2
        np.testing.assert_allclose(rest[jet], p4s[jet] @ lam.T, atol=1e-9 * jets[jet, 0])


def test_boost_without_rest_frame_gives_zeros():
    p4s = np.zeros((3, 4, 4))
    p4s[1, 0] = [100.0, 0.0, 0.0, 100.0]  # a single massless constituent
    p4s[2, :2] = [[10.0, 0, 0, 6.0], [10.0, 0, 0, -6.0]]  # a healthy jet
    rest = kin.boost_to_rest_frame(p4s, p4s.sum(axis=1))
    assert not np.isnan(rest).any()
    assert np.all(rest[:2] == 0)
    np.testing.assert_allclose(rest[2, :2], [[10.0, 0, 0, 6.0], [10.0, 0, 0, -6.0]])


def test_boost_shape_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\(\.\.\., M, 4\)"):
        kin.boost_to_rest_frame(np.zeros((3, 5, 4)), np.zeros((2, 4)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lola_inputs_rest_frame_invariants(dtype):
    j = make_jets(n_range=(5, 40), dtype=dtype)  # every jet fits in the 40 slots
    lola = kin.lola_inputs(j["pt"], j["eta"], j["phi"], j["e"])
    assert lola.shape == (64, 40, 4) and lola.dtype == np.float32
    p4s, jets = _jets_p4s({k: v.astype(np.float64) for k, v in j.items()})
    jet_pt, jet_m = np.hypot(jets[:, 1], jets[:, 2]), kin.ms_from_p4s(np, jets)
    # zero 3-momentum, to float32 accuracy relative to the jet pT
    np.testing.assert_allclose(lola[..., 1:].sum(axis=1), 0, atol=2e-6 * jet_pt.max())
    # sum of rest-frame energies = jet mass; float32 momenta resolve m only to ~eps * E^2 / m
    jet_e = jets[:, 0]
    tol = 1e-5 * jet_m + 4 * np.finfo(dtype).eps * jet_e**2 / jet_m
    assert np.all(np.abs(lola[..., 0].sum(axis=1, dtype=np.float64) - jet_m) <= tol)
    # zero padding past each jet's constituents
    slots = np.arange(40)[None, :] >= j["n_constituents"][:, None]
    assert np.all(lola[slots] == 0)


def test_lola_inputs_leading_constituents_in_full_jet_frame(tiny_jets):
    j = tiny_jets  # 20-60 constituents: the jet uses all of them, LoLa keeps 40
    lola = kin.lola_inputs(j["pt"], j["eta"], j["phi"], j["e"], n_const=40)
    p4s, jets = _jets_p4s(j)
    ref = kin.boost_to_rest_frame(p4s[:, :40], jets)
    np.testing.assert_allclose(lola, ref, rtol=1e-5, atol=1e-4)
    # more than 40 constituents: the leading 40 alone no longer balance
    many = j["n_constituents"] > 45
    assert np.abs(lola[many, :, 1:].sum(axis=1)).max() > 1e-2


def test_lola_inputs_sorts_unordered_constituents(tiny_jets):
    j = tiny_jets
    perm = np.random.default_rng(5).permutation(j["pt"].shape[1])
    shuffled = [j[k][:, perm] for k in ("pt", "eta", "phi", "e")]
    np.testing.assert_allclose(
        kin.lola_inputs(*shuffled), kin.lola_inputs(j["pt"], j["eta"], j["phi"], j["e"]), atol=1e-4
    )


def test_lola_inputs_pads_and_handles_empty_jets():
    pt = np.zeros((4, 6), dtype=np.float32)
    eta, phi, e = np.zeros_like(pt), np.zeros_like(pt), np.zeros_like(pt)
    pt[1, 0], e[1, 0] = 50.0, 50.0  # one massless constituent: no rest frame
    pt[2, :2], eta[2, :2], e[2, :2] = 50.0, [0.1, -0.1], 50.0 * np.cosh([0.1, -0.1])
    lola = kin.lola_inputs(pt, eta, phi, e, n_const=10)
    assert lola.shape == (4, 10, 4) and not np.isnan(lola).any()
    assert np.all(lola[[0, 1, 3]] == 0) and np.all(lola[2, 2:] == 0)
    np.testing.assert_allclose(lola[2, :2, 1:].sum(axis=0), 0, atol=1e-4)
    assert kin.lola_inputs(pt[:0], eta[:0], phi[:0], e[:0]).shape == (0, 40, 4)


def test_lola_inputs_batches_agree(tiny_jets):
    j = tiny_jets
    args = (j["pt"], j["eta"], j["phi"], j["e"])
    np.testing.assert_array_equal(kin.lola_inputs(*args, batch_size=7), kin.lola_inputs(*args))


def test_lola_inputs_rejects_bad_input(tiny_jets):
    j = tiny_jets
    with pytest.raises(ConfigError, match="n_const"):
        kin.lola_inputs(j["pt"], j["eta"], j["phi"], j["e"], n_const=0)
    with pytest.raises(ValueError, match="one shape"):
        kin.lola_inputs(j["pt"], j["eta"][:, :3], j["phi"], j["e"])
