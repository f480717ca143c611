"""Final-state particles and resonance truth from real Pythia8 batches."""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core.events import final_state_particles, resonance_truth, select_events
from jetscan.core.processes import PROCESSES, pythia_seed, pythia_settings

pythia8mc = pytest.importorskip("pythia8mc")


def batch(process, n=40, pthat=700.0):
    import tempfile

    extra = ()
    if PROCESSES[process].slha:
        f = tempfile.NamedTemporaryFile("w", suffix=".slha", delete=False)
        f.write(PROCESSES[process].slha)
        f.close()
        extra = (f"SLHA:file = {f.name}",)
    pythia = pythia8mc.Pythia("", False)
    for line in pythia_settings(
        process, sqrt_s_gev=13000.0, pthat_min_gev=pthat, pthat_max_gev=None, seed=11, extra=extra
    ):
        assert pythia.readString(line), line
    assert pythia.init()
    return pythia.nextBatch(n)


@pytest.fixture(scope="module")
def ttbar():
    return batch("top_hadronic")


def test_final_state_is_visible_and_conserves_momentum(ttbar):
    parts = final_state_particles(ttbar.prt)
    assert parts["n_events"] == 40
    assert not np.isin(np.abs(parts["pid"]), [12, 14, 16]).any()
    # hadronic ttbar: transverse momentum balances up to neutrinos from hadron decays
    sum_px = np.bincount(parts["event"], weights=parts["px"])
    sum_py = np.bincount(parts["event"], weights=parts["py"])
    assert np.median(np.hypot(sum_px, sum_py)) < 20.0


def test_every_top_has_three_decay_partons(ttbar):
    truth = resonance_truth(ttbar.prt, PROCESSES["top_hadronic"].match_ids)
    assert np.bincount(truth["event"], minlength=40).tolist() == [2] * 40
    assert np.diff(truth["prod_offsets"]).tolist() == [3] * 80  # b + two quarks from the W
    assert (truth["pid"] == 6).all()
    assert np.median(truth["pt"]) > 500.0
    kept = select_events(truth, np.arange(40) % 2 == 0)
    assert np.bincount(kept["event"]).tolist() == [2] * 20


def test_wprime_matches_x_and_y_separately():
    b = batch("wprime_xy", n=10, pthat=0.0)
    truth = resonance_truth(b.prt, PROCESSES["wprime_xy"].match_ids)
    assert sorted(set(truth["pid"].tolist())) == [35, 37]
    assert np.diff(truth["prod_offsets"]).tolist() == [2] * len(truth["pid"])


def test_seeds_depend_only_on_master_sample_and_shard():
    assert pythia_seed(1, "qcd", 0) == pythia_seed(1, "qcd", 0)
    seeds = {pythia_seed(1, s, i) for s in ("qcd", "top") for i in range(50)}
    assert len(seeds) == 100
    assert all(1 <= s <= 900_000_000 for s in seeds)  # Pythia's Random:seed range (0 would seed from the clock)


@pytest.mark.parametrize(
    "process, pthat, ids, n_products",
    [
        ("gluino_rpv", 700.0, {1000021}, {3}),
        ("scalar_4c", 400.0, {35}, {4}),  # phi -> a a -> c cbar c cbar
        ("dark_shower", 400.0, {4900001}, {2}),  # Dv -> d qv
        ("dark_shower_100", 400.0, {4900001}, {2}),
    ],
)
def test_signal_presets_make_their_resonances(process, pthat, ids, n_products):
    b = batch(process, n=8, pthat=pthat)
    truth = resonance_truth(b.prt, PROCESSES[process].match_ids)
    assert set(truth["pid"].tolist()) == ids
    assert set(np.diff(truth["prod_offsets"]).tolist()) == n_products
    assert len(np.unique(truth["event"])) == 8  # every event has one
