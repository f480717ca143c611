"""Runners: the same worker object driven in-process (local) or on Ray actors."""

from jetscan.cluster.local import run_local

__all__ = ["run_local", "run_actors"]


def __getattr__(name: str):
    if name == "run_actors":  # importing Ray is slow: only on use
        from jetscan.cluster.ray import run_actors

        return run_actors
    raise AttributeError(name)
