"""Local runners: tasks one after another in this process (debugging, tiny runs), or N local
processes at once (:func:`run_processes`, e.g. search workers).

The same call shapes as :mod:`jetscan.cluster.ray`, so a stage switches runner by module.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["run_local", "run_tasks", "run_processes"]


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
) -> list[str]:
    """Start one local process per argv, wait for all, and return one line per process that
    failed (``"worker 1 (pid 123) exited with 1"``, or killed by a signal); empty if all
    succeeded. ``env`` is added to this process's environment. Interrupting the caller
    (Ctrl-C) or sending it SIGTERM (``kill``, ``timeout``) terminates the processes it started
    first, so none is left running on its own."""
    import os
    import signal
    import subprocess
    import threading

    def _terminated(signum, frame):
        raise SystemExit(128 + signum)

    full_env = {**os.environ, **(env or {})}
    handle_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if handle_term else None
    procs: list[subprocess.Popen] = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen(list(argv), env=full_env, cwd=cwd))
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
