"""Supervised image taggers: DeepTop minimal and Macaluso & Shih's CNN.

Both read jet images ``(n, H, W)`` (one channel) or ``(n, C, H, W)``, return two logits per
jet ``(n, 2)`` (index 1 = signal), and give per-jet losses with ``loss(logits, labels)``;
``score(x)`` is the signal probability (softmax). Layer shorthand as in Macaluso & Shih table 2:
``kCn`` is a convolution with k filters of n x n, ``MPn`` an n x n max-pool, ``kN`` a dense
layer of k units.

Padding: both papers used Keras with ``padding="same"`` convolutions (Macaluso & Shih say so;
for DeepTop it is the choice that keeps the summarised layer sizes). A 4 x 4 kernel has no
centre, so "same" pads 1 pixel before and 2 after along each axis (Keras's and PyTorch's rule
for even kernels); the map keeps its size. Max-pools drop an odd last row/column (Keras
``"valid"`` pooling): 37 -> 18 -> 9 for Macaluso-Shih, 40 -> 20 for DeepTop. ReLU throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jetscan.core.models._private import as_image_batch, conv_same
from jetscan.core.models.registry import (
    JetModel,
    fraction,
    image_representation,
    int_at_least,
    nonneg_int,
    positive_float,
    positive_int,
    register,
)

__all__ = ["ImageTagger", "DeepTopMinimal", "MacalusoShih"]


class ImageTagger(JetModel):
    """Shared tagger behaviour: logits ``(n, 2)``, ``score``, per-jet ``loss``."""

    @property
    def input_shape(self):
        c, s = self.hyper["channels"], self.hyper["image_size"]
        return (s, s) if c == 1 else (c, s, s)

    @property
    def representation(self):
        return image_representation(self.hyper["channels"], self.hyper["image_size"])

    KIND = "tagger"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Signal probability per jet ``(n,)`` (softmax of the logits, class 1)."""
        return torch.softmax(self(x), dim=-1)[:, 1]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-jet cross entropy ``(n,)``; ``labels`` are class indices (0 background, 1 signal)."""
        return F.cross_entropy(logits, labels.long(), reduction="none")


@register("deeptop_minimal")
class DeepTopMinimal(ImageTagger):
    """DeepTop minimal: 8C4-8C4-MP2-8C4-8C4-64N-64N-64N, two outputs.

    Kasieczka, Plehn, Russell & Schell, "Deep-learning top taggers or the end of QCD?",
    arXiv:1701.08784, as summarised in Macaluso & Shih, arXiv:1803.00107, table 2. One-channel
    40 x 40 images (``image_size=37`` for the Macaluso-Shih grid, ``channels`` for colours);
    ReLU, "same" padding (module docstring), 2 outputs. The paper's training: SGD with learning
    rate 0.003, minibatch 1000, mean squared error between the softmax output and the one-hot
    truth (``loss``).

    Parameters (40 x 40, one channel): 216,546.
    """

    PAPER = (
        "Kasieczka, Plehn, Russell, Schell, arXiv:1701.08784 (DeepTop minimal, as summarised in "
        "Macaluso & Shih, arXiv:1803.00107, table 2)"
    )
    LOSS = "mse_softmax"
    OPTIMIZER = "sgd"
    RULES = {
        "image_size": int_at_least(2),
        "channels": positive_int,
        "filters": positive_int,
        "kernel_size": positive_int,
        "dense": positive_int,
        "lr": positive_float,
        "batch_size": positive_int,
    }

    def __init__(self, *, image_size=40, channels=1, filters=8, kernel_size=4, dense=64,
                 lr=0.003, batch_size=1000):
        super().__init__()
        h = self._configure(image_size=image_size, channels=channels, filters=filters,
                            kernel_size=kernel_size, dense=dense, lr=lr, batch_size=batch_size)
        f, k, d = h["filters"], h["kernel_size"], h["dense"]
        side = h["image_size"] // 2
        self.features = nn.Sequential(
            conv_same(h["channels"], f, k), nn.ReLU(),
            conv_same(f, f, k), nn.ReLU(),
            nn.MaxPool2d(2),
            conv_same(f, f, k), nn.ReLU(),
            conv_same(f, f, k), nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(f * side * side, d), nn.ReLU(),
            nn.Linear(d, d), nn.ReLU(),
            nn.Linear(d, d), nn.ReLU(),
            nn.Linear(d, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_image_batch(self.NAME, x, self.hyper["channels"], self.hyper["image_size"])
        return self.head(self.features(x))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-jet mean squared error between softmax output and one-hot truth ``(n,)``."""
        target = F.one_hot(labels.long(), num_classes=logits.shape[-1]).to(logits.dtype)
        return ((torch.softmax(logits, dim=-1) - target) ** 2).mean(dim=-1)


@register("macaluso_shih")
class MacalusoShih(ImageTagger):
    """Macaluso & Shih's CNN: 128C4-64C4-MP2-64C4-64C4-MP2-64N-256N-256N, 2-class softmax.

    Macaluso & Shih, "Pulling out all the tops with computer vision and deep learning",
    arXiv:1803.00107. Four-colour 37 x 37 images ``(n, 4, 37, 37)`` by default (``channels=1``
    for the one-colour ``ms37`` images); ReLU; "same" padding (module docstring): maps
    37 -> 37 -> 18 -> 18 -> 9, flattened 64 x 9 x 9 = 5184. Training: cross entropy, AdaDelta
    with learning rate 0.3 and an annealing schedule, minibatch 128.

    The annealing schedule is not spelled out in our summary of the paper; we anneal by
    ``anneal_factor`` (0.5) whenever the validation loss has not improved for
    ``anneal_patience`` (2) epochs (``make_optimizer`` returns the ``ReduceLROnPlateau``).

    Parameters (4 colours): 685,442.
    """

    PAPER = "Macaluso, Shih, arXiv:1803.00107"
    LOSS = "cross_entropy"
    OPTIMIZER = "adadelta"
    RULES = {
        "image_size": int_at_least(4),
        "channels": positive_int,
        "lr": positive_float,
        "anneal_factor": fraction,
        "anneal_patience": nonneg_int,
        "batch_size": positive_int,
    }

    def __init__(self, *, image_size=37, channels=4, lr=0.3, anneal_factor=0.5, anneal_patience=2,
                 batch_size=128):
        super().__init__()
        h = self._configure(image_size=image_size, channels=channels, lr=lr,
                            anneal_factor=anneal_factor, anneal_patience=anneal_patience,
                            batch_size=batch_size)
        side = h["image_size"] // 2 // 2
        self.features = nn.Sequential(
            conv_same(h["channels"], 128, 4), nn.ReLU(),
            conv_same(128, 64, 4), nn.ReLU(),
            nn.MaxPool2d(2),
            conv_same(64, 64, 4), nn.ReLU(),
            conv_same(64, 64, 4), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 64), nn.ReLU(),
            nn.Linear(64, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 2),
        )

    @property
    def optimizer_settings(self):
        h = self.hyper
        return {"lr": h["lr"], "rho": 0.95, "eps": 1e-7, "anneal_factor": h["anneal_factor"],
                "anneal_patience": h["anneal_patience"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_image_batch(self.NAME, x, self.hyper["channels"], self.hyper["image_size"])
        return self.head(self.features(x))
