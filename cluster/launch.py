"""Start N training workers: locally (``horovodrun`` / ``torchrun``), or on a Ray cluster.

:func:`launch_local` runs ``python -m jetscan.jobs.cli train STUDY --model RUN ...`` in N
processes on this machine; each worker finds its rank in the launcher's environment
(:func:`jetscan.cluster.distributed.make_comm`), reads its own part of the data and
rank 0 writes the checkpoints, so a failed job resumes from its last checkpoint when the
same command is run again. :func:`launch_ray` runs the workers as actors of an existing Ray
cluster instead (:mod:`jetscan.cluster.ray_train`), each running the job it is handed (a
runner never imports a job: ``jetscan train`` passes :func:`jetscan.jobs.train.train_runs`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from jetscan.core.errors import RunnerError

__all__ = ["launch_local", "launch_ray", "launch_command", "LAUNCH_BACKENDS"]

LAUNCH_BACKENDS = ("horovod", "ddp")


def _console_script(name: str) -> str | None:
    """``name`` next to this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).with_name(name)
    if here.exists():
        return str(here)
    return shutil.which(name)


def _check(runs: Sequence[str], np: int, backend: str, where: str) -> None:
    """RunnerError for a bad ``np``, ``backend`` or an empty ``runs``."""
    if not isinstance(np, int) or isinstance(np, bool) or np < 1:
        raise RunnerError(f"np: the number of worker processes must be an integer >= 1 (got {np!r})")
    if backend not in LAUNCH_BACKENDS:
        raise RunnerError(f"backend: must be one of {', '.join(LAUNCH_BACKENDS)} for a {where} launch (got {backend!r})")
    if not runs:
        raise RunnerError("runs: name at least one run to train (--model RUN)")


def launch_command(study_path: str, runs: Sequence[str], np: int, backend: str, *, restart: bool = False) -> list[str]:
    """The command line :func:`launch_local` runs (checks ``np`` and ``backend``)."""
    _check(runs, np, backend, "local")
    job = ["train", str(study_path)]
    for run in runs:
        job += ["--model", run]
    if restart:
        job.append("--restart")
    if backend == "horovod":
        from jetscan.cluster.horovod import import_horovod

        import_horovod()  # RunnerError with the build hint when it is missing
        launcher = _console_script("horovodrun")
        head = [launcher] if launcher else [sys.executable, "-m", "horovod.runner.launch"]
        return head + ["-np", str(np), "--gloo", "-H", f"localhost:{np}", sys.executable, "-m", "jetscan.jobs.cli"] + job
    launcher = _console_script("torchrun")
    head = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
    return head + ["--standalone", "--nproc_per_node", str(np), "-m", "jetscan.jobs.cli"] + job


def launch_local(
    study_path: str,
    runs: list[str],
    np: int,
    backend: str,
    *,
    restart: bool = False,
    env: dict | None = None,
    timeout: float | None = None,
) -> int:
    """Train ``runs`` of the study at ``study_path`` with ``np`` local workers; returns 0.

    ``backend``: ``"horovod"`` (``horovodrun -np N --gloo -H localhost:N``) or ``"ddp"``
    (``torchrun --standalone --nproc_per_node N``). A worker exiting non-zero ends the job
    (the launcher stops the others) with a RunnerError naming the code."""
    cmd = launch_command(study_path, runs, np, backend, restart=restart)
    run_env = dict(os.environ if env is None else env)
    # the launcher sets the ranks: drop any stale ones inherited from an outer launcher
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HOROVOD_RANK", "HOROVOD_SIZE"):
        run_env.pop(key, None)
    try:
        code = subprocess.run(cmd, env=run_env, timeout=timeout, check=False).returncode
    except FileNotFoundError as exc:
        raise RunnerError(f"cannot start {cmd[0]!r}: {exc}") from None
    except subprocess.TimeoutExpired:
        raise RunnerError(
            f"{backend} job of {np} workers ran past {timeout} s and was stopped; "
            "the run resumes from its last checkpoint: re-run the same command"
        ) from None
    if code != 0:
        raise RunnerError(
            f"{backend} job of {np} workers: worker exited with code {code}; "
            "the run resumes from its last checkpoint: re-run the same command"
        )
    return code


def launch_ray(
    study,
    runs: list[str],
    np: int,
    backend: str,
    *,
    address: str,
    job: Callable[..., list] | None = None,
    restart: bool = False,
    min_np: int | None = None,
) -> int:
    """Train ``runs`` of ``study`` with ``np`` workers as actors of the Ray cluster at ``address``; returns 0.

    ``job`` (required; checked after the other arguments): what each worker runs, a top-level
    function ``job(study, runs, restart, backend, on_epoch=None) -> [summary per run]`` such as
    :func:`jetscan.jobs.train.train_runs` (see :mod:`jetscan.cluster.ray_train`).

    ``np``, ``backend`` (``"horovod"``: ``horovod.ray.RayExecutor``; ``"ddp"``: actors that
    set up torch.distributed) and the address are checked first, each with one RunnerError.
    The study's store must be on storage every node of the cluster sees (a shared filesystem
    or an ``s3://`` URL): the workers read their data there and rank 0 writes the checkpoints
    there. A failed worker ends the job with a RunnerError; re-running the same command
    resumes from the last checkpoint. See :mod:`jetscan.cluster.ray_train`.

    ``min_np`` (horovod only): an elastic job (Horovod elastic on Ray) that keeps training
    while at least ``min_np`` of the ``np`` workers are alive, each loss resuming from the
    last checkpoint on the workers left; every world size from ``min_np`` to ``np`` must
    divide ``data.virtual_ranks`` (when it is above 1), and no run may use ``lr_scaling``
    (its batch and learning rate are tied to the world size)."""
    from jetscan.cluster.ray import check_address

    _check(runs, np, backend, "Ray")
    if min_np is not None:
        _check_elastic(study, runs, np, min_np, backend)
    for run in runs:
        study.run(run)  # ConfigError naming an unknown run
    if backend == "horovod":
        from jetscan.cluster.horovod import import_horovod

        import_horovod()  # RunnerError with the build hint when it is missing
        try:
            import horovod.ray  # noqa: F401
        except ImportError as exc:
            raise RunnerError(f"backend 'horovod' on Ray needs horovod.ray, which does not import here ({exc})") from None
    check_address(address)
    if not callable(job):
        raise TypeError(
            f"launch_ray: job must be the function each worker runs, e.g. jetscan.jobs.train.train_runs (got {job!r})"
        )
    if "://" not in study.store and not os.path.isabs(study.store):
        study = study.model_copy(update={"store": os.path.abspath(study.store)})  # the actors' cwd is not ours
    from jetscan.cluster.ray_train import train_on_ray

    train_on_ray(study, list(runs), np, backend, address=address, job=job, restart=restart, min_np=min_np)
    return 0


def _check_elastic(study, runs: Sequence[str], np: int, min_np, backend: str) -> None:
    """RunnerError for a ``min_np`` an elastic job of up to ``np`` workers cannot use."""
    if not isinstance(min_np, int) or isinstance(min_np, bool) or not 1 <= min_np <= np:
        raise RunnerError(f"min_np: the fewest workers of an elastic job must be an integer from 1 to np={np} (got {min_np!r})")
    if backend != "horovod":
        raise RunnerError(f"min_np: elastic training (--min-np) needs the horovod backend (got backend {backend!r})")
    v = int(getattr(study.data, "virtual_ranks", 1) or 1)
    bad = [w for w in range(min_np, np + 1) if v > 1 and v % w]
    if bad:
        raise RunnerError(
            f"min_np: an elastic job may go on with any of {min_np} to {np} workers, but data.virtual_ranks {v} is "
            f"not a multiple of {', '.join(map(str, bad))}; raise --min-np or set data.virtual_ranks to a multiple of "
            f"every size from {min_np} to {np}"
        )
    for run in runs:
        cfg = study.run(run)  # ConfigError naming an unknown run
        if min_np < np and cfg.lr_scaling != "none":
            raise RunnerError(
                f"min_np: run {run!r} has lr_scaling {cfg.lr_scaling!r}, which ties its batch and learning rate to "
                "the number of workers, so it cannot resume on fewer; use lr_scaling 'none' or leave out --min-np"
            )
