"""Training as actors of an existing Ray cluster: ``jetscan train ... --np N --address HOST:PORT``.

- a local Ray cluster (``start_ray_node``, tests/cluster/conftest.py: ``ray start --head
  --block`` in a subprocess, its own temp dir and ports, stopped in teardown) stands in for
  the user's; the real CLI runs in a subprocess;
- 2 Horovod workers (``horovod.ray.RayExecutor``) and 2 torch.distributed workers reach the
  weights of 1 worker with the same global batch and seed;
- a failing worker ends the job with one error that says re-running resumes;
- clear, fast errors for an unreachable or malformed address and a bad ``np`` / backend.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from jetscan.cluster.launch import launch_ray
from jetscan.core.errors import ConfigError, RunnerError

@pytest.fixture(scope="module")
def ray_head(start_ray_node):
    """``127.0.0.1:PORT`` of a 2-CPU Ray head started for this module."""
    address, _ = start_ray_node(2)
    return address


def _dense_only(make_study, with_runs, store):
    """A small study (no jets made) with the ``dense`` run only."""
    run = {"model": "dense_ae", "samples": ["qcd"], "epochs": 1, "batch_size": 16}
    return with_runs(make_study(store), runs={"dense": run})


def _cli_train(yaml_path: str, runs: list[str], *, np: int, backend: str, address: str, env: dict, timeout: float = 300):
    cmd = [sys.executable, "-m", "jetscan.jobs.cli", "train", yaml_path]
    for run in runs:
        cmd += ["--model", run]
    cmd += ["--np", str(np), "--backend", backend, "--address", address]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _trains_on(address: str, backend: str, env: dict):
    def launch(yaml_path: str, runs: list[str]) -> None:
        done = _cli_train(yaml_path, runs, np=2, backend=backend, address=address, env=env)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    return launch


# ------------------------------------------------------------------- 1 vs 2 workers
@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.pythia
@pytest.mark.horovod
def test_two_horovod_actors_reach_the_one_worker_weights(study, tmp_path, ray_head, ray_env, two_workers_equal_one):
    pytest.importorskip("horovod.torch")
    two_workers_equal_one(study, tmp_path, "dense", _trains_on(ray_head, "horovod", ray_env()))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.pythia
def test_two_ddp_actors_reach_the_one_worker_weights(study, tmp_path, ray_head, ray_env, two_workers_equal_one):
    two_workers_equal_one(study, tmp_path, "dense", _trains_on(ray_head, "ddp", ray_env()))


@pytest.mark.slow
@pytest.mark.ray
def test_a_failing_worker_ends_the_job_with_one_clear_error(tmp_path, make_study, with_runs, ray_head, ray_env):
    # the store does not exist: every worker fails reading its data
    study = _dense_only(make_study, with_runs, tmp_path / "missing.zarr")
    yaml_path = tmp_path / "study.yaml"
    yaml_path.write_text(study.to_yaml())
    done = _cli_train(str(yaml_path), ["dense"], np=2, backend="ddp", address=ray_head, env=ray_env(), timeout=180)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out[-4000:]
    assert f"ddp job of 2 workers on the Ray cluster at {ray_head}: a worker failed (" in out
    assert "re-run the same command" in out


# ---------------------------------------------------------------------------- errors
def test_unreachable_address_is_a_fast_clear_error(tmp_path, make_study, with_runs, ray_env, free_ports):
    yaml_path = tmp_path / "study.yaml"
    yaml_path.write_text(_dense_only(make_study, with_runs, tmp_path / "s.zarr").to_yaml())
    (closed,) = free_ports(1)
    t0 = time.monotonic()
    done = _cli_train(str(yaml_path), ["dense"], np=2, backend="ddp", address=f"127.0.0.1:{closed}", env=ray_env(), timeout=60)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out[-4000:]
    assert f"--address '127.0.0.1:{closed}': cannot reach a Ray head there" in out
    assert time.monotonic() - t0 < 30


def test_bad_np_backend_address_and_run_fail_before_any_work(tmp_path, make_study, with_runs):
    study = _dense_only(make_study, with_runs, tmp_path / "s.zarr")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(RunnerError, match=rf"np: the number of worker processes must be an integer >= 1 \(got {bad!r}\)"):
            launch_ray(study, ["dense"], bad, "ddp", address="127.0.0.1:1")
    with pytest.raises(RunnerError, match="backend: must be one of horovod, ddp for a Ray launch \\(got 'mpi'\\)"):
        launch_ray(study, ["dense"], 2, "mpi", address="127.0.0.1:1")
    with pytest.raises(ConfigError, match="nope"):
        launch_ray(study, ["nope"], 2, "ddp", address="127.0.0.1:1")
    with pytest.raises(RunnerError, match="expected HOST:PORT of a Ray head"):
        launch_ray(study, ["dense"], 2, "ddp", address="headnode")
    with pytest.raises(RunnerError, match="cannot reach a Ray head there"):
        launch_ray(study, ["dense"], 2, "ddp", address="127.0.0.1:1")
