"""torch.distributed behind the :class:`~jetscan.cluster.distributed.Comm` interface.

Launched by ``torchrun --nproc_per_node N ...`` (or any launcher that sets ``MASTER_ADDR``,
``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``: :mod:`jetscan.cluster.ray_train`'s actors,
:mod:`jetscan.cluster.slurm`'s srun tasks): the process group is initialised from the
environment, NCCL when the worker trains on CUDA (on its own GPU, chosen by
:mod:`jetscan.cluster.devices` before the group is made), gloo on the CPU.

Gradients are averaged by torch's ``DistributedDataParallel`` (Li et al., "PyTorch
Distributed", VLDB 2020, arXiv:2006.15704): :meth:`DDPComm.wrap_module` wraps the model, and
the backward pass all-reduces the gradients in buckets while it is still computing the
earlier layers' gradients. The optimizer is the plain one. DDP averages (sums, divided by the
world size), so with every rank taking the mean loss over its equal share of the global batch
the step is the one-process step on the global batch's mean loss.

The wrapped module (:class:`DDPModule`) is only for the training forward passes; the
``state_dict``, checkpoints and the no-gradient passes (validation, evaluation) use the inner
module. The mass-decorrelated autoencoder wraps both of its modules: in the autoencoder's
step of :func:`jetscan.core.models.adversarial.adversarial_step` the adversary's parameters
are frozen, no gradient reaches them, and DDP reduces nothing for it (checked in
``tests/cluster/test_devices.py``); the adversary's own step reduces its gradients.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from jetscan.cluster.distributed import Comm
from jetscan.core.errors import RunnerError

__all__ = ["DDPComm", "DDPModule"]


class DDPComm(Comm):
    """One torch.distributed process (the process group is created if needed).

    ``cuda``: whether this worker trains on CUDA (default: CUDA is available); then the
    group uses NCCL on this worker's GPU (``backend`` overrides), else gloo."""

    def __init__(self, backend: str | None = None, *, cuda: bool | None = None):
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
        if not dist.is_initialized() and missing:
            raise RunnerError(
                f"backend 'ddp' needs {', '.join(missing)} in the environment: launch with "
                "`torchrun --nproc_per_node N -m jetscan.jobs.cli train ...`"
            )
        cuda = torch.cuda.is_available() if cuda is None else cuda
        if not dist.is_initialized():
            backend = backend or ("nccl" if cuda else "gloo")
            if backend == "nccl":
                self.use_device("cuda")  # this worker's own GPU before NCCL binds one
            dist.init_process_group(backend=backend)
            atexit.register(self.shutdown)
        super().__init__(rank=dist.get_rank(), size=dist.get_world_size())
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def allreduce_mean(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t[0]) / self.size

    def broadcast_state(self, module, optimizer=None) -> None:
        for tensor in module.state_dict().values():
            if self.device.type == "cuda" or tensor.device.type == "cpu":
                dist.broadcast(tensor.data if hasattr(tensor, "data") else tensor, src=0)
            else:  # pragma: no cover - a CPU process group with CUDA tensors
                buf = tensor.detach().cpu()
                dist.broadcast(buf, src=0)
                tensor.copy_(buf)
        # a fresh optimizer is identical on every rank; a resumed one is loaded by every rank
        if optimizer is not None and optimizer.state_dict()["state"]:
            state = [optimizer.state_dict() if self.rank == 0 else None]
            dist.broadcast_object_list(state, src=0)
            optimizer.load_state_dict(state[0])

    def wrap_module(self, module):
        """``module`` in :class:`DDPModule` (one process: the module itself). Every rank must
        wrap the same modules in the same order (DDP's constructor syncs rank 0's weights)."""
        if self.size == 1:
            return module
        return DDPModule(module)

    def barrier(self) -> None:
        dist.barrier()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class DDPModule(DistributedDataParallel):
    """``DistributedDataParallel`` for a jetscan model: on the module's own device
    (``device_ids`` for a CUDA module), with the model's ``loss`` and other public attributes
    (``adv_lambda``, ``hyper``) reachable through the wrapper."""

    def __init__(self, module: torch.nn.Module, **kwargs):
        first = next(module.parameters(), None)
        if first is not None and first.device.type == "cuda":
            kwargs.setdefault("device_ids", [first.device.index])
            kwargs.setdefault("output_device", first.device.index)
        super().__init__(module, **kwargs)

    def loss(self, *args, **kwargs):
        return self.module.loss(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "module":
                raise  # DDP's own (possibly not yet set) attributes are never the model's
            return getattr(self.module, name)
