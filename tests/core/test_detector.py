"""The particle-flow-like detector model, on hand-made particles with known fates."""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core.detector import KIND_MUON, KIND_NEUTRAL, KIND_TRACK, charges_from_table, reconstruct
from jetscan.core.study import DetectorConfig


def particles(rows):
    """rows: (event, pid, charge, pt, eta, phi, mass)."""
    a = np.array(rows, dtype=float)
    event, pid, charge, pt, eta, phi, m = a.T
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    parts = {"event": event.astype(int), "pid": pid.astype(int), "px": px, "py": py, "pz": pz, "e": e}
    parts["n_events"] = int(event.max()) + 1
    return parts, charge


PERFECT = DetectorConfig(
    track_efficiency=1.0,
    muon_efficiency=1.0,
    track_pt_resolution_constant=0.0,
    track_pt_resolution_per_gev=0.0,
    ecal_resolution_abc=(0.0, 0.0, 0.0),
    hcal_resolution_abc=(0.0, 0.0, 0.0),
)


def test_each_particle_meets_its_subsystem():
    parts, charge = particles(
        [
            (0, 211, 1, 50.0, 0.3, 0.1, 0.1396),  # pion in tracker -> track
            (0, 13, -1, 40.0, -1.0, 1.0, 0.1057),  # muon -> muon
            (0, 22, 0, 30.0, 0.5, -2.0, 0.0),  # photon -> ECAL tower
            (0, 130, 0, 20.0, -0.5, 2.5, 0.4976),  # K_L -> HCAL tower
            (0, 211, 1, 25.0, 2.8, 0.0, 0.1396),  # pion beyond tracker -> HCAL tower
            (1, 211, -1, 60.0, 0.0, 0.0, 0.1396),  # second event
        ]
    )
    out = reconstruct(parts, charge, PERFECT, np.random.default_rng(0))
    assert len(out) == 2
    ev0 = out[0]
    kinds = sorted(ev0.kind.to_list())
    assert kinds == [KIND_TRACK, KIND_NEUTRAL, KIND_NEUTRAL, KIND_NEUTRAL, KIND_MUON]
    track = ev0[ev0.kind == KIND_TRACK]
    np.testing.assert_allclose(track.pt.to_numpy(), [50.0], rtol=1e-9)
    np.testing.assert_allclose(track.eta.to_numpy(), [0.3], rtol=1e-9)
    # towers sit at cell centres: within half a cell of the particle
    towers = ev0[ev0.kind == KIND_NEUTRAL]
    assert np.all(np.abs(towers.eta.to_numpy()[:, None] - np.array([0.5, -0.5, 2.8])).min(axis=1) < 0.087 / 2 + 1e-9)
    # a perfect calorimeter keeps the energy
    assert np.isclose(towers.e.to_numpy().sum(), parts["e"][[2, 3, 4]].sum(), rtol=1e-9)
    assert len(out[1]) == 1


def test_particles_in_one_cell_merge_into_one_tower():
    parts, charge = particles([(0, 22, 0, 10.0, 0.001, 0.001, 0.0), (0, 22, 0, 15.0, 0.002, 0.002, 0.0)])
    out = reconstruct(parts, charge, PERFECT, np.random.default_rng(0))
    assert len(out[0]) == 1
    assert np.isclose(out[0].e[0], parts["e"].sum())


def test_threshold_drops_soft_deposits_and_inefficiency_loses_tracks():
    parts, charge = particles([(0, 22, 0, 0.2, 0.0, 0.0, 0.0)])
    out = reconstruct(parts, charge, PERFECT, np.random.default_rng(0))
    assert len(out[0]) == 0  # below the 0.5 GeV ECAL threshold
    n = 20000
    rows = [(0, 211, 1, 10.0, 0.0, 2 * np.pi * i / n - np.pi, 0.14) for i in range(n)]
    parts, charge = particles(rows)
    cfg = DetectorConfig(track_efficiency=0.9)
    out = reconstruct(parts, charge, cfg, np.random.default_rng(1))
    frac = float(np.mean(out[0].kind.to_numpy() == KIND_TRACK) * len(out[0]) / n)
    assert frac == pytest.approx(0.9, abs=0.01)


def test_smearing_has_the_configured_width_and_is_reproducible():
    n = 20000
    rows = [(i, 211, 1, 100.0, 0.0, 0.0, 0.14) for i in range(n)]
    parts, charge = particles(rows)
    cfg = DetectorConfig(track_efficiency=1.0, track_pt_resolution_constant=0.02, track_pt_resolution_per_gev=0.0)
    a = reconstruct(parts, charge, cfg, np.random.default_rng(5))
    b = reconstruct(parts, charge, cfg, np.random.default_rng(5))
    pts = a.pt.to_numpy().ravel() if a.pt.ndim == 1 else np.concatenate(a.pt.to_list())
    assert np.std(pts) / 100.0 == pytest.approx(0.02, rel=0.05)
    assert a.to_list() == b.to_list()


def test_charges_from_table():
    table = {211: 1.0, -211: -1.0, 22: 0.0}
    np.testing.assert_array_equal(charges_from_table(np.array([22, 211, -211, 211]), table), [0, 1, -1, 1])
