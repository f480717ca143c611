"""In-process runners: tasks one after another in this process (debugging, tiny runs).

The same call shapes as :mod:`jetscan.cluster.ray`, so a stage switches runner by module.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["run_local", "run_tasks"]


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
