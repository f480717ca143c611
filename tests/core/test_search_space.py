"""The search section: valid searches load; every bad one is one clear ConfigError; the knee."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jetscan.core.errors import ConfigError
from jetscan.core.knee import knee_point
from jetscan.core.search_space import apply_params, grid_values
from jetscan.core.study import Study

ROOT = Path(__file__).parents[2]

RUNS = {
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 2},
    "adv": {"model": "dense_ae", "samples": ["qcd"], "epochs": 2, "adversary": {"adv_lambda": 5e-4}},
}


def study(search):
    return Study.from_dict(
        {
            "name": "t",
            "store": "/tmp/x.zarr",
            "seed": 1,
            "samples": {"qcd": {"process": "qcd_dijet", "n_jets": 10}, "top": {"process": "top_hadronic", "n_jets": 10}},
            "train": {"runs": RUNS},
            "search": {"s": search},
        }
    )


def test_a_bottleneck_and_a_lambda_search_load():
    s = study(
        {"run": "dense", "space": {"hyper.bottleneck": {"int": [2, 10], "step": 4}, "epochs": {"choices": [1, 2]}},
         "sampler": "grid", "trials": 50}
    ).search["s"]
    assert s.sampler_name == "grid" and s.grid_size() == 6 and s.target_trials() == 6
    assert s.directions == ["minimize"] and s.objectives[0].metric == "val_loss"
    lam = study(
        {"run": "adv", "space": {"adversary.lambda": {"float": [1e-5, 1e-2], "log": True}},
         "objectives": [{"metric": "auc", "signal": "top"}, "sculpting"]}
    ).search["s"]
    assert lam.sampler_name == "nsga2" and lam.directions == ["maximize", "minimize"]
    assert [o.label for o in lam.objectives] == ["auc[top]", "jsd_50"]
    assert lam.grid_size() is None and lam.target_trials() == 10
    assert list(lam.params) == ["adversary.adv_lambda"]
    run = study({"run": "adv", "space": {"lr": {"float": [1e-4, 1e-2]}}}).run("adv").model_dump()
    out = apply_params(run, {"adversary.lambda": 0.1, "hyper.bottleneck": 8, "lr": 0.01})
    assert out["adversary"]["adv_lambda"] == 0.1 and out["adversary"]["mass_bins"] == 10
    assert out["hyper"] == {"bottleneck": 8} and out["lr"] == 0.01 and run["hyper"] == {}


def test_the_example_study_validates():
    s = Study.from_yaml(ROOT / "studies" / "search-bottleneck.yaml")
    assert {"bottleneck", "lambda"} <= set(s.search)


@pytest.mark.parametrize(
    "search, message",
    [
        ({"run": "nope", "space": {"lr": {"float": [1e-3, 1e-2]}}}, "search.s.run: no run named 'nope'; runs: dense, adv"),
        ({"run": "dense", "space": {}}, "search.s.space: empty space"),
        ({"run": "dense", "space": {"hyper.width": {"int": [1, 4]}}},
         "search.s.space.hyper.width: model 'dense_ae' of run 'dense' has no hyperparameter 'width'; its hyperparameters: bottleneck"),
        ({"run": "dense", "space": {"hyper.bottleneck": {"int": [0, 4]}}},
         "search.s.space.hyper.bottleneck: dense_ae.bottleneck must be a positive integer \\(got 0\\)"),
        ({"run": "dense", "space": {"lr": {"float": [1e-2, 1e-4]}}},
         "search.s.space.lr: empty range: lower end 0.01 must be below upper end 0.0001"),
        ({"run": "dense", "space": {"hyper.bottleneck": {"int": [6, 6]}}}, "empty range: lower end 6 must be below upper end 6"),
        ({"run": "dense", "space": {"lr": {"float": [0.0, 1e-2], "log": True}}}, "log: true needs a positive lower end"),
        ({"run": "dense", "space": {"epochs": {"int": [0, 3]}}},
         "search.s.space.epochs: value 0 is not valid for epochs: Input should be greater than or equal to 1"),
        ({"run": "dense", "space": {"samples": {"choices": ["qcd"]}}}, "search.s.space.samples: not a parameter of run 'dense'"),
        ({"run": "dense", "space": {"dropout": {"float": [0.1, 0.2]}}}, "search.s.space.dropout: not a parameter of run 'dense'"),
        ({"run": "dense", "space": {"adversary.lambda": {"float": [1e-4, 1e-2]}}},
         "search.s.space.adversary.lambda: run 'dense' has no adversary; add adversary"),
        ({"run": "adv", "space": {"adversary.alpha": {"float": [1e-4, 1e-2]}}}, "the adversary has no field 'alpha'"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "objectives": ["auc:gluino"]},
         "search.s.objectives.0.signal: no sample named 'gluino'; samples: qcd, top"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "objectives": ["auc:qcd"]},
         "search.s.objectives.0.signal: sample 'qcd' is background, not a signal"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "objectives": ["auc"]},
         "metric 'auc' is measured against a signal: add signal"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "objectives": ["accuracy"]}, "unknown metric 'accuracy'; metrics: val_loss"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "sampler": "cmaes"},
         "search.s.sampler: Input should be 'auto', 'tpe', 'nsga2', 'grid' or 'random' \\(got 'cmaes'\\)"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "pruner": "hyperband"}, "search.s.pruner: Input should be 'none' or 'median'"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "objectives": ["auc:top", "jsd_50"], "pruner": "median"},
         "pruner 'median' with 2 objectives: Optuna cannot prune multi-objective studies"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "sampler": "grid"}, "sampler grid needs a finite space: give lr a step"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "trials": 0}, "search.s.trials: Input should be greater than or equal to 1"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2], "int": [1, 2]}}}, "give exactly one of int"),
        ({"run": "dense", "space": {"lr": {"float": [1e-3, 1e-2]}}, "heartbeat_seconds": 60, "stale_seconds": 120},
         "stale_seconds 120 would take live workers for dead ones: it must exceed two heartbeats \\(2 x heartbeat_seconds = 120\\)"),
    ],
)
def test_bad_search_sections_give_one_clear_error(search, message):
    with pytest.raises(ConfigError, match=message) as info:
        study(search)
    assert "{'name'" not in str(info.value)  # the message names the key, not the whole study


def test_a_journal_trial_goes_stale_after_five_heartbeats_unless_set():
    space = {"lr": {"float": [1e-3, 1e-2]}}
    assert study({"run": "dense", "space": space}).search["s"].stale_after_seconds == 300
    assert study({"run": "dense", "space": space, "heartbeat_seconds": 10}).search["s"].stale_after_seconds == 50
    assert study({"run": "dense", "space": space, "stale_seconds": 3600}).search["s"].stale_after_seconds == 3600


def _objective_error(samples: dict, objectives: list, run: dict | None = None, **study_keys) -> str:
    data = {"name": "t", "store": "/tmp/x.zarr", "seed": 1, "samples": samples,
            "train": {"runs": {"r": run or {"model": "dense_ae", "samples": ["qcd"], "epochs": 2}}},
            "search": {"s": {"run": "r", "space": {"lr": {"float": [1e-3, 1e-2]}}, "objectives": objectives}},
            **study_keys}
    with pytest.raises(ConfigError) as info:
        Study.from_dict(data)
    return str(info.value)


QCD = {"process": "qcd_dijet", "n_jets": 10}
TOP = {"process": "top_hadronic", "n_jets": 10}
NO_TEST = {"train": 0.5, "val": 0.5, "test": 0.0}


def test_objectives_the_study_cannot_measure_are_one_clear_error_before_any_trial():
    assert "search.s.objectives: jsd_50 are measured by evaluating each trial against a signal sample, and the " \
           "study has none: add a signal sample, or use objectives: [val_loss]" in _objective_error({"qcd": QCD}, ["jsd_50"])
    msg = _objective_error({"qcd": QCD, "top": {**TOP, "splits": NO_TEST}}, ["auc:top"])
    assert "search.s.objectives.0.signal: sample 'top' has no jets in the test split, so auc[top] cannot be measured: " \
           "give it a test share (samples.top.splits or data.splits)" in msg
    msg = _objective_error({"qcd": {**QCD, "splits": NO_TEST}, "top": TOP}, ["val_loss", "jsd_95"])
    assert "run 'r''s background sample 'qcd' has no jets there" in msg
    tagger = {"model": "deeptop_minimal", "samples": ["qcd", "top"], "epochs": 1}
    msg = _objective_error({"qcd": QCD, "top": TOP, "gluino": {"process": "gluino_rpv", "n_jets": 10}}, ["auc:gluino"], tagger)
    assert "search.s.objectives.0.signal: run 'r' is a tagger, evaluated only against its own signal samples (top)" in msg


def test_the_validation_loss_needs_no_signal_nor_test_jets():
    data = {"name": "t", "store": "/tmp/x.zarr", "seed": 1, "samples": {"qcd": {**QCD, "splits": NO_TEST}},
            "train": {"runs": {"r": {"model": "dense_ae", "samples": ["qcd"], "epochs": 2}}},
            "search": {"s": {"run": "r", "space": {"lr": {"float": [1e-3, 1e-2]}}}}}
    assert Study.from_dict(data).search["s"].objectives[0].metric == "val_loss"


def test_grid_values():
    s = study({"run": "dense", "space": {"lr": {"float": [0.1, 0.3], "step": 0.1}}}).search["s"]
    np.testing.assert_allclose(grid_values(s.space["lr"]), [0.1, 0.2, 0.3])


def test_knee_of_a_loss_curve():
    b = np.array([2, 4, 6, 8, 12, 16, 24, 32])
    loss = 1.0 / b + 0.01 * b / 32  # falls steeply, then flattens
    # normalised, x + y is smallest (farthest below the chord x + y = 1) at b = 8: 0.2 + 0.2
    assert np.sort(b)[knee_point(b, loss)] == 8
    elbow = np.array([10.0, 6.0, 2.0, 1.8, 1.6, 1.4])  # steep until 6, then flat
    assert knee_point([2, 4, 6, 8, 10, 12], elbow) == 2
    shuffled = np.random.default_rng(0).permutation(len(b))
    assert np.sort(b)[knee_point(b[shuffled], loss[shuffled])] == b[knee_point(b, loss)]
    assert knee_point([1, 2, 3], [3, 2, 1]) is None  # a straight line has no knee
    assert knee_point([1, 2], [2, 1]) is None
    assert knee_point([1, 2, 3, 4], [1, 1, 1, 1]) is None
