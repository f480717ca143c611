"""jetscan scan with dask-jobqueue's SLURMCluster: two Slurm jobs of the local Slurm as Dask workers."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.pythia]


def test_scan_cells_run_on_two_slurm_jobs_as_dask_workers(slurm_cluster, tmp_path, monkeypatch):
    from jetscan.jobs.generate import generate
    from jetscan.jobs.scan import scan
    from tests.conftest import make_study

    for k in ("SLURM_CONF", "PATH"):  # dask-jobqueue calls sbatch / squeue / scancel from this process
        monkeypatch.setenv(k, slurm_cluster.env[k])
    study = make_study(
        tmp_path / "scan.zarr", shard_jets=100, seed=5,
        samples={"qcd": {"process": "qcd_dijet", "n_jets": 100}, "top": {"process": "top_hadronic", "n_jets": 100}},
        preprocess={"representations": ["heimel40"]},
        train={"runs": {"pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 4}}}, "threads": 1},
        scan={"s": {"runs": ["pca"], "params": {"hyper.bottleneck": [2, 4, 6, 8]}}},
    )
    generate(study, use_ray=False)
    slurm = {"queue": "debug", "walltime": "00:10:00", "host": "127.0.0.1", "log_directory": str(tmp_path / "logs"),
             "job_directives_skip": ["--mem"]}  # the test node declares no memory
    seen: list[str] = []
    out = scan(study, "s", workers=2, cluster="slurm", slurm=slurm, echo=seen.append)
    assert out["failed"] == {}, out["failed"]
    assert sorted(out["table"]["param_hyper_bottleneck"]) == [2, 4, 6, 8]
    # the workers were Slurm jobs: their logs are in log_directory, and they are gone afterwards
    logs = list((tmp_path / "logs").glob("*.err")) + list((tmp_path / "logs").glob("*.out"))
    assert len({p.stem for p in logs}) >= 2, logs
    assert any("Start worker" in p.read_text(errors="replace") or "Registered to" in p.read_text(errors="replace") for p in logs)
