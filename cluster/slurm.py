"""Training workers started by Slurm's ``srun``: rank, size and rendezvous from the step's environment.

``srun -n 4 python -m jetscan.jobs.cli train study.yaml --model dense [--backend horovod|ddp]``
starts 4 tasks; each is one worker. Slurm gives every task its place in the step
(``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``, ``SLURMD_NODENAME``,
``SLURM_STEP_NODELIST``, ``SLURM_STEP_TASKS_PER_NODE``) but no rendezvous, so this module
provides the part horovodrun / torchrun would:

- Horovod (gloo): rank 0 runs Horovod's own ``RendezvousServer`` (the HTTP key-value store
  ``horovodrun --gloo`` runs in the launcher, initialised with the same per-host scope sizes),
  every rank sets the ``HOROVOD_*`` variables horovodrun's ``gloo_run`` gives its workers, and
  ``hvd.init()`` then meets the others there;
- torch.distributed: ``MASTER_ADDR`` / ``MASTER_PORT`` / ``RANK`` / ``WORLD_SIZE`` /
  ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE``, as torchrun sets them (``init_process_group`` on rank 0
  serves the TCP store).

The rendezvous host is the first node of the step (where rank 0 runs, for srun's block, cyclic
and plane distributions: :func:`setup` checks it); the port is the same on every rank without
any exchange, derived from the job and step ids (:func:`rendezvous_port`), or
``JETSCAN_RENDEZVOUS_PORT``; an existing ``MASTER_ADDR`` / ``MASTER_PORT`` is kept.

**srun step or batch script?** In an ``sbatch`` script Slurm also sets ``SLURM_PROCID`` (0) and
``SLURM_NTASKS``, but that one process is not a worker. srun sets the step's variables
(``SLURM_STEP_ID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_STEP_NODELIST``, ...: srun(1), "OUTPUT
ENVIRONMENT VARIABLES") in every task it starts; the batch step has none of them (sbatch(1)'s
list has ``SLURM_PROCID`` but no ``SLURM_STEP_ID``; checked with Slurm 22.05). The special steps
(batch, extern, interactive, pending: ids from ``0xfffffff0`` up, slurm.h) are not srun steps
either. :func:`srun_step` is that test.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from jetscan.core.errors import RunnerError

__all__ = [
    "SlurmStep",
    "srun_step",
    "is_srun_step",
    "expand_hostlist",
    "expand_tasks_per_node",
    "rendezvous_port",
    "horovod_env",
    "ddp_env",
    "horovod_plan",
    "setup",
    "PORT_ENV",
    "PORT_BASE",
    "PORT_SPAN",
]

PORT_ENV = "JETSCAN_RENDEZVOUS_PORT"
#: derived ports lie in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's ephemeral range
#: (32768-60999), above the well-known and Slurm's own (6817-6819) ports
PORT_BASE = 20000
PORT_SPAN = 10000
#: step ids from here up are Slurm's special steps (slurm.h: SLURM_MAX_NORMAL_STEP_ID), not srun steps
MAX_NORMAL_STEP_ID = 0xFFFFFFF0
#: how long a rank waits for rank 0's Horovod rendezvous server to accept connections
WAIT_FOR_RENDEZVOUS_S = 120.0


@dataclass(frozen=True)
class SlurmStep:
    """This task's place in an srun step."""

    job_id: int
    step_id: int
    rank: int  #: SLURM_PROCID
    size: int  #: tasks in the step
    local_rank: int  #: SLURM_LOCALID: rank among the step's tasks on this node
    nodelist: str  #: the step's compressed Slurm hostlist (SLURM_STEP_NODELIST)
    tasks_per_node: tuple[int, ...]  #: the step's tasks on each node, in node-list order
    node_index: int | None = None  #: this node's index in the node list (SLURM_NODEID), if known
    hostname: str | None = None  #: this node's Slurm name (SLURMD_NODENAME), if known


def _int(env, key: str) -> int | None:
    value = env.get(key)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def is_srun_step(environ: dict | None = None) -> bool:
    """True in a task started by ``srun`` (any number of tasks); False in an ``sbatch`` batch
    script, a ``salloc`` shell, or outside Slurm. See the module docstring for the test."""
    env = os.environ if environ is None else environ
    step = _int(env, "SLURM_STEP_ID")
    if step is None:
        step = _int(env, "SLURM_STEPID")  # the older name, still set by srun
    return (
        step is not None
        and 0 <= step < MAX_NORMAL_STEP_ID
        and _int(env, "SLURM_PROCID") is not None
        and (_int(env, "SLURM_STEP_NUM_TASKS") is not None or _int(env, "SLURM_NTASKS") is not None)
    )


def expand_tasks_per_node(spec: str) -> tuple[int, ...]:
    """Slurm's tasks-per-node notation, one count per node: ``"2(x3),1"`` -> ``(2, 2, 2, 1)``."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if m is None:
            raise RunnerError(f"cannot read Slurm's tasks per node {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return tuple(out)


def srun_step(environ: dict | None = None) -> SlurmStep | None:
    """This task's :class:`SlurmStep`, or None outside an srun step (see :func:`is_srun_step`)."""
    env = os.environ if environ is None else environ
    if not is_srun_step(env):
        return None
    step_id = _int(env, "SLURM_STEP_ID")
    step_id = _int(env, "SLURM_STEPID") if step_id is None else step_id
    size = _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")
    rank = _int(env, "SLURM_PROCID")
    if not size or size < 1 or not 0 <= rank < size:
        raise RunnerError(f"Slurm step: SLURM_PROCID={rank} of {size} tasks: need 0 <= rank < size")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURMD_NODENAME") or "localhost"
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or str(size)
    tasks = expand_tasks_per_node(spec)
    if sum(tasks) != size:
        raise RunnerError(f"Slurm step: tasks per node {spec!r} do not add up to the step's {size} tasks")
    return SlurmStep(
        job_id=_int(env, "SLURM_JOB_ID") or _int(env, "SLURM_JOBID") or 0,
        step_id=step_id,
        rank=rank,
        size=size,
        local_rank=_int(env, "SLURM_LOCALID") or 0,
        nodelist=nodelist,
        tasks_per_node=tasks,
        node_index=_int(env, "SLURM_NODEID"),
        hostname=env.get("SLURMD_NODENAME"),
    )


def expand_hostlist(nodelist: str, scontrol: str | None = None) -> list[str]:
    """The host names of a Slurm hostlist (``"node[01-03],gpu7"``), in Slurm's order.

    A plain comma-separated list is split here; a list with brackets is expanded by
    ``scontrol show hostnames`` (on ``PATH`` wherever srun is)."""
    nodelist = nodelist.strip()
    if "[" not in nodelist:
        return [h for h in nodelist.split(",") if h]
    exe = scontrol or shutil.which("scontrol")
    if exe is None:
        raise RunnerError(f"cannot expand the Slurm hostlist {nodelist!r}: scontrol is not on PATH")
    try:
        out = subprocess.run([exe, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(f"cannot expand the Slurm hostlist {nodelist!r} with {exe}: {exc}") from None
    hosts = out.stdout.split()
    if out.returncode != 0 or not hosts:
        raise RunnerError(f"`scontrol show hostnames {nodelist}` failed ({out.returncode}): {out.stderr.strip()}")
    return hosts


def rendezvous_port(environ: dict | None = None) -> int:
    """The rendezvous port every rank of the step computes alike.

    ``JETSCAN_RENDEZVOUS_PORT`` when set; otherwise ``PORT_BASE + (job_id * 32 + step_id) % PORT_SPAN``:
    different for the steps of one job (up to 32 of them) and for consecutive jobs, so
    concurrent steps sharing a node do not collide."""
    env = os.environ if environ is None else environ
    if env.get(PORT_ENV):
        port = _int(env, PORT_ENV)
        if port is None or not 0 < port < 65536:
            raise RunnerError(f"{PORT_ENV}={env[PORT_ENV]!r}: must be a TCP port (1-65535)")
        return port
    job = _int(env, "SLURM_JOB_ID") or _int(env, "SLURM_JOBID") or 0
    step = _int(env, "SLURM_STEP_ID")
    step = _int(env, "SLURM_STEPID") if step is None else step
    return PORT_BASE + (job * 32 + (step or 0)) % PORT_SPAN


def _node_index(step: SlurmStep, hosts: list[str]) -> int:
    if step.hostname and step.hostname in hosts:
        return hosts.index(step.hostname)
    if step.node_index is not None and 0 <= step.node_index < len(hosts):
        return step.node_index
    raise RunnerError(f"Slurm step: this node ({step.hostname!r}) is not in the step's node list {step.nodelist!r}")


def horovod_plan(hosts: list[str], tasks_per_node: tuple[int, ...]):
    """Horovod ``SlotInfo`` s for the step, as ``horovodrun``'s ``get_host_assignments`` makes
    them (the rendezvous server only needs each host's and each local rank's task counts)."""
    from horovod.runner.common.util.hosts import SlotInfo

    if len(hosts) != len(tasks_per_node):
        raise RunnerError(f"Slurm step: {len(hosts)} nodes but tasks per node for {len(tasks_per_node)}")
    size = sum(tasks_per_node)
    plan, rank, cross_seen = [], 0, {}
    for host, n in zip(hosts, tasks_per_node):
        for local in range(n):
            cross_rank = cross_seen.get(local, 0)
            cross_seen[local] = cross_rank + 1
            cross_size = sum(1 for m in tasks_per_node if m > local)
            plan.append(SlotInfo(hostname=host, rank=rank, local_rank=local, cross_rank=cross_rank,
                                 size=size, local_size=n, cross_size=cross_size))
            rank += 1
    return plan


def horovod_env(step: SlurmStep, hosts: list[str], addr: str, port: int) -> dict[str, str]:
    """The variables ``horovodrun --gloo`` gives a worker (``gloo_run.create_run_env_vars`` and
    ``create_slot_env_vars``), for this task of the step. ``HOROVOD_GLOO_IFACE`` is left to the
    user's environment: without it gloo binds the address this node's hostname resolves to."""
    node = _node_index(step, hosts)
    cross_rank = sum(1 for m in step.tasks_per_node[:node] if m > step.local_rank)
    cross_size = sum(1 for m in step.tasks_per_node if m > step.local_rank)
    return {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_HOSTNAME": hosts[node],
        "HOROVOD_RANK": str(step.rank),
        "HOROVOD_SIZE": str(step.size),
        "HOROVOD_LOCAL_RANK": str(step.local_rank),
        "HOROVOD_LOCAL_SIZE": str(step.tasks_per_node[node]),
        "HOROVOD_CROSS_RANK": str(cross_rank),
        "HOROVOD_CROSS_SIZE": str(cross_size),
    }


def ddp_env(step: SlurmStep, hosts: list[str], environ: dict | None = None) -> dict[str, str]:
    """The variables torchrun gives a worker, for this task of the step; an existing
    ``MASTER_ADDR`` / ``MASTER_PORT`` in ``environ`` is kept."""
    env = os.environ if environ is None else environ
    node = _node_index(step, hosts)
    return {
        "MASTER_ADDR": env.get("MASTER_ADDR") or hosts[0],
        "MASTER_PORT": env.get("MASTER_PORT") or str(rendezvous_port(env)),
        "RANK": str(step.rank),
        "WORLD_SIZE": str(step.size),
        "LOCAL_RANK": str(step.local_rank),
        "LOCAL_WORLD_SIZE": str(step.tasks_per_node[node]),
        "GROUP_RANK": str(node),
    }


_SERVER = None  # rank 0's Horovod rendezvous server, kept for the life of the process


def _start_rendezvous_server(port: int, plan) -> None:
    global _SERVER
    if _SERVER is not None:
        return
    import threading

    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    try:
        httpd = RendezvousHTTPServer(("", port), RendezvousHandler, 0)
    except OSError as exc:
        raise RunnerError(
            f"Slurm step: cannot start the Horovod rendezvous server on port {port} ({exc}); "
            f"set {PORT_ENV} to a free port for this step"
        ) from None
    httpd.init(plan)
    threading.Thread(target=httpd.serve_forever, name="jetscan-horovod-rendezvous", daemon=True).start()
    _SERVER = httpd


def _wait_for(addr: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((addr, port), timeout=5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RunnerError(
                    f"Slurm step: rank 0's Horovod rendezvous server at {addr}:{port} did not answer "
                    f"within {timeout:.0f} s ({exc})"
                ) from None
            time.sleep(0.2)


def setup(backend: str, environ: dict | None = None) -> SlurmStep:
    """Prepare this srun task for ``backend`` (``"horovod"`` or ``"ddp"``): set the launcher
    variables in ``environ`` (default ``os.environ``) and, for Horovod on rank 0, start the
    rendezvous server. Call before ``hvd.init()`` / ``init_process_group``."""
    env = os.environ if environ is None else environ
    step = srun_step(env)
    if step is None:
        raise RunnerError("not in a Slurm srun step (no SLURM_STEP_ID): start the workers with srun")
    hosts = expand_hostlist(step.nodelist)
    if len(hosts) != len(step.tasks_per_node):
        raise RunnerError(
            f"Slurm step: node list {step.nodelist!r} has {len(hosts)} nodes, tasks per node {step.tasks_per_node}"
        )
    if backend == "ddp":
        env.update(ddp_env(step, hosts, env))
        return step
    if backend != "horovod":
        raise RunnerError(f"Slurm step: backend must be 'horovod' or 'ddp' (got {backend!r})")
    addr, port = hosts[0], rendezvous_port(env)
    if step.rank == 0:
        here = hosts[_node_index(step, hosts)]
        if here != addr:
            raise RunnerError(
                f"Slurm step: rank 0 runs on {here}, not on the step's first node {addr}: "
                "use srun's block or cyclic task distribution"
            )
        _start_rendezvous_server(port, horovod_plan(hosts, step.tasks_per_node))
    else:
        # Horovod's HTTP store gives up after 3 tries in 1.5 s: wait for rank 0's server first
        _wait_for(addr, port, WAIT_FOR_RENDEZVOUS_S)
    env.update(horovod_env(step, hosts, addr, port))
    return step
