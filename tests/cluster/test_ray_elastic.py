"""Elastic Horovod on Ray: ``jetscan train ... --np 2 --min-np 1 --address HOST:PORT``.

- a local Ray cluster of two "hosts" on this machine: a head (this machine's address) and a
  second node at ``127.0.0.2``, one CPU each, so Horovod's elastic driver places one worker on
  each host and, when one dies, blacklists only that host; gloo talks over ``lo``
  (``JETSCAN_HOROVOD_NICS=lo``: Horovod's interface probe would need real hosts);
- the worker on ``127.0.0.2`` is SIGKILLed after the first checkpoint: the job goes on with
  one worker, resumes from the checkpoint, ends with exit 0 and a finished run of all epochs
  (world size 1 at the end);
- clear, fast errors for a bad ``--min-np``.
"""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jetscan.cluster.launch import launch_ray
from jetscan.core.errors import RunnerError

SECOND_HOST = "127.0.0.2"
EPOCHS = 30


@pytest.fixture(scope="module")
def two_hosts(start_ray_node):
    """(``HOST:PORT`` of a 1-CPU head, the ``ray start`` process of a 1-CPU node at 127.0.0.2)."""
    address, _ = start_ray_node(1)  # --node-ip-address 127.0.0.1 would still register the machine's address
    _, second = start_ray_node(1, head_address=address, node_ip=SECOND_HOST)
    return address, second


def _horovod_worker(node: subprocess.Popen):
    """The Horovod worker actor's process among the node's processes, or None."""
    import psutil

    for child in psutil.Process(node.pid).children(recursive=True):
        try:
            if "BaseHorovodWorker" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _study_copy(study, with_runs, store):
    run = {"model": "dense_ae", "samples": ["qcd"], "epochs": EPOCHS, "patience": EPOCHS, "batch_size": 16,
           "optimizer": "adam", "lr": 1e-3}
    s = with_runs(study, store=str(store), runs={"dense": run})
    shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    return s


def _checkpoint(store: str) -> dict | None:
    import torch

    from jetscan.jobs.train import checkpoint_path
    from jetscan.storage import blobs

    if not blobs.exists(store, checkpoint_path("dense")):
        return None
    return torch.load(io.BytesIO(blobs.read_blob(store, checkpoint_path("dense"))), map_location="cpu", weights_only=False)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.pythia
@pytest.mark.horovod
def test_an_elastic_job_survives_losing_a_worker(study, with_runs, tmp_path, two_hosts, ray_env):
    pytest.importorskip("horovod.torch")
    pytest.importorskip("psutil")
    address, second = two_hosts
    s = _study_copy(study, with_runs, tmp_path / "elastic.zarr")
    yaml_path = tmp_path / "study.yaml"
    yaml_path.write_text(s.to_yaml())
    cmd = [sys.executable, "-m", "jetscan.jobs.cli", "train", str(yaml_path), "--model", "dense",
           "--np", "2", "--min-np", "1", "--address", address]
    out_path = tmp_path / "cli.out"
    with open(out_path, "w") as out:
        cli = subprocess.Popen(cmd, env=ray_env(JETSCAN_HOROVOD_NICS="lo"), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        first = None
        while first is None:  # the first epoch's checkpoint, written by 2 workers
            assert cli.poll() is None, f"the job ended before its first checkpoint:\n{out_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no checkpoint within 150 s:\n{out_path.read_text()[-4000:]}"
            first = _checkpoint(s.store)
            time.sleep(0.05)
        worker = _horovod_worker(second)
        assert worker is not None, "no Horovod worker on the node at 127.0.0.2"
        worker.send_signal(signal.SIGKILL)
        assert first["world_size"] == 2 and not first.get("finished")
        assert first["epoch"] < EPOCHS - 1
        code = cli.wait(timeout=150)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    out = " ".join(out_path.read_text().split())
    assert code == 0, out[-4000:]
    assert f"trained dense on up to 2 elastic horovod workers of the Ray cluster at {address}" in out
    assert f"{SECOND_HOST}[" in out and "actor died" in out  # Horovod's driver saw the loss
    last = _checkpoint(s.store)
    assert last["finished"]
    summary = last["summary"]
    assert summary["world_size"] == 1  # the job ended on the surviving worker
    assert summary["epochs_run"] == EPOCHS and last["history"]["epoch"] == list(range(EPOCHS))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.horovod
def test_an_elastic_job_whose_workers_all_fail_ends_with_one_clear_error(tmp_path, make_study, with_runs, two_hosts, ray_env):
    pytest.importorskip("horovod.torch")
    address, _ = two_hosts
    # the store does not exist: every worker fails reading its data, and no host is left
    run = {"model": "dense_ae", "samples": ["qcd"], "epochs": 1}
    study = with_runs(make_study(tmp_path / "missing.zarr"), runs={"dense": run})
    yaml_path = tmp_path / "study.yaml"
    yaml_path.write_text(study.to_yaml())
    cmd = [sys.executable, "-m", "jetscan.jobs.cli", "train", str(yaml_path), "--model", "dense",
           "--np", "2", "--min-np", "1", "--address", address]
    done = subprocess.run(cmd, env=ray_env(JETSCAN_HOROVOD_NICS="lo"), capture_output=True, text=True, timeout=240, check=False)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out[-4000:]
    assert f"elastic horovod job of 1 to 2 workers on the Ray cluster at {address}: fewer than 1 worker(s) could go on (" in out
    assert "StorageError" in out and "re-run the same command" in out


# ---------------------------------------------------------------------------- errors
def _small(make_study, with_runs, store, **run):
    cfg = {"model": "dense_ae", "samples": ["qcd"], "epochs": 1, "batch_size": 16, **run}
    return with_runs(make_study(store), runs={"dense": cfg}, virtual_ranks=4, batch_size=16)


def test_bad_min_np_fails_before_any_work(tmp_path, make_study, with_runs):
    study = _small(make_study, with_runs, tmp_path / "s.zarr")
    for bad in (0, -1, 3, 1.5, True):
        msg = rf"min_np: the fewest workers of an elastic job must be an integer from 1 to np=2 \(got {bad!r}\)"
        with pytest.raises(RunnerError, match=msg):
            launch_ray(study, ["dense"], 2, "horovod", address="127.0.0.1:1", min_np=bad)
    with pytest.raises(RunnerError, match=r"min_np: elastic training \(--min-np\) needs the horovod backend \(got backend 'ddp'\)"):
        launch_ray(study, ["dense"], 2, "ddp", address="127.0.0.1:1", min_np=1)
    with pytest.raises(RunnerError, match="data.virtual_ranks 4 is not a multiple of 3; raise --min-np"):
        launch_ray(study, ["dense"], 4, "horovod", address="127.0.0.1:1", min_np=2)
    scaled = _small(make_study, with_runs, tmp_path / "t.zarr", lr_scaling="linear")
    with pytest.raises(RunnerError, match="run 'dense' has lr_scaling 'linear'"):
        launch_ray(scaled, ["dense"], 2, "horovod", address="127.0.0.1:1", min_np=1)


def test_min_np_without_address_is_a_clear_cli_error(tmp_path, make_study, with_runs, ray_env):
    yaml_path = tmp_path / "study.yaml"
    yaml_path.write_text(_small(make_study, with_runs, tmp_path / "s.zarr").to_yaml())
    cmd = [sys.executable, "-m", "jetscan.jobs.cli", "train", str(yaml_path), "--model", "dense", "--np", "2", "--min-np", "1"]
    done = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=120, check=False)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out[-4000:]
    assert "--min-np: elastic training runs on a Ray cluster only; pass --address HOST:PORT too" in out
