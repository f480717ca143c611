"""Ray runner: one actor per worker, each fed one task at a time.

Actors are stateful (each owns, e.g., a Pythia instance), so work goes to whichever actor
is idle; a task costs one actor call (~1 ms), so tasks should be coarse (whole shards).
Local Ray by default; ``address`` joins an existing cluster (``ray start --head`` prints it).
A killed actor is restarted by Ray and its task retried once; a task that still fails is
reported with its error instead of ending the run, so the committed shards are kept and a
re-run retries only the missing ones.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import Any, Callable, Sequence

from jetscan.core.errors import RunnerError, StorageError

__all__ = ["run_actors", "run_tasks", "ensure_ray", "check_address", "error_line"]


def check_address(address: str) -> None:
    """Fail fast, with a clear message, when a Ray head is not reachable."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RunnerError(
            f"--address {address!r}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379) or 'auto'"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise RunnerError(
            f"--address {address!r}: cannot reach a Ray head there ({exc.strerror or exc}); "
            "start one with 'ray start --head' and pass the address it prints, or omit --address "
            "to run on a local Ray instance"
        ) from None


def ensure_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start (or join) Ray unless it is already up; returns True if this call started it.

    A RunnerError when ``address`` names another cluster than the one this process is joined
    to, or when joining fails (with a hint when the cluster wants token authentication)."""
    import ray

    if ray.is_initialized():
        joined = ray.get_runtime_context().gcs_address
        if address and address != "auto" and joined.rpartition(":")[2] != address.rpartition(":")[2]:
            raise RunnerError(
                f"--address {address!r}: this process is already connected to the Ray cluster at {joined}; "
                "call ray.shutdown() first, or pass that address"
            )
        return False
    if address:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except Exception as exc:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, ...
            raise RunnerError(f"--address {address!r}: cannot join the Ray cluster there ({error_line(exc)}){_auth_hint(exc)}") from None
    else:
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        # Quiet logs: Ray's INFO lines ("Started a local Ray instance.") are left out; its
        # warnings and errors, and everything the workers print (log_to_driver), still show.
        with _without_token_auth_notice():
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    return True


_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_AUTH_NOTICE)


@contextmanager
def _without_token_auth_notice():
    """Drop the one notice a new local Ray instance logs on every run ("Token authentication
    is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."): it reports
    Ray's default, not a problem, and the protection stays on. Only that message is filtered,
    only during this ray.init; every other record of that logger (e.g. auth being *disabled*)
    passes. Setting RAY_AUTH_MODE=token instead would also silence it, but only when set
    before Ray is first imported (Ray caches its config at import), so it is not done here.
    """
    logger, notice = logging.getLogger(_TOKEN_AUTH_LOGGER), _DropTokenAuthNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


@contextmanager
def _session(address: str | None, workers: int):
    """Ray up for the duration (joined, or started and then shut down)."""
    import ray

    if workers < 1:
        raise RunnerError(f"workers must be at least 1 (got {workers})")
    started = ensure_ray(address, None if address else max(workers, os.cpu_count() or 1))
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _drive(submit: Callable[[Any, Any], Any], slots: list, tasks: Sequence[Any], on_result, replace_slot) -> list[Any]:
    """Keep every slot busy with one task; collect results in completion order.

    ``submit(slot, task) -> ObjectRef``; ``replace_slot(slot) -> slot`` after a failure (a dead
    actor is swapped for a fresh one). A failed task is kept as data and reported at the end.
    """
    import ray

    pending: dict[Any, tuple[Any, Any]] = {}
    queue, idle = list(tasks), list(slots)
    results, failures = [], []
    while queue or pending:
        while idle and queue:
            slot, task = idle.pop(), queue.pop(0)
            pending[submit(slot, task)] = (slot, task)
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        slot, task = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            failures.append((task, exc))
            slot = replace_slot(slot)
        else:
            results.append(result)
            if on_result is not None:
                on_result(result)
        idle.append(slot)
    if failures:
        lines = "\n".join(f"  {task}: {error_line(exc)}" for task, exc in failures[:10])
        damaged = [exc.cause for _, exc in failures if isinstance(getattr(exc, "cause", None), StorageError)]
        if damaged:  # bad data fails the same way on every retry: say so, with the error's own fix
            raise StorageError(
                f"{len(failures)} of {len(tasks)} tasks failed ({len(results)} committed and kept):\n{lines}"
            )
        raise RunnerError(
            f"{len(failures)} of {len(tasks)} tasks failed ({len(results)} committed and kept; "
            f"re-run the same command to retry the rest):\n{lines}"
        )
    return results


def run_actors(
    worker_cls: type,
    init_args: tuple,
    method: str,
    tasks: Sequence[Any],
    *,
    workers: int | None = None,
    address: str | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Run ``worker_cls(*init_args).<method>(task)`` for every task on ``workers`` Ray actors
    (default: one per core of this machine)."""
    workers = workers or os.cpu_count() or 1
    with _session(address, workers) as ray:
        remote_cls = ray.remote(num_cpus=1, max_restarts=1, max_task_retries=1)(worker_cls)
        actors = [remote_cls.remote(*init_args) for _ in range(min(workers, len(tasks)))]

        def replace(actor):
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
            return remote_cls.remote(*init_args)

        try:
            return _drive(lambda a, t: getattr(a, method).remote(t), actors, tasks, on_result, replace)
        finally:
            for actor in actors:
                ray.kill(actor)


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    workers: int | None = None,
    address: str | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """Run ``fn(task)`` as one stateless Ray task per item, ``workers`` at a time (default: one per
    core; retried once)."""
    workers = workers or os.cpu_count() or 1
    with _session(address, workers) as ray:
        remote_fn = ray.remote(num_cpus=1, max_retries=1)(fn)
        slots = list(range(min(workers, len(tasks))))
        return _drive(lambda _s, t: remote_fn.remote(t), slots, tasks, on_result, lambda s: s)


def error_line(exc: BaseException) -> str:
    """The root cause of a (Ray) error in one line: its type and the last line of its text."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def _auth_hint(exc: BaseException) -> str:
    """A hint when joining failed on the cluster's token authentication, else ''."""
    e = exc
    while e is not None:
        if "Authentication" in type(e).__name__:
            return (
                "; the cluster uses token authentication (a token in ~/.ray/auth_token when it started): "
                "set RAY_AUTH_MODE=token and make its token available here (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            )
        e = e.__cause__
    return ""
