"""Ray runner: one actor per worker, each fed one task at a time.

Actors are stateful (each owns, e.g., a Pythia instance), so work goes to whichever actor
is idle; a task costs one actor call (~1 ms), so tasks should be coarse (whole shards).
Local Ray by default; ``address`` joins an existing cluster (``ray start --head`` prints it).
When an actor (or its whole node: a reclaimed spot instance) is lost, its task goes back to
the queue for the other actors, up to ``MAX_LOST_RETRIES`` times, and a fresh actor is started
that takes work once it is up (on a cluster that lost a node, when the autoscaler has added
one). A task that raises, or keeps losing its worker, is reported with its error instead of ending the run, so the committed shards are kept and a
re-run retries only the missing ones. Inside a Ray job (``RAY_ADDRESS`` set) the cluster of
the job is joined.
"""

from __future__ import annotations

import logging
import os
import socket
import time
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

    if not address and os.environ.get("RAY_ADDRESS"):
        # inside a Ray job (jetscan cluster submit) Ray names the cluster to join
        address, num_cpus = os.environ["RAY_ADDRESS"], None
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


MAX_LOST_RETRIES = 3  # a task whose worker dies is re-queued this many times before it counts as failed
NO_WORKER_TIMEOUT_S = 600.0  # work left and no worker able to start for this long: give up


def _drive(
    submit: Callable[[Any, Any], Any], slots: list, tasks: Sequence[Any], on_result, replace_slot, ready=None
) -> list[Any]:
    """Keep every slot busy with one task; collect results in completion order.

    ``submit(slot, task) -> ObjectRef``; ``replace_slot(slot) -> slot`` after a failure (a dead
    actor is swapped for a fresh one). With ``ready(slot) -> ObjectRef``, a fresh slot takes
    work only once that ref resolves (an actor whose node was lost may wait for a new node,
    while the surviving ones drain the queue). A task whose worker was lost goes back to the
    queue; a task that raised is kept as data and reported at the end.
    """
    import ray

    pending: dict[Any, tuple[Any, Any]] = {}
    warming: dict[Any, Any] = {}  # ready ref -> fresh slot
    queue, idle = list(tasks), list(slots)
    results, failures = [], []
    lost: dict[int, int] = {}  # id(task) -> times its worker (or node) was lost
    waited_since, start_failures, start_error = None, 0, None
    while queue or pending:
        while idle and queue:
            slot, task = idle.pop(), queue.pop(0)
            pending[submit(slot, task)] = (slot, task)
        if not pending and not warming:  # every worker failed to start
            raise RunnerError(
                f"no worker could be started ({error_line(start_error) if start_error else 'none left'}); "
                f"{len(queue)} task(s) left, {len(results)} committed and kept"
            )
        if not pending:  # work left, but every worker is still starting (e.g. waiting for a node)
            waited_since = waited_since or time.monotonic()
            if time.monotonic() - waited_since > NO_WORKER_TIMEOUT_S:
                raise RunnerError(
                    f"no worker could be started for {NO_WORKER_TIMEOUT_S:.0f} s ({len(queue)} task(s) left, "
                    f"{len(results)} committed and kept): the cluster lost its nodes; re-run when it has capacity"
                )
        else:
            waited_since = None
        done, _ = ray.wait(list(pending) + list(warming), num_returns=1, timeout=30 if not pending else None)
        if not done:
            continue
        (ref,) = done
        if ref in warming:
            slot = warming.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                start_failures, start_error = start_failures + 1, exc
                if start_failures <= MAX_LOST_RETRIES * max(1, len(slots)):
                    slot = replace_slot(slot)
                    warming[ready(slot)] = slot
            else:
                idle.append(slot)
            continue
        slot, task = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            slot = replace_slot(slot)
            key = id(task)
            if not isinstance(exc, ray.exceptions.RayTaskError) and lost.get(key, 0) < MAX_LOST_RETRIES:
                # the worker or its node died (a spot node reclaimed): the task, a whole shard
                # committed only at its end, goes back to the queue for another worker
                lost[key] = lost.get(key, 0) + 1
                queue.append(task)
            else:
                failures.append((task, exc))
            if ready is not None:
                warming[ready(slot)] = slot
                continue
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
        # no restarts inside Ray: a restarted actor waits for a free CPU with its task queued on
        # it, which never comes when its node is gone; _drive re-queues the task instead
        remote_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(worker_cls)
        actors = [remote_cls.remote(*init_args) for _ in range(min(workers, len(tasks)))]
        everyone = list(actors)

        def replace(actor):
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
            fresh = remote_cls.remote(*init_args)
            everyone.append(fresh)
            return fresh

        try:
            return _drive(
                lambda a, t: getattr(a, method).remote(t), actors, tasks, on_result, replace,
                ready=lambda a: a.__ray_ready__.remote(),
            )
        finally:
            for actor in everyone:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass


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
