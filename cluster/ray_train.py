"""Data-parallel training as actors of an existing Ray cluster (``jetscan train --address``).

:func:`train_on_ray` joins the cluster at ``address``, starts ``np`` worker actors (one CPU
each, and one GPU each where the cluster has GPUs), and runs in every actor the job it is
handed (``job``, see below), with the rank and size of the actor's backend; ``jetscan train``
hands it :func:`jetscan.jobs.train.train_runs`, the training loop of a local launch. The
runner never imports a job itself: jobs import runners, not the other way round. The first
worker that fails (an exception, or its process killed) ends the job (unless it is elastic,
below): the other workers are stopped and one RunnerError says what happened; rank 0
checkpoints every epoch, so the same command run again resumes from the last one.

What the cluster must provide: the study object itself travels to the actors, but each
worker reads its part of the training split from the study's store and rank 0 writes the
checkpoints there, so the store must be on storage that every node sees (a shared
filesystem path, or an ``s3://``-style URL), and every node needs the driver's environment
(jetscan with torch, and horovod for that backend).

Backends:

- ``"horovod"``: ``horovod.ray.RayExecutor`` (gloo) places the workers in a placement group
  and sets Horovod's rendezvous environment; each worker's comm is ``HorovodComm``.
- ``"ddp"``: plain Ray actors in a placement group (PACK). Rank 0 picks a free port on its
  node, every actor sets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and
  ``LOCAL_RANK`` (and, with GPUs, ``CUDA_VISIBLE_DEVICES`` listing its node's workers'
  GPUs in local-rank order) and ``DDPComm`` initialises the process group as under torchrun.
  Ray Train's ``TorchTrainer`` was tried with ray 2.60: it works, but it needs the
  ``ray[train]`` extra (pandas, tensorboardX), which jetscan needs for nothing else, and
  took about 27 s to run a trivial 2-worker job on a 2-core node (a controller actor, its
  own storage for results), where the actors here start in a few seconds; the process
  group needs only the five variables above.

Elastic (``--min-np M``, horovod backend only): ``RayExecutor(min_workers=M, max_workers=N)``
runs Horovod's elastic driver on the cluster. The workers train inside ``hvd.elastic.run``:
when a worker dies, its peers' next collective fails (``HorovodInternalError``), Horovod
re-forms the ring of the surviving workers, and each calls :func:`train` again, which
resumes every run from the last checkpoint in the store on the new world size (the epoch in
progress is lost; the data order is the same when every size from M to N divides
``data.virtual_ranks``, which :func:`jetscan.cluster.launch.launch_ray` checks). After each
epoch's checkpoint the workers check for new hosts (``State.commit``), so workers added to
the cluster join at an epoch boundary, up to N (not tested here). With fewer than M
workers left, Horovod waits up to ``ELASTIC_TIMEOUT_S`` for more, then the job fails. Horovod's driver blacklists the whole *host* of a failed
worker (its other workers are stopped too), so a job survives losing a node (or a worker,
with the rest of its node) as long as M workers are left on the others; on a one-node
cluster the loss of any worker still ends it. Horovod picks the network interfaces for
gloo by probing from every host, which needs two nodes when the job starts: set
``JETSCAN_HOROVOD_NICS`` (comma-separated interface names, e.g. ``eth0``; ``lo`` where all
"nodes" are addresses of one machine, as in the tests) to name them instead.

The job: a top-level function (Ray pickles it by reference, so every node imports its module)
called in each worker as ``job(study, runs, restart, backend, on_epoch=None)``: it trains
``runs`` in turn on the worker's rank and size (taken from ``backend``'s environment,
``"horovod"`` or ``"ddp"``), ``restart`` ignoring existing checkpoints, calls
``on_epoch(info)`` on every rank after each epoch's checkpoint, and returns one summary dict per
run. The elastic wrapper calls it once per run, with an ``on_epoch`` that commits Horovod's
elastic state.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable

from jetscan.cluster.ray import ensure_ray, error_line
from jetscan.core.errors import RunnerError

__all__ = ["train_on_ray", "run_job", "elastic_run_job", "TrainJob"]

#: ``job(study, runs, restart, backend, on_epoch=None) -> [summary per run]`` (module docstring)
TrainJob = Callable[..., list]

PLACEMENT_TIMEOUT_S = 100  # waiting for np free CPU (GPU) slots on the cluster
CPUS_PER_WORKER = 1
ELASTIC_TIMEOUT_S = 120  # elastic: waiting for at least min_np worker slots (at start, after a loss)
NICS_ENV = "JETSCAN_HOROVOD_NICS"  # elastic: the network interfaces for gloo (else Horovod probes them)


def run_job(job: TrainJob, study, runs: list[str], restart: bool, backend: str, threads: int) -> list[dict]:
    """One worker's part (runs in the actor): ``job`` on every run in turn; their summaries."""
    import torch

    torch.set_num_threads(threads)  # the study's train.threads, when set, wins inside the job
    return job(study, runs, restart, backend)


def train_on_ray(
    study,
    runs: list[str],
    np: int,
    backend: str,
    *,
    address: str,
    job: TrainJob,
    restart: bool = False,
    min_np: int | None = None,
) -> list[dict]:
    """Run ``job`` (module docstring) on ``runs`` of ``study`` in ``np`` workers of the Ray
    cluster at ``address``; the summaries of rank 0. With ``min_np`` (horovod only), an elastic
    job of ``min_np`` to ``np`` workers that goes on while at least ``min_np`` are alive.
    Arguments are checked by :func:`jetscan.cluster.launch.launch_ray`."""
    import ray

    started = ensure_ray(address, None)  # RunnerError saying why it cannot join
    try:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
        if min_np is not None:
            what = f"elastic horovod job of {min_np} to {np} workers on the Ray cluster at {address}"
            return _horovod_elastic(job, study, runs, np, min_np, restart, use_gpu, what)
        what = f"{backend} job of {np} workers on the Ray cluster at {address}"
        if backend == "horovod":
            return _horovod(job, study, runs, np, restart, use_gpu, what)
        return _ddp(job, study, runs, np, restart, use_gpu, what)
    finally:
        if started:
            ray.shutdown()


def _horovod(job, study, runs, np, restart, use_gpu, what) -> list[dict]:
    from horovod.ray import RayExecutor

    settings = RayExecutor.create_settings(timeout_s=60, placement_group_timeout_s=PLACEMENT_TIMEOUT_S)
    executor = RayExecutor(
        settings, num_workers=np, cpus_per_worker=CPUS_PER_WORKER, use_gpu=use_gpu, gpus_per_worker=1 if use_gpu else None
    )
    try:
        try:
            executor.start()
        except TimeoutError:
            raise _no_room(np, use_gpu, what) from None
        refs = executor.run_remote(run_job, args=[job, study, runs, restart, "horovod", CPUS_PER_WORKER])
        return _gather(refs, what)[0]
    finally:
        executor.shutdown()  # removes the placement group, which ends its actors


def elastic_run_job(job: TrainJob, study, runs: list[str], restart: bool, threads: int) -> list[dict]:
    """One elastic Horovod worker's part (runs in the actor): ``job`` on each run in turn
    inside ``hvd.elastic.run``. After a reset (a worker lost, or hosts added) every run is
    handed to ``job`` again, which returns a finished run's summary and resumes the others from
    their last checkpoint; ``restart`` applies only to runs not checkpointed yet in this job
    (``state.started``, kept and broadcast to new workers by Horovod)."""
    import horovod.torch as hvd
    import torch
    from horovod.common.elastic import ObjectState

    torch.set_num_threads(threads)
    hvd.init()
    state = ObjectState(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, started=0)

    @hvd.elastic.run
    def elastic(state) -> list[dict]:
        summaries = []
        for i, run in enumerate(runs):

            def checkpointed(_epoch: dict, i=i) -> None:
                # every rank, after rank 0 wrote the epoch's checkpoint: remember that run i
                # resumes from here, and re-form the ring now if hosts were added or removed
                state.started = max(state.started, i + 1)
                state.commit()

            fresh = restart and i >= state.started
            summaries += job(study, [run], fresh, "horovod", on_epoch=checkpointed)
            state.started = max(state.started, i + 1)  # finished (a PCA fit has no epochs)
            state.commit()
        return summaries

    return elastic(state)


class _ErrorLog(logging.Handler):
    """The first worker error Horovod's elastic Ray driver logs (it raises a generic one)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if self.first is None and "]:" in msg.split("\n", 1)[0]:  # "HOST[RANK]:error"
            self.first = msg


def _elastic_nics() -> set[str] | None:
    value = os.environ.get(NICS_ENV, "")
    nics = {n.strip() for n in value.split(",") if n.strip()}
    return nics or None


def _horovod_elastic(job, study, runs, np, min_np, restart, use_gpu, what) -> list[dict]:
    import ray
    from horovod.ray import RayExecutor

    nics = _elastic_nics()
    nodes = [n for n in ray.nodes() if n["alive"] and n["Resources"].get("CPU", 0) >= CPUS_PER_WORKER]
    if nics is None and len(nodes) < 2:
        raise RunnerError(
            f"{what}: Horovod finds the network interfaces for an elastic job by probing between nodes, and the "
            f"cluster has {len(nodes)} node(s) with CPUs; start the job on 2 nodes or more, or name the "
            f"interfaces in {NICS_ENV} (e.g. {NICS_ENV}=eth0)"
        )
    settings = RayExecutor.create_settings(timeout_s=60, placement_group_timeout_s=PLACEMENT_TIMEOUT_S, nics=nics)
    executor = RayExecutor(
        settings, min_workers=min_np, max_workers=np, cpus_per_worker=CPUS_PER_WORKER, use_gpu=use_gpu,
        gpus_per_worker=1 if use_gpu else None, elastic_timeout=ELASTIC_TIMEOUT_S,
    )
    errors = _ErrorLog()
    log = logging.getLogger("horovod.ray.elastic_v2")
    log.addHandler(errors)
    try:
        try:
            executor.start()
        except Exception as exc:  # noqa: BLE001 - horovod's TimeoutException, RuntimeError
            raise RunnerError(
                f"{what}: Horovod's elastic driver did not start ({error_line(exc)}); "
                f"it needs {min_np} free worker slot(s) within {ELASTIC_TIMEOUT_S} s"
            ) from None
        try:
            results = executor.run(elastic_run_job, args=[job, study, runs, restart, CPUS_PER_WORKER])
        except Exception as exc:  # noqa: BLE001 - RuntimeError from the driver, RayError
            cause = _last_line(errors.first) if errors.first else error_line(exc)
            raise RunnerError(
                f"{what}: fewer than {min_np} worker(s) could go on ({cause}); "
                "the run resumes from its last checkpoint: re-run the same command"
            ) from None
        if not results:
            raise RunnerError(f"{what}: no worker finished; the run resumes from its last checkpoint: re-run the same command")
        return results[0]
    finally:
        log.removeHandler(errors)
        driver = getattr(getattr(executor, "adapter", None), "driver", None)
        try:
            if driver is not None and not driver.finished():
                driver.stop()  # a failed start: stop the driver's discovery thread
            executor.shutdown()
        except Exception:  # noqa: BLE001 - shutdown asserts a finished driver; nothing else to release
            pass


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    head = lines[0].split("]:", 1)[0] + "]" if lines else ""
    return f"{head}: {lines[-1]}" if len(lines) > 1 else (lines[0] if lines else "")


class _DDPWorker:
    """One torch.distributed worker (a Ray actor)."""

    def where(self) -> tuple[str, str, list]:
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), list(ray.get_gpu_ids())

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def train(self, env: dict, job: TrainJob, study, runs, restart) -> list[dict]:
        os.environ.update(env)
        try:
            return run_job(job, study, runs, restart, "ddp", CPUS_PER_WORKER)
        finally:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _ddp(job, study, runs, np, restart, use_gpu, what) -> list[dict]:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": CPUS_PER_WORKER, **({"GPU": 1} if use_gpu else {})}
    pg = placement_group([bundle] * np, strategy="PACK")
    try:
        if not ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)[0]:
            raise _no_room(np, use_gpu, what)
        cls = ray.remote(max_restarts=0)(_DDPWorker)
        workers = [
            cls.options(
                num_cpus=CPUS_PER_WORKER,
                num_gpus=1 if use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
            ).remote()
            for rank in range(np)
        ]
        places = _gather([w.where.remote() for w in workers], what)
        (port,) = _gather([workers[0].free_port.remote()], what)
        envs = _ddp_envs(places, port)
        return _gather([w.train.remote(env, job, study, runs, restart) for w, env in zip(workers, envs)], what)[0]
    finally:
        remove_placement_group(pg)  # ends the actors placed in it


def _ddp_envs(places: list[tuple[str, str, list]], port: int) -> list[dict]:
    """The torchrun-style environment of each rank, from each actor's (node id, ip, gpu ids)."""
    by_node: dict[str, list[int]] = {}
    for rank, (node, _ip, _gpus) in enumerate(places):
        by_node.setdefault(node, []).append(rank)
    envs = []
    for rank, (node, _ip, gpus) in enumerate(places):
        env = {
            "MASTER_ADDR": places[0][1], "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(len(places)), "LOCAL_RANK": str(by_node[node].index(rank)),
        }
        if gpus:  # device LOCAL_RANK is this worker's GPU
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(places[r][2][0]) for r in by_node[node])
        envs.append(env)
    return envs


def _gather(refs: list, what: str) -> list[Any]:
    """Results of ``refs``; the first failure (in completion order) becomes one RunnerError."""
    import ray

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            _drain(pending)
            dead = isinstance(exc, ray.exceptions.RayActorError)
            raise RunnerError(
                f"{what}: a worker {'died' if dead else 'failed'} ({error_line(exc)}); the other workers were stopped. "
                "The run resumes from its last checkpoint: re-run the same command"
            ) from None
    return ray.get(refs)


def _drain(refs: list, timeout: float = 2.0) -> None:
    """Collect the other workers' errors that come at once (else Ray logs each as unhandled)."""
    import ray

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass


def _no_room(np: int, use_gpu: bool, what: str) -> RunnerError:
    import ray

    free = ray.available_resources()
    need = f"{np} CPU{' and GPU' if use_gpu else ''} slots"
    return RunnerError(
        f"{what}: the cluster did not free {need} within {PLACEMENT_TIMEOUT_S} s (available now: "
        f"{free.get('CPU', 0):g} CPUs, {free.get('GPU', 0):g} GPUs); pass a smaller --np or add nodes"
    )


