"""Data-parallel training: virtual ranks in the loader, Horovod / torch DDP comms, the local launcher.

- the loader's lockstep mode: with ``data.virtual_ranks`` 2, the union over 2 ranks of each
  step's batches is the 1-rank global batch (rank 0's part, then rank 1's), ranks are
  disjoint and take the same number of steps, every epoch;
- 2 workers (``horovodrun``, and ``torchrun`` with gloo) reach the weights of 1 worker with
  the same global batch and seed; rank 0 writes the checkpoint;
- clear errors for a bad ``np``, a missing Horovod, a failing worker.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from jetscan.cluster.distributed import SingleProcess, make_comm, pick_backend
from jetscan.cluster.launch import launch_command, launch_local
from jetscan.core.errors import ConfigError, RunnerError
from jetscan.core.study import Study
from jetscan.storage.loader import JetStream

V = 2
BATCH = 16
RUNS = {
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 3, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3},
    "tagger": {
        "model": "deeptop_minimal", "samples": ["qcd", "top"], "representation": "heimel40_max",
        "epochs": 2, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3,
    },
}


def with_runs(study: Study, *, store: str | None = None, runs: dict | None = None, **data) -> Study:
    d = study.model_dump(mode="json")
    d["train"] = {"runs": runs or RUNS, "threads": 1, "device": "cpu"}
    d["data"].update(data)
    if store:
        d["store"] = store
    return Study.from_dict(d)


@pytest.fixture(scope="module")
def study(pythia_store):
    from jetscan.jobs.preprocess import preprocess

    preprocess(pythia_store, use_ray=False, representations=["heimel40", "heimel40_max"])
    return with_runs(pythia_store, virtual_ranks=V, batch_size=BATCH)


def keys(batch):
    return np.stack([batch["sample"], batch["index"]], 1)


# ------------------------------------------------------------------------------- loader
@pytest.mark.slow
@pytest.mark.pythia
def test_two_ranks_read_disjoint_halves_of_the_one_rank_global_batches(study):
    one = JetStream(study, ["qcd", "top"], "heimel40", lockstep=True)
    ranks = [JetStream(study, ["qcd", "top"], "heimel40", lockstep=True, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        glob = list(one.iter_numpy(epoch=epoch))
        parts = [list(s.iter_numpy(epoch=epoch)) for s in ranks]
        assert len(glob) == len(parts[0]) == len(parts[1]) == one.steps_per_epoch(epoch) == ranks[1].steps_per_epoch(epoch) > 0
        for k, g in enumerate(glob):
            assert len(g["label"]) == BATCH and len(parts[0][k]["label"]) == len(parts[1][k]["label"]) == BATCH // 2
            for name in g:
                np.testing.assert_array_equal(g[name], np.concatenate([parts[0][k][name], parts[1][k][name]]))
        seen = [set(map(tuple, np.concatenate([keys(b) for b in p]))) for p in parts]
        assert not seen[0] & seen[1]
        allk = np.concatenate([keys(b) for b in glob])
        assert len(allk) == len(np.unique(allk, axis=0)) == ranks[0].jets_this_rank(epoch) * 2
    # epochs differ (reshuffled), and the same epoch is reproducible
    e0, e1 = [np.concatenate([keys(b) for b in one.iter_numpy(epoch=e)]) for e in (0, 1)]
    assert not np.array_equal(e0, e1)


@pytest.mark.slow
@pytest.mark.pythia
def test_lockstep_checks_and_default_stream_unchanged(study):
    with pytest.raises(ConfigError, match="data.virtual_ranks 2 is not a multiple of the world size 3"):
        JetStream(study, ["qcd"], "heimel40", lockstep=True, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="batch_size 15 is not divisible by data.virtual_ranks 2"):
        JetStream(study, ["qcd"], "heimel40", lockstep=True, batch_size=15)
    # V=1 with 2 ranks: V defaults to the world size
    plain = with_runs(study, virtual_ranks=1)
    a = JetStream(plain, ["qcd"], "heimel40", lockstep=True, rank=1, world_size=2)
    b = JetStream(study, ["qcd"], "heimel40", lockstep=True, rank=1, world_size=2)
    for x, y in zip(a.iter_numpy(epoch=0), b.iter_numpy(epoch=0), strict=True):
        np.testing.assert_array_equal(keys(x), keys(y))
    # without lockstep (evaluation, direct use) virtual_ranks changes nothing
    c = JetStream(plain, ["qcd"], "heimel40")
    d = JetStream(study, ["qcd"], "heimel40")
    np.testing.assert_array_equal(
        np.concatenate([keys(x) for x in c.iter_numpy()]), np.concatenate([keys(x) for x in d.iter_numpy()])
    )


# ------------------------------------------------------------------- 1 vs 2 workers
def _two_workers_equal_one(study, tmp_path, run: str, backend: str):
    from jetscan.jobs.train import load_trained, train

    one = with_runs(study, store=str(tmp_path / "one.zarr"))
    two = with_runs(study, store=str(tmp_path / "two.zarr"))
    for s in (one, two):
        shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    summary = train(one, run, restart=True, comm=SingleProcess())
    yaml_path = tmp_path / "two.yaml"
    yaml_path.write_text(two.to_yaml())
    assert launch_local(str(yaml_path), [run], np=2, backend=backend, timeout=240) == 0
    m1, _, c1 = load_trained(one, run)
    m2, _, c2 = load_trained(two, run)
    assert c2["summary"]["world_size"] == 2 and c1["summary"]["world_size"] == 1
    assert c2["summary"]["epochs_run"] == summary["epochs_run"]
    torch.testing.assert_close(m2.state_dict(), m1.state_dict(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(c2["history"]["train_loss"], c1["history"]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(c2["history"]["val_loss"], c1["history"]["val_loss"], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.pythia
@pytest.mark.horovod
@pytest.mark.parametrize("run", ["dense", "tagger"])
def test_two_horovod_workers_reach_the_one_worker_weights(study, tmp_path, run):
    pytest.importorskip("horovod.torch")
    _two_workers_equal_one(study, tmp_path, run, "horovod")


@pytest.mark.slow
@pytest.mark.pythia
def test_two_ddp_workers_reach_the_one_worker_weights(study, tmp_path):
    _two_workers_equal_one(study, tmp_path, "dense", "ddp")


# ---------------------------------------------------------------------------- errors
def test_bad_np_and_backend():
    for bad in (0, -1):
        with pytest.raises(RunnerError, match=f"must be an integer >= 1 \\(got {bad}\\)"):
            launch_local("study.yaml", ["dense"], np=bad, backend="ddp")
    with pytest.raises(RunnerError, match="backend: must be one of horovod, ddp"):
        launch_command("study.yaml", ["dense"], 2, "mpi")
    with pytest.raises(RunnerError, match="backend: must be one of"):
        make_comm("mpi")


def test_missing_horovod_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod", None)
    monkeypatch.setitem(sys.modules, "horovod.torch", None)
    hint = "jetscan.cluster.horovod needs horovod: build it with `bash cluster/build_horovod.sh .venv/bin/python`"
    with pytest.raises(RunnerError, match="build it with"):
        make_comm("horovod")
    with pytest.raises(RunnerError) as info:
        launch_local("study.yaml", ["dense"], np=2, backend="horovod")
    assert hint in str(info.value)


def test_auto_backend_from_the_environment():
    assert pick_backend("auto", {}) == "single"
    assert pick_backend("auto", {"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"}) == "horovod"
    assert pick_backend("auto", {"RANK": "1", "WORLD_SIZE": "2"}) == "ddp"
    assert pick_backend("ddp", {}) == "ddp"
    with pytest.raises(RunnerError, match="neither horovodrun's HOROVOD_RANK nor torchrun's"):
        pick_backend("auto", {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert isinstance(make_comm(), SingleProcess)


@pytest.mark.slow
def test_a_failing_worker_ends_the_job_with_its_code(tmp_path):
    with pytest.raises(RunnerError, match="worker exited with code [1-9].*re-run the same command"):
        launch_local(str(tmp_path / "missing.yaml"), ["dense"], np=2, backend="ddp", timeout=120)
