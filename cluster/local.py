"""Local runners: tasks one after another in this process (debugging, tiny runs), or N local
processes at once (:func:`run_processes`, e.g. search workers).

The same call shapes as :mod:`jetscan.cluster.ray`, so a stage switches runner by module.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Sequence

__all__ = ["run_local", "run_tasks", "run_processes", "core_sets", "usable_cpus", "pin_threads"]


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity: a Slurm allocation, ``taskset``), sorted."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_threads(cpus) -> None:
    """Run every thread of this process on ``cpus`` (``os.sched_setaffinity(0, ...)`` sets only the
    calling thread's); threads started later inherit their starter's."""
    import os

    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, set(cpus))
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile


def core_sets(workers: int, threads: int, cpus: Sequence[int] | None = None) -> list[list[int]] | None:
    """Disjoint blocks of the usable CPUs (``cpus``, default :func:`usable_cpus`), one per worker,
    as equal as they divide (neighbouring CPU numbers together, like Slurm's block
    distribution), for pinning ``workers`` processes of ``threads`` compute threads each; None
    when there is one worker, or too few CPUs for a block of ``threads`` each (then the OS
    schedules them). On this project's 2-vCPU machine pinned search workers' trial spans were
    7-12% shorter than unpinned ones' in 6 of 7 paired rounds, and a scan's cells 1-20% faster in 7
    of 8 (benchmarks/search.py, scan.py): wake-ups across vCPUs are expensive on a VM."""
    cpus = list(usable_cpus() if cpus is None else cpus)
    if workers < 2 or threads < 1 or len(cpus) < workers * threads:
        return None
    base, extra = divmod(len(cpus), workers)
    sets, start = [], 0
    for i in range(workers):
        size = base + (i < extra)
        sets.append(cpus[start:start + size])
        start += size
    return sets


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Run ``fn(task)`` for every task in this process, in order."""
    results = []
    for task in tasks:
        result = fn(task)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def run_local(
    worker_cls: type,
    init_args: tuple,
    method: str,
    tasks: Sequence[Any],
    *,
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Run ``worker_cls(*init_args).<method>(task)`` for every task on one worker in this process."""
    return run_tasks(getattr(worker_cls(*init_args), method), tasks, on_result=on_result)


def run_processes(
    argvs: Sequence[Sequence[str]],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    cpus: Sequence[Collection[int]] | None = None,
) -> list[str]:
    """Start one local process per argv, wait for all, and return one line per process that
    failed (``"worker 1 (pid 123) exited with 1"``, or killed by a signal); empty if all
    succeeded. ``env`` is added to this process's environment; ``cpus``: process i runs only on
    the CPUs ``cpus[i]`` (its affinity, set before it starts; see :func:`core_sets`). Interrupting the caller
    (Ctrl-C) or sending it SIGTERM (``kill``, ``timeout``) terminates the processes it started
    first, so none is left running on its own."""
    import os
    import signal
    import subprocess
    import threading
    from functools import partial

    if cpus is not None and len(cpus) != len(argvs):
        raise ValueError(f"cpus: {len(cpus)} CPU sets for {len(argvs)} processes")

    def _terminated(signum, frame):
        raise SystemExit(128 + signum)

    full_env = {**os.environ, **(env or {})}
    handle_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if handle_term else None
    procs: list[subprocess.Popen] = []
    try:
        for i, argv in enumerate(argvs):
            pin = partial(os.sched_setaffinity, 0, set(cpus[i])) if cpus is not None else None
            procs.append(subprocess.Popen(list(argv), env=full_env, cwd=cwd, preexec_fn=pin))
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        if handle_term:
            signal.signal(signal.SIGTERM, previous)
    failed = []
    for i, (p, code) in enumerate(zip(procs, codes)):
        if code < 0:
            failed.append(f"worker {i} (pid {p.pid}) was killed by signal {signal.Signals(-code).name}")
        elif code:
            failed.append(f"worker {i} (pid {p.pid}) exited with {code}")
    return failed
