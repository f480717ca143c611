"""A search the study cannot measure is one ConfigError as the study loads (no store, no journal, no trial)."""

from __future__ import annotations

import pytest

from jetscan.core.errors import ConfigError

SAMPLES = {"qcd": {"process": "qcd_dijet", "n_jets": 100}, "top": {"process": "top_hadronic", "n_jets": 100}}
RUNS = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 1}}
SEARCHES = {"auc": {"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "objectives": ["auc:top"], "trials": 2}}


def test_a_signal_objective_with_no_test_split_is_refused_before_any_trial(make_study, tmp_path):
    # data.splits gives no test jets (the samples have no splits of their own): the study file is
    # refused as it loads, before any store, journal or trial exists
    with pytest.raises(ConfigError, match="search.auc.objectives.*'qcd' has no jets there: give it a test share"):
        make_study(tmp_path / "s.zarr", samples=SAMPLES, train={"runs": RUNS}, search=SEARCHES,
                   data={"batch_size": 32, "splits": {"train": 0.5, "val": 0.5, "test": 0.0}})
    assert not (tmp_path / "s.zarr").exists()  # nothing was started
