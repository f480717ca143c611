"""Who am I in a data-parallel job, and how do ranks agree: one small interface.

The training loop (``jetscan.jobs.train``) talks to a :class:`Comm` only: its rank and
size, ``allreduce_mean`` for metrics, ``broadcast`` of the initial state from rank 0, and
``wrap_optimizer`` for gradient averaging. :class:`SingleProcess` is the size-1 case (a
laptop CPU run goes through exactly the same code); :mod:`jetscan.cluster.horovod`
(``HorovodComm``) and :mod:`jetscan.cluster.ddp` (``DDPComm``, torch.distributed) plug in
behind the same interface; :func:`make_comm` picks one, and :mod:`jetscan.cluster.launch`
starts N local workers.

Rank and size come from the launcher's environment: torchrun (``RANK``/``WORLD_SIZE``),
Horovod (``HOROVOD_RANK``/``HOROVOD_SIZE``), Open MPI (``OMPI_COMM_WORLD_RANK``/``..._SIZE``)
or Slurm's srun (``SLURM_PROCID``/``SLURM_NTASKS``); none set means one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jetscan.core.errors import RunnerError

__all__ = ["world_from_env", "Comm", "SingleProcess", "make_comm", "pick_backend", "BACKENDS"]

_ENV_PAIRS = (
    ("RANK", "WORLD_SIZE"),
    ("HOROVOD_RANK", "HOROVOD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
)


def world_from_env(environ: dict | None = None) -> tuple[int, int]:
    """(rank, world_size) from the first launcher whose variables are set."""
    env = os.environ if environ is None else environ
    for rank_key, size_key in _ENV_PAIRS:
        if rank_key in env and size_key in env:
            rank, size = int(env[rank_key]), int(env[size_key])
            if size < 1 or not 0 <= rank < size:
                raise RunnerError(f"{rank_key}={rank} / {size_key}={size}: need 0 <= rank < size")
            return rank, size
    return 0, 1


@dataclass
class Comm:
    """The collective operations the training loop needs."""

    rank: int = 0
    size: int = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_mean(self, value: float) -> float:
        return value

    def broadcast_state(self, module, optimizer=None) -> None:
        return None

    def wrap_optimizer(self, optimizer, module):
        return optimizer

    def barrier(self) -> None:
        return None


class SingleProcess(Comm):
    """One process: every collective is the identity."""


BACKENDS = ("auto", "horovod", "ddp", "single")


def pick_backend(backend: str = "auto", environ: dict | None = None) -> str:
    """``"horovod"``, ``"ddp"`` or ``"single"`` for ``backend`` in this environment.

    ``"auto"``: horovod where ``HOROVOD_RANK`` is set (horovodrun), ddp where torchrun's
    ``RANK``/``WORLD_SIZE`` are, otherwise one process."""
    env = os.environ if environ is None else environ
    if backend not in BACKENDS:
        raise RunnerError(f"backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if backend != "auto":
        return backend
    if "HOROVOD_RANK" in env:
        return "horovod"
    if "RANK" in env and "WORLD_SIZE" in env:
        return "ddp"
    rank, size = world_from_env(env)
    if size > 1:
        raise RunnerError(
            f"this process is rank {rank} of {size} (set by an MPI / Slurm launcher), but backend 'auto' finds "
            "neither horovodrun's HOROVOD_RANK nor torchrun's RANK/WORLD_SIZE; launch with horovodrun or torchrun, "
            "or pass backend 'horovod'"
        )
    return "single"


def make_comm(backend: str = "auto") -> Comm:
    """The communicator for this process: ``backend`` is ``"auto"`` (from the launcher's
    environment, size 1 when none), ``"horovod"`` (:class:`jetscan.cluster.horovod.HorovodComm`),
    ``"ddp"`` (:class:`jetscan.cluster.ddp.DDPComm`, torch.distributed) or ``"single"``."""
    chosen = pick_backend(backend)
    if chosen == "horovod":
        from jetscan.cluster.horovod import HorovodComm

        return HorovodComm()
    if chosen == "ddp":
        from jetscan.cluster.ddp import DDPComm

        return DDPComm()
    return SingleProcess()
