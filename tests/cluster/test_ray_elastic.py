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
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from jetscan.cluster.launch import launch_ray
from jetscan.core.errors import RunnerError

_CLEAN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HOROVOD_RANK", "HOROVOD_SIZE", "RAY_ADDRESS")
SECOND_HOST = "127.0.0.2"
EPOCHS = 30


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", COLUMNS="500", **extra)
    return env


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_started(log_path: str, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in open(log_path).read():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} failed:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def two_hosts():
    """(``HOST:PORT`` of the head, the ``ray start`` process of the node at 127.0.0.2)."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="jsel", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    p = _free_ports(13)
    procs = []
    try:
        log = os.path.join(temp, "head.log")
        procs.append(subprocess.Popen(
            [ray_cli, "start", "--head", "--block", "--port", str(p[0]), "--num-cpus", "1", "--num-gpus", "0",
             "--temp-dir", temp, "--include-dashboard", "false", "--dashboard-port", str(p[1]),
             "--ray-client-server-port", str(p[2]), "--dashboard-agent-listen-port", str(p[3]),
             "--dashboard-agent-grpc-port", str(p[4]), "--runtime-env-agent-port", str(p[5]),
             "--metrics-export-port", str(p[6]), "--disable-usage-stats"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
        ))
        _wait_started(log, procs[0], "ray start --head")
        # the second node: its own address and ports (both raylets run on this machine)
        log2 = os.path.join(temp, "node2.log")
        procs.append(subprocess.Popen(
            [ray_cli, "start", "--block", "--address", f"127.0.0.1:{p[0]}", "--node-ip-address", SECOND_HOST,
             "--num-cpus", "1", "--num-gpus", "0", "--dashboard-agent-listen-port", str(p[7]),
             "--dashboard-agent-grpc-port", str(p[8]), "--runtime-env-agent-port", str(p[9]),
             "--node-manager-port", str(p[10]), "--object-manager-port", str(p[11]),
             "--metrics-export-port", str(p[12]), "--disable-usage-stats"],
            stdout=open(log2, "w"), stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
        ))
        _wait_started(log2, procs[1], f"ray start --node-ip-address {SECOND_HOST}")
        yield f"127.0.0.1:{p[0]}", procs[1]
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


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
def test_an_elastic_job_survives_losing_a_worker(study, with_runs, tmp_path, two_hosts):
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
        cli = subprocess.Popen(cmd, env=_env(JETSCAN_HOROVOD_NICS="lo"), stdout=out, stderr=subprocess.STDOUT)
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
def test_an_elastic_job_whose_workers_all_fail_ends_with_one_clear_error(tmp_path, make_study, with_runs, two_hosts):
    pytest.importorskip("horovod.torch")
    address, _ = two_hosts
    # the store does not exist: every worker fails reading its data, and no host is left
    run = {"model": "dense_ae", "samples": ["qcd"], "epochs": 1}
    study = with_runs(make_study(tmp_path / "missing.zarr"), runs={"dense": run})
    yaml_path = tmp_path / "study.yaml"
    yaml_path.write_text(study.to_yaml())
    cmd = [sys.executable, "-m", "jetscan.jobs.cli", "train", str(yaml_path), "--model", "dense",
           "--np", "2", "--min-np", "1", "--address", address]
    done = subprocess.run(cmd, env=_env(JETSCAN_HOROVOD_NICS="lo"), capture_output=True, text=True, timeout=240, check=False)
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


def test_min_np_without_address_is_a_clear_cli_error(tmp_path, make_study, with_runs):
    yaml_path = tmp_path / "study.yaml"
    yaml_path.write_text(_small(make_study, with_runs, tmp_path / "s.zarr").to_yaml())
    cmd = [sys.executable, "-m", "jetscan.jobs.cli", "train", str(yaml_path), "--model", "dense", "--np", "2", "--min-np", "1"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out[-4000:]
    assert "--min-np: elastic training runs on a Ray cluster only; pass --address HOST:PORT too" in out
