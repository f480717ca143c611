"""Contamination and systematics scans on a real Dask LocalCluster, on real generated jets.

One tiny store (200 QCD and 100 top jets, Pythia, no Ray) is made once for the module; cells
are PCA fits and 1-epoch dense autoencoders on ~100 training jets (seconds each). The
SLURMCluster path is in tests/cluster/test_scan_slurm.py (it needs the local Slurm fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from jetscan.jobs.scan import SCAN_DIR, plan_scan, scan
from jetscan.storage import blobs
from jetscan.storage.results import read_results, read_run

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

RUNS = {
    "pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 6}},
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 1, "optimizer": "adam", "hyper": {"bottleneck": 6}},
    "slow": {"model": "dense_ae", "samples": ["qcd"], "epochs": 6, "optimizer": "adam", "batch_size": 8},
}
SCANS = {
    "contam": {"runs": ["dense"], "signal": "top", "fractions": [0, 0.1], "repeats": 2},
    "crash": {"runs": ["dense"], "params": {"hyper.image_size": [40, 37]}},
    "det": {"runs": ["pca"], "variations": {"res_up": {"detector": {"energy_resolution_scale": 3.0}}}, "matrix": True},
    "kill": {"runs": ["slow"], "repeats": 3},
    "sched": {"runs": ["pca"], "params": {"hyper.bottleneck": [3, 5]}},
    "edit": {"runs": ["pca"], "repeats": 2},
    "stale": {"runs": ["pca"], "repeats": 2},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from jetscan.jobs.generate import generate
    from tests.conftest import make_study

    s = make_study(
        tmp_path_factory.mktemp("scan") / "scan.zarr", shard_jets=100, seed=11,
        samples={"qcd": {"process": "qcd_dijet", "n_jets": 200}, "top": {"process": "top_hadronic", "n_jets": 100}},
        preprocess={"representations": ["heimel40"]},
        train={"runs": RUNS, "threads": 1, "device": "cpu"},
        scan=SCANS,
    )
    generate(s, use_ray=False)
    return s


def test_contamination_scan_on_a_local_cluster_matches_pandas_over_the_cells(study, tmp_path):
    out = scan(study, "contam", workers=2, report_dir=tmp_path / "report")
    assert out["failed"] == {} and out["cells"] == 4
    table = out["table"]
    assert len(table) == 4 and set(table["fraction"]) == {0.0, 0.1} and set(table["repeat"]) == {0, 1}
    assert set(table["signal"]) == {"top"}
    # the repeats are independent trainings (their seeds differ with the cell name)
    assert table.groupby("fraction")["best_val_loss"].nunique().tolist() == [2, 2]
    # the tidy table in the store is what the scan returned, and a user can filter it
    stored = pd.read_parquet(f"{study.store}/{SCAN_DIR}/contam.parquet")
    assert len(stored[stored["fraction"] > 0]) == 2
    # bands: a direct pandas computation over the per-cell results rows
    rows = read_results(study.store).to_pandas()
    rows = rows[rows["scan"] == "contam"]
    assert sorted(rows["run"]) == sorted(table["cell"])
    direct = rows.groupby("fraction")[["auc", "e10", "e100", "inv_eb_at_0p3"]].agg(["mean", "std"])
    bands = out["bands"].set_index("fraction").sort_index()
    for m in ("auc", "e10", "e100", "inv_eb_at_0p3"):
        np.testing.assert_allclose(bands[f"{m}_mean"], direct[(m, "mean")], rtol=1e-12)
        np.testing.assert_allclose(bands[f"{m}_sd"], direct[(m, "std")], rtol=1e-12)
    # contaminated cells trained on signal jets: the stored config says so
    contaminated = rows[rows["fraction"] > 0]
    assert (contaminated["contamination_fraction"] == 0.1).all() and (contaminated["contamination_signal"] == "top").all()
    # ROC bands from the stored per-jet scores: eps_S rises with eps_B, band around the curve
    roc = out["roc"]
    assert set(roc["cell"]) == set(table["cell"])
    one = roc[roc["cell"] == table["cell"][0]].sort_values("eps_b")
    assert np.all(np.diff(one["eps_s"]) >= -1e-12) and (one["eps_s_lo"] <= one["eps_s"] + 1e-9).all()
    assert (one["eps_s_hi"] >= one["eps_s"] - 1e-9).all() and (one["eps_s_hi"] > one["eps_s_lo"]).any()
    page = Path(out["report"]).read_text()
    assert "contamination_e10.png" in page and "contamination_e100.png" in page
    # a second run reuses every cell: nothing is trained or evaluated again
    again = scan(study, "contam", workers=1)
    assert again["reused"] == 4 and again["outcomes"] == {}
    pd.testing.assert_frame_equal(again["table"], table)


def test_a_failing_cell_is_reported_and_the_rest_completes(study):
    out = scan(study, "crash", workers=2)
    bad = [k for k, o in out["outcomes"].items() if o["status"] == "error"]
    assert len(bad) == 1 and bad[0].startswith("train-crash-dense"), out["outcomes"]
    assert "image_size" in out["outcomes"][bad[0]]["error"] or "37" in out["outcomes"][bad[0]]["error"]
    skipped = [k for k, o in out["outcomes"].items() if o["status"] == "skipped"]
    assert len(skipped) == 1 and "which failed" in out["outcomes"][skipped[0]]["error"]
    assert list(out["table"]["param_hyper_image_size"]) == [40]


def test_detector_variation_cells_generate_a_variant_sample_and_fill_the_matrix(study, tmp_path):
    import zarr

    out = scan(study, "det", workers=2, report_dir=tmp_path / "report")
    assert out["failed"] == {}
    root = zarr.open_group(study.store, mode="r")
    base, var = root["qcd"], root["qcd__res_up"]
    abc = var.attrs["settings"]["detector"]["ecal_resolution_abc"]
    assert abc == pytest.approx([3 * x for x in study.detector.ecal_resolution_abc])
    assert base.attrs["settings_hash"] != var.attrs["settings_hash"]
    assert var["jets/pt"].shape == base["jets/pt"].shape
    assert not np.array_equal(var["jets/pt"][...], base["jets/pt"][...])
    table = out["table"]
    cells = set(zip(table["train_variant"], table["test_variant"]))
    assert cells == {(a, b) for a in ("nominal", "res_up") for b in ("nominal", "res_up")}
    # the fixed cut is set on the training variant's QCD: about cut_fpr there, measured on the other
    diag = table[table["train_variant"] == table["test_variant"]]
    assert np.allclose(diag["fpr_at_cut"], 0.1, atol=0.03)
    off = table[table["train_variant"] != table["test_variant"]]
    assert set(off["background"]) == {"qcd", "qcd__res_up"} and off["auc"].between(0, 1).all()
    on_var = read_run(study.store, table[(table["train_variant"] == "nominal") & (table["test_variant"] == "res_up")]["cell"].iloc[0])
    assert set(on_var["samples"]) == {"qcd__res_up", "top__res_up"}
    page = Path(out["report"]).read_text()
    assert "matrix_auc" in page and "matrix_fpr_at_cut" in page


def _edited(study, edit):
    from jetscan.core.study import Study

    data = study.model_dump(mode="json")
    edit(data)
    return Study.from_dict(data)


def test_an_edited_base_run_scans_as_new_cells_and_unchanged_settings_reuse_them(study):
    first = scan(study, "edit", workers=1)
    assert first["failed"] == {} and first["cells"] == 2
    # the user edits the base run in the study file and runs the scan again
    edited = _edited(study, lambda d: d["train"]["runs"]["pca"].update(max_fit_jets=60))
    second = scan(edited, "edit", workers=1)
    assert second["failed"] == {}, second["failed"]
    assert second["reused"] == 0 and len(second["outcomes"]) == 4  # two trainings, two cells
    assert not set(second["table"]["cell"]) & set(first["table"]["cell"])
    # unchanged settings: every cell is reused, nothing runs
    third = scan(edited, "edit", workers=1)
    assert third["reused"] == 2 and third["outcomes"] == {}
    pd.testing.assert_frame_equal(third["table"], second["table"])


def test_the_table_holds_only_cells_done_with_the_current_settings(study):
    first = scan(study, "stale", workers=1)
    assert first["failed"] == {} and sorted(first["table"]["fpr_at_cut"].round(1)) == [0.1, 0.1]
    # another cut (the same trainings, new evaluations), and one training's checkpoint is broken
    edited = _edited(study, lambda d: d["scan"]["stale"].update(cut_fpr=0.3))
    broken, kept = sorted(first["table"]["cell"])
    Path(study.store, "_runs", broken, "checkpoint.pt").write_bytes(b"not a checkpoint")
    second = scan(edited, "stale", workers=1)
    assert set(second["failed"]) == {f"train-{broken}", f"cell-{broken}"}, second["failed"]
    # the failed cell's results from the old cut are not in the table, nor in the stored one
    assert list(second["table"]["cell"]) == [kept] and second["table"]["fpr_at_cut"].round(1).tolist() == [0.3]
    stored = pd.read_parquet(f"{study.store}/{SCAN_DIR}/stale.parquet")
    assert list(stored["cell"]) == [kept] and len(second["bands"]) == 1 and set(second["roc"]["cell"]) == {kept}


def test_a_killed_scan_resumes_without_recomputing_finished_cells(study, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study.model_dump(mode="json")))
    cells = [c["cell"] for c in plan_scan(study, "kill")["cells"]]
    log = open(tmp_path / "scan.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jetscan.jobs.cli", "scan", str(path), "kill", "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    finished: list[str] = []
    try:
        while time.monotonic() < deadline and not finished:
            finished = [c for c in cells if blobs.exists(study.store, f"_results/{c}.parquet")]
            assert proc.poll() is None, (tmp_path / "scan.log").read_text()
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Dask workers, mid-grid
        proc.wait()
    assert finished, (tmp_path / "scan.log").read_text()
    rows = read_results(study.store).to_pandas().set_index("run")
    done_before = {c: rows.loc[c, "created_utc"] for c in cells if c in rows.index}
    assert 1 <= len(done_before) < 3, "the kill came too late to leave work undone"
    out = scan(study, "kill", workers=1)
    assert out["failed"] == {} and out["reused"] == len(done_before)
    assert not any(k.endswith(c) for k in out["outcomes"] for c in done_before)  # not even submitted
    rows = read_results(study.store).to_pandas().set_index("run")
    assert all(rows.loc[c, "created_utc"] == t for c, t in done_before.items())
    assert set(out["table"]["cell"]) == set(cells)


def test_a_scan_runs_on_an_existing_scheduler_by_address(study):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        out = scan(study, "sched", scheduler=cluster.scheduler_address)
        assert out["failed"] == {} and sorted(out["table"]["param_hyper_bottleneck"]) == [3, 5]
        # the cells ran as tasks of that scheduler (its per-prefix task statistics remain)
        with __import__("distributed").Client(cluster.scheduler_address) as client:
            prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert any(p.startswith("train") for p in prefixes) and any(p.startswith("cell") for p in prefixes), prefixes


def test_slurm_dry_run_prints_the_worker_job_script(study, tmp_path):
    from typer.testing import CliRunner

    from jetscan.jobs.cli import app

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study.model_dump(mode="json")))
    r = CliRunner().invoke(app, ["scan", str(path), "contam", "--cluster", "slurm", "--dry-run", "--queue", "debug",
                                 "--memory", "2GB", "--walltime", "00:30:00"])
    assert r.exit_code == 0, r.output
    assert "#SBATCH -p debug" in r.output and "#SBATCH -t 00:30:00" in r.output and "distributed.cli.dask_worker" in r.output
    r = CliRunner().invoke(app, ["scan", str(path), "nope"])
    assert r.exit_code != 0 and "no scan named 'nope'" in str(r.output) + str(r.exception)


def test_dask_jobqueue_imports_with_this_distributed():
    import dask
    import distributed
    from dask_jobqueue import SLURMCluster  # noqa: F401

    assert dask.__version__.startswith("2026.8") and distributed.__version__.startswith("2026.8")
