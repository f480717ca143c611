"""Which device this process trains and evaluates on: one GPU per local rank.

On a node with several GPUs every worker of a data-parallel job must use its own GPU; a
worker that asks for plain ``cuda`` gets GPU 0, so all ranks of the node would share it.
This module is the one place that picks the GPU, from the launcher's *local rank* (the
worker's index among the workers of its node):

- Horovod: ``hvd.local_rank()`` / ``hvd.local_size()`` after ``hvd.init()`` (passed in by
  :class:`jetscan.cluster.horovod.HorovodComm`), else ``HOROVOD_LOCAL_RANK`` /
  ``HOROVOD_LOCAL_SIZE`` (horovodrun; :func:`jetscan.cluster.slurm.horovod_env` under srun);
- torchrun: ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE`` (also set for Ray DDP actors by
  :mod:`jetscan.cluster.ray_train` and for srun tasks by :func:`jetscan.cluster.slurm.ddp_env`);
- Slurm's srun: ``SLURM_LOCALID``, with the node's task count from
  ``SLURM_STEP_TASKS_PER_NODE`` (and ``SLURM_NODEID``);
- none of these: local rank 0 of 1 (one process).

Local rank ``i`` trains on ``cuda:i`` of the GPUs this process sees (``CUDA_VISIBLE_DEVICES``
order), so a node needs at least as many visible GPUs as local ranks; fewer is one
RunnerError naming both counts and the fix.

A worker that was *given its own GPUs* by its launcher uses the first of them, whatever its
local rank:

- a Ray actor with ``num_gpus`` (``ray.get_gpu_ids()``): Ray sets ``CUDA_VISIBLE_DEVICES`` to
  the actor's GPUs, or a launcher on top of Ray lists the GPUs of all the node's workers there
  (Horovod's ``RayExecutor`` on one host, the DDP actors of :mod:`jetscan.cluster.ray_train`);
  the device is the position of the actor's own GPU in that list (its id itself where Ray
  leaves ``CUDA_VISIBLE_DEVICES`` unset, ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``);
- an srun task of a step with ``--gpus-per-task`` (``SLURM_GPUS_PER_TASK``): Slurm binds
  each task to its own GPUs (``CUDA_VISIBLE_DEVICES`` lists only them), so ``cuda:0``.

:func:`choose_device` is the pure rule (an environment mapping, a visible-GPU count and the
Ray GPU ids in; a ``torch.device`` out), unit-tested on each launcher's environment;
:func:`use_device` applies it in this process and calls ``torch.cuda.set_device``.
``train.device`` (:class:`jetscan.core.study.TrainSettings`) is ``auto`` (CUDA when visible,
else CPU), ``cuda`` (an error without CUDA) or ``cpu``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from jetscan.core.errors import ConfigError, RunnerError

__all__ = ["LocalRank", "local_rank", "choose_device", "use_device", "wants_cuda", "visible_gpus", "ray_gpu_ids",
           "cpu_has_bf16", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class LocalRank:
    """This worker's index among the workers of its node, and who said so."""

    rank: int = 0
    size: int | None = 1  #: workers on this node; None where the launcher does not say
    source: str = "one process"  #: the variable(s) it came from, for messages


def _int(env: Mapping, key: str) -> int | None:
    value = env.get(key)
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise RunnerError(f"{key}={value!r}: the launcher's local rank must be an integer") from None


def _slurm_local_size(env: Mapping) -> int | None:
    """Tasks of this srun step on this node (SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID)."""
    from jetscan.cluster.slurm import expand_tasks_per_node

    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    try:
        tasks = expand_tasks_per_node(spec)
    except RunnerError:
        return None
    node = _int(env, "SLURM_NODEID")
    if node is not None and 0 <= node < len(tasks):
        return tasks[node]
    return tasks[0] if tasks and len(set(tasks)) == 1 else None


def local_rank(environ: Mapping | None = None, *, horovod: tuple[int, int] | None = None) -> LocalRank:
    """This process's :class:`LocalRank` from the launcher's environment.

    ``horovod``: ``(hvd.local_rank(), hvd.local_size())`` after ``hvd.init()``, which wins.
    Then horovodrun's, torchrun's and Slurm's variables, in that order (a launcher started
    inside a Slurm task sets its own)."""
    env = os.environ if environ is None else environ
    if horovod is not None:
        rank, size = (int(v) for v in horovod)
        return _checked(LocalRank(rank, size, "Horovod's local_rank()"))
    for rank_key, size_key, who in (
        ("HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE", "horovodrun"),
        ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "torchrun"),
    ):
        rank = _int(env, rank_key)
        if rank is not None:
            return _checked(LocalRank(rank, _int(env, size_key), f"{rank_key} ({who})"))
    rank = _int(env, "SLURM_LOCALID")
    if rank is not None:
        return _checked(LocalRank(rank, _slurm_local_size(env), "SLURM_LOCALID (srun)"))
    return LocalRank()


def _checked(local: LocalRank) -> LocalRank:
    if local.rank < 0 or (local.size is not None and not local.rank < local.size):
        size = "" if local.size is None else f" of {local.size}"
        raise RunnerError(f"local rank {local.rank}{size} from {local.source}: need 0 <= local rank < local size")
    return local


def wants_cuda(choice: str, cuda_available: bool | None = None) -> bool:
    """True when ``train.device`` ``choice`` means training on CUDA here."""
    if choice not in DEVICES:
        raise ConfigError(f"train.device: must be one of {', '.join(DEVICES)} (got {choice!r})")
    if choice == "cpu":
        return False
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    return choice == "cuda" or available


def cpu_has_bf16(capabilities: Mapping[str, object] | None = None) -> bool:
    """Whether this CPU has bfloat16 units (AVX512-BF16 or AMX-BF16), where torch's bfloat16
    autocast runs faster than float32; ``capabilities`` defaults to ``torch.cpu.get_capabilities()``."""
    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _visible_list(env: Mapping) -> list[str] | None:
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def choose_device(
    choice: str,
    *,
    environ: Mapping | None = None,
    visible: int,
    ray_gpus: Sequence = (),
    horovod: tuple[int, int] | None = None,
) -> torch.device:
    """The device for ``train.device`` ``choice`` in this environment (the rule; nothing is set).

    ``visible``: how many GPUs this process sees (``torch.cuda.device_count()``; 0 without
    CUDA); ``ray_gpus``: the GPU ids Ray assigned to this actor (``ray.get_gpu_ids()``), empty
    outside one; ``horovod``: ``(hvd.local_rank(), hvd.local_size())``, if initialised.

    ``cpu`` is the CPU; ``cuda`` without a visible GPU is a ConfigError; ``auto`` is CUDA
    when a GPU is visible, else the CPU. On CUDA: ``cuda:<local rank>``, or the position of
    this worker's own GPU where its launcher gave it one (module docstring); fewer visible
    GPUs than local ranks is a RunnerError."""
    env = os.environ if environ is None else environ
    if not wants_cuda(choice, visible > 0):
        return torch.device("cpu")
    if visible < 1:
        raise ConfigError("train.device: 'cuda' asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    own = _own_gpu(env, visible, ray_gpus)
    if own is not None:
        return torch.device("cuda", own)
    local = local_rank(env, horovod=horovod)
    need = max(local.rank + 1, local.size or 0)
    if need > visible:
        ranks = f"{local.size} local ranks" if local.size is not None else f"local rank {local.rank}"
        listed = env.get("CUDA_VISIBLE_DEVICES")
        seen = f"CUDA_VISIBLE_DEVICES={listed!r}" if listed is not None else "CUDA_VISIBLE_DEVICES not set"
        raise RunnerError(
            f"{ranks} ({local.source}) but {visible} visible GPU{'s' if visible != 1 else ''} on this node "
            f"({seen}): each worker needs its own GPU; start one worker per GPU (--np {visible}) "
            "or set CUDA_VISIBLE_DEVICES to list one GPU per worker, or train on the CPU (train.device: cpu)"
        )
    return torch.device("cuda", local.rank)


def _own_gpu(env: Mapping, visible: int, ray_gpus: Sequence) -> int | None:
    """Index of the GPU the launcher gave this worker, or None where the local rank decides."""
    listed = _visible_list(env)
    if ray_gpus:
        ids = [str(g) for g in ray_gpus]
        if listed is None:  # Ray left CUDA_VISIBLE_DEVICES alone: the ids are the node's indices
            index = min(int(g) for g in ids) if all(g.isdigit() for g in ids) else None
            if index is not None and index < visible:
                return index
        else:
            positions = [listed.index(g) for g in ids if g in listed]
            if positions and min(positions) < visible:
                return min(positions)
        raise RunnerError(
            f"this Ray actor was given GPU(s) {', '.join(ids)}, which are not among the {visible} GPU(s) it sees "
            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}); do not change CUDA_VISIBLE_DEVICES inside "
            "Ray actors other than to list the node's workers' GPUs"
        )
    if _int(env, "SLURM_GPUS_PER_TASK") and _int(env, "SLURM_LOCALID") is not None:
        return 0  # srun --gpus-per-task binds each task to its own GPUs
    return None


def visible_gpus() -> int:
    """GPUs this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ray_gpu_ids() -> list:
    """The GPU ids Ray assigned to this process (a Ray actor or task with ``num_gpus``), else []."""
    ray = sys.modules.get("ray")  # a process that never imported Ray is not a Ray worker
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return []
    try:
        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - a driver, or a disconnected worker: no GPUs of its own
        return []


def use_device(choice: str, *, horovod: tuple[int, int] | None = None, environ: Mapping | None = None) -> torch.device:
    """:func:`choose_device` for this process, made current (``torch.cuda.set_device``) on CUDA."""
    device = choose_device(choice, environ=environ, visible=visible_gpus(), ray_gpus=ray_gpu_ids(), horovod=horovod)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
