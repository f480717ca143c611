"""Trial run names: the same settings are the same run; an edited base run gives new runs
(no Pythia, no training: names only)."""

from __future__ import annotations

from jetscan.core.study import Study
from jetscan.jobs.search import trial_run_name, trial_study

RUNS = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 2, "lr": 1e-3}}
SEARCHES = {"b": {"run": "dense", "space": {"hyper.bottleneck": {"choices": [4, 8]}}, "sampler": "grid"}}


def _study(make_study, tmp_path, **edit) -> Study:
    runs = {"dense": {**RUNS["dense"], **edit}}
    return make_study(tmp_path / "s.zarr", train={"runs": runs}, search=SEARCHES)


def test_unchanged_settings_keep_their_trial_run_name(make_study, tmp_path):
    a, b = _study(make_study, tmp_path), _study(make_study, tmp_path)
    params = {"hyper.bottleneck": 4}
    assert trial_run_name(a, "b", params) == trial_run_name(b, "b", params)
    assert trial_run_name(a, "b", params) != trial_run_name(a, "b", {"hyper.bottleneck": 8})
    assert trial_study(a, "b", params)[1] == trial_run_name(a, "b", params)


def test_an_edited_base_run_gives_new_trial_run_names(make_study, tmp_path):
    """Under the old names, train() would meet checkpoints made with the old settings and refuse."""
    before, after = _study(make_study, tmp_path), _study(make_study, tmp_path, lr=3e-3)
    for b in (4, 8):
        assert trial_run_name(before, "b", {"hyper.bottleneck": b}) != trial_run_name(after, "b", {"hyper.bottleneck": b})
    # so does an edited sample the base run trains on
    data = before.model_dump(mode="json")
    data["samples"]["qcd"]["n_jets"] += 10
    assert trial_run_name(Study.from_dict(data), "b", {"hyper.bottleneck": 4}) != trial_run_name(before, "b", {"hyper.bottleneck": 4})
