"""Horovod behind the :class:`~jetscan.cluster.distributed.Comm` interface.

Launched by ``horovodrun -np N --gloo -H localhost:N ...`` (or mpirun): ``hvd.init()``, rank
and size from Horovod, metrics averaged with ``hvd.allreduce`` (op Average), the initial
weights broadcast from rank 0, and gradients averaged by ``hvd.DistributedOptimizer`` (its
backward hooks start each gradient's all-reduce as soon as it is computed). Each worker
trains on the GPU of its ``hvd.local_rank()`` (:mod:`jetscan.cluster.devices`).
Build Horovod with ``bash cluster/build_horovod.sh .venv/bin/python``.
"""

from __future__ import annotations

import itertools

from jetscan.core.errors import RunnerError

from jetscan.cluster.distributed import Comm

__all__ = ["HorovodComm", "import_horovod"]

_HINT = "jetscan.cluster.horovod needs horovod: build it with `bash cluster/build_horovod.sh .venv/bin/python`"


def import_horovod():
    """``horovod.torch``, or a RunnerError telling how to build it."""
    try:
        import horovod.torch as hvd
    except ImportError as exc:
        raise RunnerError(f"{_HINT} ({exc})") from None
    return hvd


class HorovodComm(Comm):
    """One Horovod process (``hvd.init()`` on construction)."""

    _names = itertools.count()

    def __init__(self):
        hvd = import_horovod()
        hvd.init()
        self.hvd = hvd
        super().__init__(rank=hvd.rank(), size=hvd.size())
        self._n = 0

    def allreduce_mean(self, value: float) -> float:
        import torch

        self._n += 1
        t = torch.tensor([float(value)], dtype=torch.float64)
        return float(self.hvd.allreduce(t, op=self.hvd.Average, name=f"jetscan.metric.{self._n}")[0])

    def broadcast_state(self, module, optimizer=None) -> None:
        self.hvd.broadcast_parameters(module.state_dict(), root_rank=0)
        # a fresh optimizer has no state, and is the same on every rank (same settings):
        # horovod's broadcast would first take a zero-gradient step to create it, which moves
        # Adam's step count (and decayed weights), so only a non-empty state is broadcast
        if optimizer is not None and optimizer.state_dict()["state"]:
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def wrap_optimizer(self, optimizer, module):
        prefix = f"m{next(self._names)}"  # distinct allreduce names for each wrapped optimizer
        named = [(f"{prefix}.{name}", p) for name, p in module.named_parameters()]
        wrapped = self.hvd.DistributedOptimizer(optimizer, named_parameters=named, op=self.hvd.Average)
        horovod_zero_grad = wrapped.zero_grad  # takes no set_to_none; the loop passes it

        def zero_grad(set_to_none: bool = True):
            if set_to_none:
                return horovod_zero_grad()  # torch's default: set_to_none=True
            if wrapped._handles:
                horovod_zero_grad()  # raises horovod's "zero_grad before step" error
            return type(optimizer).zero_grad(wrapped, set_to_none=False)

        wrapped.zero_grad = zero_grad
        return wrapped

    def use_device(self, choice: str):
        """This worker's device: the GPU of ``hvd.local_rank()`` (:mod:`jetscan.cluster.devices`)."""
        from jetscan.cluster.devices import use_device

        return use_device(choice, horovod=(self.hvd.local_rank(), self.hvd.local_size()))

    def barrier(self) -> None:
        self.hvd.barrier()
