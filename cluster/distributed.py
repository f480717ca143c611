"""Who am I in a data-parallel job, and how do ranks agree: one small interface.

The training loop (``jetscan.jobs.train``) talks to a :class:`Comm` only: its rank and
size, ``allreduce_mean`` for metrics, ``broadcast_state`` of the initial state from rank 0,
``wrap_module`` and ``wrap_optimizer`` for gradient averaging (torch's
``DistributedDataParallel`` wraps the module for ``ddp``; Horovod's ``DistributedOptimizer``
wraps the optimizer; the one-process comm returns both unchanged), and ``use_device`` for this
worker's own GPU (:mod:`jetscan.cluster.devices`). :class:`SingleProcess` is the size-1 case (a
laptop CPU run goes through exactly the same code); :mod:`jetscan.cluster.horovod`
(``HorovodComm``) and :mod:`jetscan.cluster.ddp` (``DDPComm``, torch.distributed) plug in
behind the same interface; :func:`make_comm` picks one, and :mod:`jetscan.cluster.launch`
starts N local workers.

Rank and size come from the launcher's environment: torchrun (``RANK``/``WORLD_SIZE``),
Horovod (``HOROVOD_RANK``/``HOROVOD_SIZE``), Open MPI (``OMPI_COMM_WORLD_RANK``/``..._SIZE``)
or Slurm's srun (``SLURM_PROCID``/``SLURM_NTASKS``); none set means one process.

Under ``srun`` (a step of more than one task, :func:`jetscan.cluster.slurm.srun_step`; not an
``sbatch`` batch script) each task is a worker: :func:`make_comm` first sets up the rendezvous
from the Slurm environment (:func:`jetscan.cluster.slurm.setup`), then initialises Horovod or
torch.distributed as under horovodrun / torchrun. horovodrun's or torchrun's own variables, when
present, take precedence (a launcher started inside a Slurm task).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jetscan.core.errors import RunnerError

__all__ = ["inside_launcher", "world_from_env", "Comm", "SingleProcess", "make_comm", "pick_backend", "BACKENDS"]

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


def _launcher_env(env) -> str | None:
    """``"horovod"`` under horovodrun, ``"ddp"`` under torchrun, else None."""
    if "HOROVOD_RANK" in env:
        return "horovod"
    if "RANK" in env and "WORLD_SIZE" in env:
        return "ddp"
    return None


def _srun_workers(env) -> bool:
    """True in a task of an srun step of more than one task (one worker of several); a batch
    script's process (``sbatch``) and a one-task step are not."""
    from jetscan.cluster.slurm import srun_step

    step = srun_step(env)
    return step is not None and step.size > 1


def inside_launcher(environ: dict | None = None) -> bool:
    """True in a worker process started by a launcher (horovodrun, torchrun, Ray, Slurm's srun).

    Slurm: only a task of an srun step of 2 tasks or more; the process running an ``sbatch``
    script has ``SLURM_PROCID``/``SLURM_NTASKS`` too, but no step (``SLURM_STEP_ID``), and is not
    a worker (it may start them: ``srun python -m jetscan.jobs.cli train ...``)."""
    env = os.environ if environ is None else environ
    return _launcher_env(env) is not None or _srun_workers(env)


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
        """The optimizer the loop steps (Horovod: one that averages the gradients)."""
        return optimizer

    def wrap_module(self, module):
        """What the loop calls for the training forward pass (ddp: ``DistributedDataParallel``,
        whose backward averages the gradients); loss, state_dict and checkpoints use ``module``."""
        return module

    def use_device(self, choice: str):
        """This worker's ``torch.device`` for ``train.device`` ``choice``, made current on CUDA
        (:func:`jetscan.cluster.devices.use_device`: one GPU per local rank)."""
        from jetscan.cluster.devices import use_device

        return use_device(choice)

    def barrier(self) -> None:
        return None


class SingleProcess(Comm):
    """One process: every collective is the identity."""


BACKENDS = ("auto", "horovod", "ddp", "single")


def pick_backend(backend: str = "auto", environ: dict | None = None) -> str:
    """``"horovod"``, ``"ddp"`` or ``"single"`` for ``backend`` in this environment.

    ``"auto"``: horovod where ``HOROVOD_RANK`` is set (horovodrun), ddp where torchrun's
    ``RANK``/``WORLD_SIZE`` are; in an srun step of several tasks horovod when ``horovod.torch``
    imports, else ddp (torch.distributed is always there); otherwise one process. A rank of
    several set by MPI alone, or by Slurm outside an srun step (a batch script), is an error."""
    env = os.environ if environ is None else environ
    if backend not in BACKENDS:
        raise RunnerError(f"backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if backend != "auto":
        return backend
    launched = _launcher_env(env)
    if launched is not None:
        return launched
    if _srun_workers(env):
        return "horovod" if _horovod_available() else "ddp"
    rank, size = world_from_env(env)
    if size > 1:
        if "SLURM_PROCID" in env and not any(k in env for k in ("OMPI_COMM_WORLD_RANK", "PMI_RANK")):
            raise RunnerError(
                f"this process is rank {rank} of {size} by SLURM_PROCID/SLURM_NTASKS, but it is not in an srun step "
                "(no SLURM_STEP_ID: a Slurm batch script, or an salloc shell), and backend 'auto' finds neither "
                "horovodrun's HOROVOD_RANK nor torchrun's RANK/WORLD_SIZE; start the workers with "
                "`srun python -m jetscan.jobs.cli train STUDY.yaml ...` (or `--np N` for local workers)"
            )
        raise RunnerError(
            f"this process is rank {rank} of {size} (set by an MPI launcher), but backend 'auto' finds "
            "neither horovodrun's HOROVOD_RANK nor torchrun's RANK/WORLD_SIZE nor a Slurm srun step; launch with "
            "horovodrun, torchrun or srun, or pass backend 'horovod'"
        )
    return "single"


def _horovod_available() -> bool:
    """True when ``horovod.torch`` imports (a Horovod build for this torch)."""
    import importlib

    try:
        importlib.import_module("horovod.torch")
    except (ImportError, OSError):
        return False
    return True


def make_comm(backend: str = "auto", *, cuda: bool | None = None) -> Comm:
    """The communicator for this process: ``backend`` is ``"auto"`` (from the launcher's
    environment, size 1 when none), ``"horovod"`` (:class:`jetscan.cluster.horovod.HorovodComm`),
    ``"ddp"`` (:class:`jetscan.cluster.ddp.DDPComm`, torch.distributed) or ``"single"``.
    ``cuda``: whether this worker trains on CUDA (ddp: NCCL on this worker's GPU, else gloo;
    default: CUDA when it is available).

    In a task of an srun step (several tasks, no horovodrun / torchrun inside it) the
    rendezvous is first set up from the Slurm environment (:func:`jetscan.cluster.slurm.setup`)."""
    chosen = pick_backend(backend)
    if chosen == "single":
        return SingleProcess()
    if chosen == "horovod":
        from jetscan.cluster.horovod import HorovodComm, import_horovod

        import_horovod()  # the build hint, before any Slurm setup
    if _launcher_env(os.environ) is None and _srun_workers(os.environ):
        from jetscan.cluster.slurm import setup

        setup(chosen)  # srun: the rendezvous horovodrun / torchrun would have set up
    if chosen == "horovod":
        return HorovodComm()
    from jetscan.cluster.ddp import DDPComm

    return DDPComm(cuda=cuda)
