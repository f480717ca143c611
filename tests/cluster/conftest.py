"""Fixtures shared by the data-parallel tests (local launchers, Ray, Slurm).

- ``with_runs(study, store=..., runs=..., **data)``: the study with the test runs and data settings;
- ``study``: the session's real Pythia store, preprocessed, with ``data.virtual_ranks`` 2 and a
  global batch of 16, so 1 worker and 2 workers take the same steps on the same jets;
- ``two_workers_equal_one(study, tmp_path, run, launch)``: trains ``run`` on 1 process here,
  then on 2 workers through ``launch(yaml_path, [run])``, and asserts equal weights and
  histories (and that the 2-worker checkpoint says world size 2).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

V = 2
BATCH = 16
RUNS = {
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 3, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3},
    "tagger": {
        "model": "deeptop_minimal", "samples": ["qcd", "top"], "representation": "heimel40_max",
        "epochs": 2, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3,
    },
}


def _with_runs(study, *, store: str | None = None, runs: dict | None = None, **data):
    from jetscan.core.study import Study

    d = study.model_dump(mode="json")
    d["train"] = {"runs": runs or RUNS, "threads": 1, "device": "cpu"}
    d["data"].update(data)
    if store:
        d["store"] = store
    return Study.from_dict(d)


@pytest.fixture(name="with_runs", scope="session")
def with_runs_fixture():
    return _with_runs


@pytest.fixture(scope="session")
def study(pythia_store):
    from jetscan.jobs.preprocess import preprocess

    preprocess(pythia_store, use_ray=False, representations=["heimel40", "heimel40_max"])
    return _with_runs(pythia_store, virtual_ranks=V, batch_size=BATCH)


def _copy(study, store, runs=None):
    s = _with_runs(study, store=str(store), runs=runs)
    shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    return s


@pytest.fixture(name="two_workers_equal_one")
def two_workers_equal_one_fixture():
    def check(study, tmp_path, run: str, launch, runs: dict | None = None):
        from jetscan.cluster.distributed import SingleProcess
        from jetscan.jobs.train import load_trained, train

        one = _copy(study, tmp_path / "one.zarr", runs)
        two = _copy(study, tmp_path / "two.zarr", runs)
        summary = train(one, run, restart=True, comm=SingleProcess())
        yaml_path = tmp_path / "two.yaml"
        yaml_path.write_text(two.to_yaml())
        launch(str(yaml_path), [run])
        m1, _, c1 = load_trained(one, run)
        m2, _, c2 = load_trained(two, run)
        assert c2["summary"]["world_size"] == 2 and c1["summary"]["world_size"] == 1
        assert c2["summary"]["epochs_run"] == summary["epochs_run"]
        torch.testing.assert_close(m2.state_dict(), m1.state_dict(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(c2["history"]["train_loss"], c1["history"]["train_loss"], rtol=1e-4)
        np.testing.assert_allclose(c2["history"]["val_loss"], c1["history"]["val_loss"], rtol=1e-4)
        return one, two

    return check
