"""Fixtures shared by the data-parallel tests (local launchers, Ray, Slurm).

- ``with_runs(study, store=..., runs=..., **data)``: the study with the test runs and data settings;
- ``study``: the session's real Pythia store, preprocessed, with ``data.virtual_ranks`` 2 and a
  global batch of 16, so 1 worker and 2 workers take the same steps on the same jets;
- ``two_workers_equal_one(study, tmp_path, run, launch)``: trains ``run`` on 1 process here,
  then on 2 workers through ``launch(yaml_path, [run])``, and asserts equal weights and
  histories (and that the 2-worker checkpoint says world size 2); ``runs`` / ``runs_two``
  replace the test runs (of both studies / of the 2-worker one).
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
    def check(study, tmp_path, run: str, launch, runs: dict | None = None, runs_two: dict | None = None):
        from jetscan.cluster.distributed import SingleProcess
        from jetscan.jobs.train import load_trained, train

        one = _copy(study, tmp_path / "one.zarr", runs)
        two = _copy(study, tmp_path / "two.zarr", runs_two or runs)
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


# ------------------------------------------------------------------ a real local Slurm
# ``slurm_cluster``: a one-node Slurm 22.05 on this machine (munged, slurmctld, slurmd started
# here in the foreground, configuration, keys, state, spool and logs in a fresh temporary
# directory, free ports), ready when ``sinfo`` shows the node idle; stopped at the end of the
# session. ``slurm_cluster.env`` is the environment for srun / sbatch / sinfo (SLURM_CONF, no
# inherited SLURM_* / launcher variables). Skipped, with the reason, where the Slurm daemons
# are not installed (``make install`` installs them as root with apt-get) or this is not root.

import os as _os
import socket as _socket
import subprocess as _subprocess
import tempfile as _tempfile
import time as _time
from pathlib import Path as _Path

_SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "sinfo", "scontrol", "squeue", "scancel")
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SLURM_CONF = """\
ClusterName=jetscantest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s;
# 30 leaves a loaded machine time to launch a step before its credential expires)
AuthInfo=socket={dir}/munge.socket,cred_expire=30
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no systemd in the container: track processes by their parent pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
# the main scheduling loop every 5 s (default 60): a requeued job starts again soon after its cred_expire
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
# jobs may requeue themselves (sbatch --requeue, scontrol requeue: jetscan submit's scripts)
JobRequeue=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=30 State=UP
"""


def _free_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """A running one-node Slurm: ``env`` for its client commands, ``run(cmd)`` to call one."""

    def __init__(self, root: _Path, host: str, env: dict):
        self.root, self.host, self.env = root, host, env
        self.procs: list[_subprocess.Popen] = []

    def run(self, cmd: list[str], timeout: float = 60, **kw) -> _subprocess.CompletedProcess:
        return _subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False, **kw)

    def logs(self) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def start(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs.append(_subprocess.Popen(cmd, env=self.env, stdout=log, stderr=_subprocess.STDOUT, start_new_session=True))
        log.close()

    def wait_until(self, what: str, ready, timeout: float = 60) -> None:
        deadline = _time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or _time.monotonic() > deadline:
                self.stop()
                why = f"{', '.join(dead)} exited" if dead else f"not within {timeout:.0f} s"
                pytest.fail(f"local Slurm: {what}: {why}\n{self.logs()}")
            _time.sleep(0.3)

    def wait_for_job(self, job_id: str, timeout: float = 120) -> str:
        """The final state of job ``job_id`` (``COMPLETED``, ``FAILED``, ...), polled with scontrol."""
        deadline = _time.monotonic() + timeout
        state = "UNKNOWN"
        while _time.monotonic() < deadline:
            r = self.run(["scontrol", "-o", "show", "job", str(job_id)], timeout=20)
            fields = dict(f.split("=", 1) for f in r.stdout.split() if "=" in f)
            state = fields.get("JobState", state)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "UNKNOWN"):
                return state
            _time.sleep(0.3)
        self.run(["scancel", str(job_id)], timeout=20)
        return f"{state} after {timeout:.0f} s (cancelled)"

    def node_state(self) -> str:
        r = self.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=20)
        return r.stdout.strip() if r.returncode == 0 else ""

    def _jobs(self) -> list[str]:
        try:
            return self.run(["squeue", "-h", "-o", "%i"], timeout=20).stdout.split()
        except _subprocess.TimeoutExpired:
            return []

    def stop(self) -> None:
        if all(p.poll() is None for p in self.procs) and self._jobs():
            # jobs left by a failed test: cancel them while slurmd can still end their steps
            # (slurmstepd ignores SIGTERM), and wait for them to go
            self.run(["scancel", "--full", *self._jobs()], timeout=20)
            deadline = _time.monotonic() + 30
            while self._jobs() and _time.monotonic() < deadline:
                _time.sleep(0.5)
        for p in reversed(self.procs):  # slurmd, slurmctld, munged: the processes started here
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except _subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.procs.clear()


@pytest.fixture(scope="session")
def slurm_cluster():
    import shutil as _shutil

    missing = [t for t in _SLURM_TOOLS if _shutil.which(t, path=_SBIN_PATH + ":" + _os.environ.get("PATH", "")) is None]
    if missing:
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): `make install` as root installs slurm-wlm and munge")
    if _os.geteuid() != 0:
        pytest.skip("a local Slurm needs root (slurmd starts the job steps as the submitting user)")
    host = _socket.gethostname().split(".")[0]
    try:
        _socket.gethostbyname(host)
    except OSError:
        pytest.skip(f"this machine's host name {host!r} does not resolve: slurmd and the gloo workers need it")
    root = _Path(_tempfile.mkdtemp(prefix="jetscan-slurm-"))  # short: munge's socket path must fit in sun_path
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(_os.urandom(1024))
    key.chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(_SLURM_CONF.format(
        host=host, dir=root, ctld_port=_free_port(), d_port=_free_port(), cpus=max(2, _os.cpu_count() or 1)
    ))
    env = {k: v for k, v in _os.environ.items() if not k.startswith(("SLURM_", "SLURMD_", "HOROVOD_", "OMPI_", "PMI_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = _SBIN_PATH + ":" + env.get("PATH", "")
    cluster = SlurmCluster(root, host, env)
    socket_path = root / "munge.socket"
    cluster.start("munged", [
        "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
        f"--pid-file={root}/munged.pid", f"--log-file={root}/log/munged.log", f"--seed-file={root}/munged.seed",
    ])
    cluster.wait_until("munged socket", socket_path.exists, timeout=30)
    cluster.start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
    cluster.wait_until("slurmctld answering", lambda: cluster.run(["scontrol", "ping"], timeout=20).returncode == 0)
    cluster.start("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", host])
    cluster.wait_until("node idle in sinfo", lambda: cluster.node_state() == "idle", timeout=90)
    try:
        yield cluster
    finally:
        cluster.stop()
        _shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------- local Ray clusters
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HOROVOD_RANK", "HOROVOD_SIZE", "RAY_ADDRESS")


def ray_env(**extra) -> dict:
    """The environment of a test's Ray nodes and CLI: no launcher ranks, no token auth (``ray
    start`` turns it on when ``~/.ray/auth_token`` exists), wide console lines, ``extra``."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", COLUMNS="500", **extra)
    return env


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 right now."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(name="ray_env", scope="session")
def ray_env_fixture():
    return ray_env


@pytest.fixture(name="free_ports", scope="session")
def free_ports_fixture():
    return free_ports


@pytest.fixture(scope="module")
def start_ray_node():
    """``start(num_cpus, head_address=None, node_ip=None)``: one ``ray start --block`` node in
    its own session, temp dir and ports (a head when ``head_address`` is None); returns
    ``(address of the head, the node's process)``. Every node is stopped at the module's end
    by its process group, never by ``ray stop`` (which would stop every Ray on the machine)."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="jsray", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    procs = []

    def start(num_cpus: int, head_address: str | None = None, node_ip: str | None = None):
        p = free_ports(10)
        agents = [
            "--dashboard-agent-listen-port", str(p[0]), "--dashboard-agent-grpc-port", str(p[1]),
            "--runtime-env-agent-port", str(p[2]), "--metrics-export-port", str(p[3]),
        ]
        if head_address is None:
            cmd = ["--head", "--port", str(p[4]), "--temp-dir", temp, "--include-dashboard", "false",
                   "--dashboard-port", str(p[5]), "--ray-client-server-port", str(p[6])]
            address = f"127.0.0.1:{p[4]}"
        else:
            cmd = ["--address", head_address, "--node-manager-port", str(p[7]), "--object-manager-port", str(p[8])]
            address = head_address
        if node_ip:
            cmd += ["--node-ip-address", node_ip]
        log = os.path.join(temp, f"node{len(procs)}.log")
        proc = subprocess.Popen(
            [ray_cli, "start", "--block", "--num-cpus", str(num_cpus), "--num-gpus", "0", "--disable-usage-stats",
             *cmd, *agents],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in open(log).read():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start {' '.join(cmd)} failed:\n{open(log).read()[-3000:]}")
            time.sleep(0.5)
        return address, proc

    yield start
    # SIGTERM lets ray start stop its processes; what is left after a few seconds (the GCS
    # often is) is killed; the workers (own process groups) exit with their raylet
    for proc in reversed(procs):
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
    import shutil

    shutil.rmtree(temp, ignore_errors=True)
