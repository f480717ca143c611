"""Dask runner: a client (local cluster, existing scheduler, or Slurm jobs) and a task graph.

The runner is handed the callables to run (it never imports a job). :func:`open_client`
makes the client:

- default: ``distributed.LocalCluster`` of ``workers`` processes, one thread each (torch and
  Pythia hold the GIL in places), bound to 127.0.0.1, no dashboard; each worker runs on its own
  block of this process's CPUs when there are enough for its tasks' threads
  (:func:`jetscan.cluster.local.core_sets`);
- ``scheduler="tcp://host:port"``: an existing scheduler (``dask scheduler`` + ``dask worker``s);
- ``cluster="slurm"``: dask-jobqueue's ``SLURMCluster``, one Slurm job per worker
  (:func:`slurm_job_script` is what ``--dry-run`` prints).

The workers of a cluster made here exit quickly when it closes (:class:`FreezeAtClose`).

With an existing scheduler or Slurm jobs, work starts as soon as one worker is connected (the
others join as their jobs leave the queue); if none comes within ``worker_timeout_s`` (default
an hour, ``--worker-timeout``) :func:`open_client` raises one RunnerError saying where to look.

Versions: dask-jobqueue 0.9.0 (2024) with dask/distributed 2026.8 import and build job
scripts and clusters unchanged (tested in tests/jobs/test_scan.py); pyproject pins the set.

:func:`run_graph` submits :class:`Task`s whose ``deps`` name other tasks (a cell waits for its
variant sample), waits for all, and returns one outcome per task: a task that raises is
reported with its error and traceback, its dependents as skipped, and every other task
still runs. A worker that dies mid-task is replaced (LocalCluster's nanny) and its task
re-run by the scheduler (``distributed.scheduler.allowed-failures``).
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from distributed.diagnostics.plugin import WorkerPlugin

from jetscan.cluster.local import core_sets, pin_threads
from jetscan.core.errors import ConfigError, RunnerError

__all__ = ["Task", "open_client", "check_client_options", "slurm_cluster_kwargs", "slurm_job_script", "run_graph"]


@dataclass
class Task:
    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    deps: tuple[str, ...] = ()


def slurm_cluster_kwargs(
    *, cores: int = 1, memory: str = "4GB", walltime: str = "02:00:00", queue: str | None = None,
    python: str | None = None, job_extra: list[str] | None = None, host: str | None = None, **extra: Any,
) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster``: one process of ``cores`` threads per job
    (``extra``: any other SLURMCluster keyword, e.g. ``log_directory``, ``job_directives_skip``)."""
    kw: dict[str, Any] = dict(
        cores=cores, processes=1, memory=memory, walltime=walltime, job_name="jetscan-scan",
        scheduler_options={"dashboard_address": None, **({"host": host} if host else {})},
        job_extra_directives=list(job_extra or []),
    )
    if queue:
        kw["queue"] = queue
    if python:
        kw["python"] = python
    kw.update({k: v for k, v in extra.items() if v is not None})
    return kw


def slurm_job_script(**kwargs) -> str:
    """The sbatch script one Dask worker job runs (no job is submitted)."""
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(**slurm_cluster_kwargs(**kwargs))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


CLUSTERS = ("slurm",)
#: how long a scan waits for its first worker by default (Slurm jobs may sit in the queue)
WORKER_TIMEOUT_S = 3600.0


def check_client_options(*, workers: int, scheduler: str | None = None, cluster: str | None = None,
                         worker_timeout_s: float = WORKER_TIMEOUT_S) -> None:
    """The client options, checked before any work (one ConfigError naming the option and the fix)."""
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    if scheduler is not None and cluster is not None:
        raise ConfigError("--scheduler and --cluster are exclusive: connect to a running scheduler, or start a cluster")
    if cluster is not None and cluster not in CLUSTERS:
        raise ConfigError(f"--cluster: unknown cluster {cluster!r}; clusters: {', '.join(CLUSTERS)} (default: a local cluster)")
    if not worker_timeout_s > 0:
        raise ConfigError(f"--worker-timeout: must be a positive number of seconds (got {worker_timeout_s})")


def _wait_for_a_worker(client, timeout_s: float, where: str, hint: str) -> None:
    """Start as soon as one worker is there (the others join when they start); one clear error
    if none comes in ``timeout_s``."""
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        raise RunnerError(
            f"{where}: no Dask worker connected within {timeout_s:g} s ({hint}); raise --worker-timeout to wait longer"
        ) from None


@contextlib.contextmanager
def open_client(
    *, workers: int = 1, scheduler: str | None = None, cluster: str | None = None,
    slurm: dict | None = None, timeout_s: float = 120.0, worker_timeout_s: float = WORKER_TIMEOUT_S,
    threads_each: int = 1, pin_cores: bool = True,
) -> Iterator[Any]:
    """A ``distributed.Client``; the cluster it made (if any) is closed on exit. ``timeout_s``:
    connecting to the scheduler; ``worker_timeout_s``: waiting for the first worker of an existing
    scheduler or of Slurm jobs (work starts with one; the rest join as their jobs start).
    ``threads_each``: compute threads of each task (torch's); with ``pin_cores``, a local
    cluster's workers each get their own block of CPUs if there are enough for that many each."""
    from distributed import Client, LocalCluster

    check_client_options(workers=workers, scheduler=scheduler, cluster=cluster, worker_timeout_s=worker_timeout_s)
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout_s)
        except OSError as exc:
            raise RunnerError(f"--scheduler {scheduler}: cannot connect ({exc}); start 'dask scheduler' there, or drop --scheduler") from None
        try:
            _wait_for_a_worker(client, worker_timeout_s, f"--scheduler {scheduler}",
                               "start 'dask worker SCHEDULER' somewhere that reaches it")
            yield client
        finally:
            client.close()
        return
    if cluster == "slurm":
        from dask_jobqueue import SLURMCluster

        made = SLURMCluster(**slurm_cluster_kwargs(**(slurm or {})))
        made.scale(jobs=workers)
    elif cluster is None:
        import dask

        with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(), **_QUIET_WORKERS}):
            made = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=40,
            )
    try:
        client = Client(made, timeout=timeout_s)
        try:
            sets = core_sets(workers, threads_each) if cluster is None and pin_cores else None
            if sets is not None:  # also pins a worker that LocalCluster's nanny starts again
                client.register_plugin(PinToCores(sets))
            client.register_plugin(FreezeAtClose())
            if cluster == "slurm":
                _wait_for_a_worker(client, worker_timeout_s, f"--cluster slurm ({workers} job(s) submitted)",
                                   "the jobs may still be queued, or have failed: see squeue and their logs")
            yield client
        finally:
            client.close()
    finally:
        made.close()


#: a local cluster's workers run long CPU-bound cells and nobody watches a dashboard (none is
#: started): their statistical profiler, which takes the GIL every 10 ms to sample every
#: thread's stack, only slows the cells down. Users who want it set it back in their dask config
#: for a scheduler of their own (--scheduler).
_QUIET_WORKERS = {"distributed.worker.profile.enabled": False}


class PinToCores(WorkerPlugin):
    """Runs every thread of local worker ``i`` (LocalCluster names its workers 0, 1, ...) on
    the CPUs ``sets[i]``; threads started later inherit it."""

    name = "jetscan-pin-cores"

    def __init__(self, sets: list[list[int]]):
        self.sets = sets

    def setup(self, worker) -> None:
        try:
            i = int(worker.name)
        except (TypeError, ValueError):
            return  # not one of a LocalCluster's workers
        pin_threads(self.sets[i % len(self.sets)])


class FreezeAtClose(WorkerPlugin):
    """Moves every object of a closing worker into the garbage collector's permanent generation
    (``gc.freeze``), so the interpreter's final collections skip them as the process exits.

    A worker that has imported torch and the training stack took ~0.9 s to exit, most of it
    those collections (0.2 s frozen): the scan waits for its workers to exit, on every scan.
    Objects are still freed by reference counting; only cyclic garbage is left to the OS,
    which takes the whole process's memory back a moment later anyway."""

    name = "jetscan-freeze-at-close"

    def teardown(self, worker) -> None:
        import gc

        gc.freeze()


def _worker_environ() -> dict:
    """Dask's worker environment without its ``MALLOC_TRIM_THRESHOLD_=65536``.

    Setting that threshold also freezes glibc's mmap threshold at 128 kB, so every array above
    it (a cell's 100k scores, 0.8 MB) comes from fresh mmapped pages and is unmapped again when
    freed: the page faults made the scan's per-cell work 20-60% slower in a worker than in a
    plain process (benchmarks/scan.py). The workers here run short tasks on such arrays and
    exit with the scan, so glibc's own adaptive thresholds serve them better."""
    import dask
    import distributed  # noqa: F401 - loads distributed's configuration defaults

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict, _deps: list) -> Any:
    return fn(*args, **kwargs)


def run_graph(client, tasks: list[Task], *, on_done: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Submit ``tasks`` (dependencies first or not) and wait for every one.

    Returns ``{key: {"status": "ok", "result": ...} | {"status": "error", "error", "traceback"} |
    {"status": "skipped", "error": "needs <key>, which failed"}}``."""
    from distributed import as_completed

    by_key = {t.key: t for t in tasks}
    for t in tasks:
        missing = [d for d in t.deps if d not in by_key]
        if missing:
            raise RunnerError(f"task {t.key!r} depends on unknown task(s) {missing}")
    futures: dict[str, Any] = {}

    def submit(key: str, stack: tuple = ()) -> Any:
        if key in futures:
            return futures[key]
        if key in stack:
            raise RunnerError(f"task graph has a cycle through {key!r}")
        t = by_key[key]
        deps = [submit(d, stack + (key,)) for d in t.deps]
        futures[key] = client.submit(_call, t.fn, t.args, t.kwargs, deps, key=key, pure=False, retries=0)
        return futures[key]

    for t in tasks:
        submit(t.key)
    keys_of = {f.key: k for k, f in futures.items()}
    out: dict[str, dict] = {}
    for fut in as_completed(list(futures.values())):
        key = keys_of[fut.key]
        if fut.status == "finished":
            out[key] = {"status": "ok", "result": fut.result()}
        else:
            failed = [d for d in by_key[key].deps if futures[d].status != "finished"]
            if failed:
                out[key] = {"status": "skipped", "error": f"needs {failed[0]}, which failed"}
            else:
                exc = fut.exception()
                tb = fut.traceback()
                out[key] = {
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": "".join(traceback.format_tb(tb)) if tb is not None else "",
                }
        if on_done is not None:
            on_done(key, out[key])
    return out
