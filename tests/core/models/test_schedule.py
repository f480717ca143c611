"""Learning-rate scaling with the world size and its linear warm-up (Goyal et al. 2017)."""

from __future__ import annotations

import math

import pytest

from jetscan.core.models.schedule import lr_factor, warmup_lr


def test_scaling_rules():
    assert lr_factor(1, "linear") == lr_factor(8, "none") == 1.0
    assert lr_factor(8, "linear") == 8.0
    assert lr_factor(4, "sqrt") == 2.0
    with pytest.raises(ValueError, match="lr_scaling: must be one of none, linear, sqrt \\(got 'cubic'\\)"):
        lr_factor(2, "cubic")


def test_warmup_rises_linearly_from_the_one_worker_rate():
    target, k, w = 8e-3, 8.0, 5.0
    assert math.isclose(warmup_lr(target, k, 0.0, w), 1e-3)  # the one-worker rate
    assert math.isclose(warmup_lr(target, k, 2.5, w), 1e-3 + 0.5 * 7e-3)
    assert warmup_lr(target, k, 5.0, w) == warmup_lr(target, k, 9.0, w) == target
    assert warmup_lr(target, k, 0.0, 0.0) == target  # no warm-up
    ramp = [warmup_lr(target, k, e / 10, w) for e in range(60)]
    assert all(b >= a for a, b in zip(ramp, ramp[1:]))
