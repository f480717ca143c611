"""Helpers shared by the model modules (not public API)."""

from __future__ import annotations

import torch
from torch import nn

from jetscan.core.errors import ConfigError


def conv_same(c_in: int, c_out: int, k: int) -> nn.Module:
    """A stride-1 ``k x k`` convolution with Keras's ``padding="same"``: the map keeps its size.

    An odd kernel pads ``k // 2`` on every side. An even kernel has no centre: it pads
    ``(k - 1) // 2`` before and ``k // 2`` after along each axis (1 and 2 for k = 4), the rule
    of TensorFlow/Keras and of PyTorch's ``padding="same"``, written as an explicit
    ``ZeroPad2d`` so no copy warning is raised.
    """
    if k % 2:
        return nn.Conv2d(c_in, c_out, k, padding=k // 2)
    before, after = (k - 1) // 2, k // 2
    return nn.Sequential(nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(c_in, c_out, k))


def as_image_batch(model: str, x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """``x`` as ``(n, channels, size, size)``: a one-channel ``(n, size, size)`` gains its
    channel axis; any other shape raises ConfigError naming the expected one."""
    if x.dim() == 3 and channels == 1 and tuple(x.shape[1:]) == (size, size):
        return x.unsqueeze(1)
    if x.dim() == 4 and tuple(x.shape[1:]) == (channels, size, size):
        return x
    want = f"(n, {size}, {size}) or " if channels == 1 else ""
    raise ConfigError(
        f"{model} expects images {want}(n, {channels}, {size}, {size}); got {tuple(x.shape)}. "
        f"Build it with matching channels/image_size hyperparameters."
    )


def glorot_zero_bias(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases (Keras's defaults) for every convolution and dense
    layer of ``module``, in place; returns it. Without random biases a ReLU network's output
    follows its input's scale, which unit-sum jet images (pixels of 0.01-0.3) need: under
    PyTorch's defaults (Kaiming-uniform weights, uniform biases) the biases swamp such inputs
    and Farina et al.'s CNN AE reconstructed the mean QCD image for 10 epochs of 20k jets."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module
