"""The evaluate stage on trained runs: metrics rows, the results store and the report."""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core.study import Study
from jetscan.jobs.evaluate import evaluate
from jetscan.jobs.train import train
from jetscan.storage.results import read_results, read_run

pytestmark = [pytest.mark.slow, pytest.mark.pythia]


@pytest.fixture(scope="module")
def trained(pythia_store, ray_local):
    from jetscan.jobs.preprocess import preprocess

    preprocess(pythia_store, workers=2)
    data = pythia_store.model_dump(mode="json")
    data["train"] = {
        "runs": {
            "pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 6}},
            "tagger": {
                "model": "deeptop_minimal", "samples": ["qcd", "top"], "representation": "heimel40_max",
                "epochs": 30, "batch_size": 16, "optimizer": "adam",
            },
        },
        "threads": 2,
    }
    study = Study.from_dict(data)
    for run in study.train.runs:
        train(study, run, restart=True)
    return study


def test_rows_per_run_and_signal_with_config_columns(trained, tmp_path):
    rows = evaluate(trained, report_dir=tmp_path / "report")
    pairs = sorted((r["run"], r["signal"]) for r in rows)
    assert pairs == [("pca", "gluino"), ("pca", "top"), ("tagger", "top")]
    table = read_results(trained.store)
    assert table.num_rows == 3
    for column in ("auc", "auc_std", "inv_eb_at_0p3", "e10", "e100", "jsd_95", "model", "bottleneck", "representation"):
        assert column in table.column_names
    tagger = [r for r in rows if r["run"] == "tagger"][0]
    assert tagger["auc"] > 0.75 and 0 < tagger["accuracy"] <= 1
    assert tagger["n_background"] == 75 and tagger["n_signal"] == 50  # the test split
    # re-evaluating replaces the rows instead of adding to them
    evaluate(trained, ["pca"])
    assert read_results(trained.store).num_rows == 3


def test_results_store_and_report(trained, tmp_path):
    evaluate(trained, report_dir=tmp_path / "report")
    run = read_run(trained.store, "pca")
    eps_b, eps_s = run["roc"]["top"]["eps_b"], run["roc"]["top"]["eps_s"]
    assert (eps_b[0], eps_s[0], eps_b[-1], eps_s[-1]) == (0, 0, 1, 1)
    assert len(run["samples"]["qcd"]["score"]) == 75
    assert np.isfinite(run["samples"]["top"]["score"]).all()
    html = (tmp_path / "report" / "index.html").read_text()
    assert "pca" in html and "tagger" in html and "<img" in html
    pngs = list((tmp_path / "report").rglob("*.png"))
    assert len(pngs) >= 6 and all(p.stat().st_size > 1000 for p in pngs)
