"""Learning-rate scaling with the number of data-parallel workers, and its warm-up.

Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arXiv:1706.02677:
when the global batch grows k-fold (k workers, each with the one-worker batch), multiply the
learning rate by k (the *linear scaling rule*; ``"sqrt"`` takes sqrt(k), the rule often used
with Adam), and reach it through a *gradual warm-up*: the rate rises linearly from the
one-worker value to the scaled one over the first epochs (Goyal et al. use 5), per step.
Horovod's examples do the same (``lr * hvd.size()`` with a warm-up callback).
"""

from __future__ import annotations

import math

__all__ = ["LR_SCALING", "lr_factor", "warmup_lr"]

LR_SCALING = ("none", "linear", "sqrt")


def lr_factor(world_size: int, rule: str) -> float:
    """The learning-rate multiplier for ``world_size`` workers under ``rule`` (``LR_SCALING``)."""
    if rule not in LR_SCALING:
        raise ValueError(f"lr_scaling: must be one of {', '.join(LR_SCALING)} (got {rule!r})")
    if world_size < 1:
        raise ValueError(f"world size must be >= 1 (got {world_size})")
    return {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[rule]


def warmup_lr(target_lr: float, factor: float, progress_epochs: float, warmup_epochs: float) -> float:
    """The learning rate after ``progress_epochs`` (fractional) epochs of training.

    Rises linearly from ``target_lr / factor`` (the one-worker rate) at progress 0 to
    ``target_lr`` at ``warmup_epochs``, and stays there; no warm-up (0) gives ``target_lr``."""
    if warmup_epochs <= 0 or progress_epochs >= warmup_epochs:
        return target_lr
    start = target_lr / factor
    return start + (target_lr - start) * max(progress_epochs, 0.0) / warmup_epochs
