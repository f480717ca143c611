"""Runners: the same worker object driven in-process (local) or on Ray actors and tasks."""

from jetscan.cluster.local import run_local

__all__ = ["run_local", "run_actors", "run_tasks"]


def __getattr__(name: str):
    if name in ("run_actors", "run_tasks"):  # importing Ray is slow: only on use
        from jetscan.cluster import ray as _ray

        return getattr(_ray, name)
    raise AttributeError(name)
