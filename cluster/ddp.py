"""torch.distributed behind the :class:`~jetscan.cluster.distributed.Comm` interface.

Launched by ``torchrun --nproc_per_node N ...`` (or any launcher that sets ``MASTER_ADDR``,
``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``): the process group is initialised from the
environment, gloo on CPU, nccl when CUDA is available. The module is not wrapped in
``DistributedDataParallel``: :meth:`DDPComm.wrap_optimizer` returns an optimizer whose
``step()`` first averages every parameter's gradient over the ranks, so the training loop is
the same code as on one process (and exact: the mean of the ranks' mean-loss gradients over
equal sub-batches is the gradient of the global batch's mean loss).
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from jetscan.cluster.distributed import Comm
from jetscan.core.errors import RunnerError

__all__ = ["DDPComm", "GradAveragingOptimizer"]


class DDPComm(Comm):
    """One torch.distributed process (the process group is created if needed)."""

    def __init__(self, backend: str | None = None):
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
        if not dist.is_initialized() and missing:
            raise RunnerError(
                f"backend 'ddp' needs {', '.join(missing)} in the environment: launch with "
                "`torchrun --nproc_per_node N -m jetscan.jobs.cli train ...`"
            )
        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl" and "LOCAL_RANK" in os.environ:
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
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

    def wrap_optimizer(self, optimizer, module):
        return GradAveragingOptimizer(optimizer, self.size)

    def barrier(self) -> None:
        dist.barrier()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class GradAveragingOptimizer:
    """Wraps an optimizer: ``step()`` all-reduces (averages) the gradients, then steps.

    Everything else (``zero_grad``, ``state_dict``, ``param_groups``, ...) is the inner
    optimizer's, so schedulers and checkpoints see the optimizer they were made for."""

    def __init__(self, optimizer: torch.optim.Optimizer, size: int):
        self.__dict__["optimizer"] = optimizer
        self.__dict__["size"] = size

    def step(self, closure=None):
        if self.size > 1:
            grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat /= self.size
                offset = 0
                for g in grads:
                    n = g.numel()
                    g.copy_(flat[offset : offset + n].view_as(g))
                    offset += n
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        setattr(self.optimizer, name, value)

    def __repr__(self) -> str:
        return f"GradAveragingOptimizer({self.optimizer!r})"
