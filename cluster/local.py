"""In-process runner: one worker object, tasks one after another (debugging, tiny runs)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["run_local"]


def run_local(
    worker_cls: type,
    init_args: tuple,
    method: str,
    tasks: Sequence[Any],
    *,
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Run ``worker_cls(*init_args).<method>(task)`` for every task in this process."""
    worker = worker_cls(*init_args)
    results = []
    for task in tasks:
        result = getattr(worker, method)(task)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
