"""Scan cell run names: the same cell settings are the same run; an edited base run, sample or
variation gives new runs (no Pythia, no Dask: the plan only)."""

from __future__ import annotations

from jetscan.core.study import Study
from jetscan.jobs.scan import plan_scan

SAMPLES = {"qcd": {"process": "qcd_dijet", "n_jets": 200}, "top": {"process": "top_hadronic", "n_jets": 100}}
RUNS = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 1, "lr": 1e-3}}
SCANS = {"c": {"runs": ["dense"], "signal": "top", "fractions": [0, 0.1], "repeats": 2,
               "variations": {"res_up": {"detector": {"energy_resolution_scale": 2.0}}}}}


def _study(make_study, tmp_path) -> Study:
    return make_study(tmp_path / "s.zarr", samples=SAMPLES, train={"runs": RUNS}, scan=SCANS)


def _edited(study: Study, edit) -> Study:
    data = study.model_dump(mode="json")
    edit(data)
    return Study.from_dict(data)


def _trainings(study: Study) -> list[str]:
    return [t["run"] for t in plan_scan(study, "c")["trainings"]]


def test_unchanged_settings_keep_their_cell_names(make_study, tmp_path):
    names = _trainings(_study(make_study, tmp_path))
    assert len(names) == len(set(names)) == 2 * 2 * 2
    assert _trainings(_study(make_study, tmp_path)) == names


def test_an_edited_base_run_sample_or_variation_gives_new_cell_names(make_study, tmp_path):
    """Under the old names, train() would meet checkpoints made with the old settings and refuse."""
    study = _study(make_study, tmp_path)
    names = _trainings(study)

    def lr(d):
        d["train"]["runs"]["dense"]["lr"] = 3e-3

    def signal_size(d):
        d["samples"]["top"]["n_jets"] = 120

    def variation(d):
        d["scan"]["c"]["variations"]["res_up"]["detector"]["energy_resolution_scale"] = 3.0

    assert not set(_trainings(_edited(study, lr))) & set(names)
    signal_edit = _trainings(_edited(study, signal_size))  # only the contaminated trainings read the signal
    plan = plan_scan(study, "c")
    contaminated = {t["run"] for t, f in zip(plan["trainings"], _fractions(plan)) if f > 0}
    assert set(signal_edit) & set(names) == set(names) - contaminated and contaminated
    varied = {t["run"] for t in plan["trainings"] if t["variant"] == "res_up"}
    assert set(_trainings(_edited(study, variation))) & set(names) == set(names) - varied and varied


def _fractions(plan: dict) -> list[float]:
    by_train = {c["train"]: c["axes"]["fraction"] for c in plan["cells"]}
    return [by_train[t["run"]] for t in plan["trainings"]]
