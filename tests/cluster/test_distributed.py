"""Data-parallel training: virtual ranks in the loader, Horovod / torch DDP comms, the local launcher.

- the loader's lockstep mode: with ``data.virtual_ranks`` 2, the union over 2 ranks of each
  step's batches is the 1-rank global batch (rank 0's part, then rank 1's), ranks are
  disjoint and take the same number of steps, every epoch;
- 2 workers (``horovodrun``, and ``torchrun`` with gloo) reach the weights of 1 worker with
  the same global batch and seed; rank 0 writes the checkpoint;
- the adversarial AE (both optimizers distributed) and PCA (one fit on the whole split) with 2
  workers equal 1 worker; ``lr_scaling: linear`` makes 2 workers with batch b and lr l the one
  worker with batch 2b and lr 2l;
- a worker killed by SIGKILL ends the job with a clear error, and the same command resumes the
  run to the weights of an uninterrupted run;
- clear errors for a bad ``np``, a missing Horovod, a failing worker.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from jetscan.cluster.distributed import SingleProcess, make_comm, pick_backend
from jetscan.cluster.launch import launch_command, launch_local
from jetscan.core.errors import ConfigError, RunnerError
from jetscan.storage.loader import JetStream

BATCH = 16  # the global batch of the ``study`` fixture (tests/cluster/conftest.py)
RUNS = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 3, "batch_size": BATCH, "optimizer": "adam", "lr": 1e-3}}

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
def test_lockstep_checks_and_default_stream_unchanged(study, with_runs):
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
@pytest.mark.slow
@pytest.mark.pythia
@pytest.mark.horovod
@pytest.mark.parametrize("run", ["dense", "tagger"])
def test_two_horovod_workers_reach_the_one_worker_weights(study, tmp_path, run, two_workers_equal_one):
    pytest.importorskip("horovod.torch")
    two_workers_equal_one(study, tmp_path, run, lambda yaml, runs: launch_local(yaml, runs, np=2, backend="horovod", timeout=240))


@pytest.mark.slow
@pytest.mark.pythia
def test_two_ddp_workers_reach_the_one_worker_weights(study, tmp_path, two_workers_equal_one):
    two_workers_equal_one(study, tmp_path, "dense", lambda yaml, runs: launch_local(yaml, runs, np=2, backend="ddp", timeout=240))


def _launch(backend: str):
    return lambda yaml, runs: launch_local(yaml, runs, np=2, backend=backend, timeout=240)


@pytest.mark.slow
@pytest.mark.pythia
@pytest.mark.horovod
def test_the_adversarial_ae_with_both_optimizers_distributed(study, tmp_path, two_workers_equal_one):
    pytest.importorskip("horovod.torch")
    runs = {"adv": {**RUNS["dense"], "epochs": 2, "adversary": {"adv_lambda": 5e-4, "mass_bins": 5}}}
    two_workers_equal_one(study, tmp_path, "adv", _launch("horovod"), runs=runs)


@pytest.mark.slow
@pytest.mark.pythia
def test_pca_fits_once_on_the_whole_split_with_two_workers(study, tmp_path, two_workers_equal_one):
    runs = {"pca": {"model": "pca", "samples": ["qcd"], "representation": "heimel40", "hyper": {"bottleneck": 8}}}
    two_workers_equal_one(study, tmp_path, "pca", _launch("ddp"), runs=runs)


@pytest.mark.slow
@pytest.mark.pythia
def test_linear_lr_scaling_is_one_worker_on_the_n_times_batch_with_n_times_lr(study, tmp_path, two_workers_equal_one):
    """lr_scaling linear: 2 workers with batch 8 and lr 1e-3 take the steps of 1 worker with
    batch 16 and lr 2e-3 (Goyal et al.'s linear scaling rule, here without warm-up)."""
    one = {"dense": {**RUNS["dense"], "batch_size": 2 * (BATCH // 2), "lr": 2e-3}}
    two = {"dense": {**RUNS["dense"], "batch_size": BATCH // 2, "lr": 1e-3, "lr_scaling": "linear"}}
    _, scaled = two_workers_equal_one(study, tmp_path, "dense", _launch("ddp"), runs=one, runs_two=two)
    from jetscan.jobs.train import load_trained

    assert load_trained(scaled, "dense")[2]["summary"]["global_batch"] == BATCH


@pytest.mark.slow
@pytest.mark.pythia
@pytest.mark.parametrize("backend", ["ddp", pytest.param("horovod", marks=pytest.mark.horovod)])
def test_a_killed_worker_ends_the_job_and_the_run_resumes(study, tmp_path, with_runs, backend):
    """SIGKILL one of 2 workers (torchrun, horovodrun) after the first checkpoint: the job ends
    with a clear error, and the same command resumes it to the weights of an uninterrupted run."""
    if backend == "horovod":
        pytest.importorskip("horovod.torch")
    import shutil
    import signal
    import threading
    import time
    from pathlib import Path

    from jetscan.jobs.train import checkpoint_path, load_trained, train
    from jetscan.storage import blobs

    runs = {"dense": {**RUNS["dense"], "epochs": 8}}
    ref = with_runs(study, store=str(tmp_path / "ref.zarr"), runs=runs)
    killed = with_runs(study, store=str(tmp_path / "killed.zarr"), runs=runs)
    for s in (ref, killed):
        shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    train(ref, "dense", comm=SingleProcess())
    yaml_path = tmp_path / "killed.yaml"
    yaml_path.write_text(killed.to_yaml())

    errors: list[Exception] = []

    def job():
        try:
            launch_local(str(yaml_path), ["dense"], np=2, backend=backend, timeout=240)
        except RunnerError as exc:
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 180
    while time.time() < deadline and thread.is_alive() and not blobs.exists(killed.store, checkpoint_path("dense")):
        time.sleep(0.02)
    rank_key = "HOROVOD_RANK" if backend == "horovod" else "RANK"
    victim = _worker(str(yaml_path), rank_key)
    assert victim is not None, "no rank-1 worker found"
    victim.send_signal(signal.SIGKILL)
    thread.join(240)
    assert len(errors) == 1 and "re-run the same command" in str(errors[0])
    ckpt = torch.load(Path(killed.store) / checkpoint_path("dense"), weights_only=False)
    assert not ckpt.get("finished"), "the run finished before a worker could be killed"
    assert ckpt["world_size"] == 2

    assert launch_local(str(yaml_path), ["dense"], np=2, backend=backend, timeout=240) == 0
    want, got = load_trained(ref, "dense")[2], load_trained(killed, "dense")[2]
    torch.testing.assert_close(got["model"], want["model"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["history"]["val_loss"], want["history"]["val_loss"], rtol=1e-4)


def _worker(needle: str, rank_key: str):
    """The rank-1 training worker whose command line names ``needle`` (not its launcher)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            cmd = proc.cmdline()
            if needle in cmd and "jetscan.jobs.cli" in cmd and proc.environ().get(rank_key) == "1":
                return proc
        except psutil.Error:
            continue
    return None


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
