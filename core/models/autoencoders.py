"""Autoencoders (and PCA) whose reconstruction loss is the anomaly score.

Every model here has ``forward(x) -> reconstruction`` (the input's shape) and
``loss(x, recon) -> (n,)`` per-jet losses, the anomaly score; the training loss is its batch
mean. Images are ``(n, 40, 40)`` (``heimel40``; ``(n, 1, 40, 40)`` also accepted); the LoLa
autoencoder reads ``(n, 40, 4)`` four-vectors (``lola40``).

Farina, Nakai & Shih, "Searching for New Physics with Deep Autoencoders", arXiv:1808.08992:

- ``pca``: PCA with d components (d = 6, the elbow of the scree plot);
- ``dense_ae``: a dense AE 1600-512-256-128-d-128-256-512-1600;
- ``cnn_ae``: 128C3-MP2-128C3-MP2-128C3-32N-dN-32N-12800N-128C3-US2-128C3-US2-1C3.

Heimel, Kasieczka, Plehn & Thompson, "QCD or What?", arXiv:1808.08979:

- ``image_ae``: convolutions, 40x40 -> 20x20 average pooling, dense 400 -> 100 -> bottleneck,
  mirrored decoder, PReLU except a linear last layer, loss summed over the 1600 pixels;
- ``lola_ae``: CoLa (identity, jet sum, M = 10: 51 vectors) each with its mass (255 inputs),
  dense encoder and decoder to 40 four-vectors (160 outputs), loss summed over 40 x 4.

Losses: Farina et al.'s models use the per-jet *mean* squared error over pixels (Keras's
``mse``, ``LOSS = "pixel_mse"``); Heimel et al.'s use the *sum* over pixels or components
(``"pixel_sse"``, ``"p4_sse"``). Ranking by either is the same.
"""

from __future__ import annotations

import torch
from torch import nn

from jetscan.core.errors import ConfigError, JetscanError
from jetscan.core.models._private import as_image_batch, conv_same, glorot_zero_bias
from jetscan.core.models.lola import CoLa, as_p4_batch, minkowski_sq, signed_sqrt
from jetscan.core.models.registry import (
    JetModel,
    multiple_of,
    nonneg_int,
    positive_float,
    positive_int,
    register,
)

__all__ = ["ImageAutoencoder", "PCA", "DenseAE", "CnnAE", "ImageAE", "LolaAE"]

_FARINA = "Farina, Nakai, Shih, arXiv:1808.08992"
_HEIMEL = "Heimel, Kasieczka, Plehn, Thompson, arXiv:1808.08979"


class ImageAutoencoder(JetModel):
    """Shared behaviour of the one-channel image autoencoders (``image_size`` x ``image_size``)."""

    KIND = "autoencoder"
    LOSS = "pixel_mse"
    OPTIMIZER = "adam"

    @property
    def input_shape(self):
        s = self.hyper["image_size"]
        return (s, s)

    @property
    def representation(self):
        s = self.hyper["image_size"]
        return "heimel40" if s == 40 else f"image1x{s}x{s}"

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        return as_image_batch(self.NAME, x, 1, self.hyper["image_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction, in the input's shape."""
        recon = self.decode(self.encode(x))
        return recon.reshape(x.shape)

    def loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-jet squared error ``(n,)``: mean over pixels (``pixel_mse``) or sum (``pixel_sse``)."""
        sq = ((recon - x) ** 2).reshape(x.shape[0], -1)
        return sq.sum(dim=1) if self.LOSS == "pixel_sse" else sq.mean(dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per jet ``(n,)``: the reconstruction loss."""
        return self.loss(x, self(x))


@register("pca")
class PCA(ImageAutoencoder):
    """PCA with d = ``bottleneck`` components, as an ``nn.Module`` (Farina, Nakai & Shih).

    Farina, Nakai & Shih, arXiv:1808.08992 (d = 6). ``fit(x)`` takes the mean image and the
    leading right-singular vectors of the centred, flattened images (``torch.linalg.svd``, in
    float64), stored as buffers ``mean`` ``(P,)`` and ``components`` ``(d, P)`` (orthonormal
    rows). The reconstruction is the projection onto the components,
    ``mean + (x - mean) C^T C``; the loss is the per-jet mean squared error over pixels.
    ``explained_variance`` holds the leading ``d`` variances (the scree plot).
    """

    KIND = "pca"
    PAPER = _FARINA
    OPTIMIZER = None
    RULES = {"bottleneck": positive_int, "image_size": positive_int}

    def __init__(self, *, bottleneck=6, image_size=40):
        super().__init__()
        h = self._configure(bottleneck=bottleneck, image_size=image_size)
        p = h["image_size"] ** 2
        self.register_buffer("mean", torch.zeros(p))
        self.register_buffer("components", torch.zeros(h["bottleneck"], p))
        self.register_buffer("explained_variance", torch.zeros(h["bottleneck"]))
        self.register_buffer("fitted", torch.tensor(False))

    @staticmethod
    def _check_joint(h):
        p = h["image_size"] ** 2
        if h["bottleneck"] > p:
            return [f"bottleneck: must be at most image_size**2 = {p} (got {h['bottleneck']})"]
        return []

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> PCA:
        """Fit mean and components to images ``x``; returns ``self``."""
        flat = self._images(x).reshape(x.shape[0], -1)
        d = self.hyper["bottleneck"]
        if flat.shape[0] < 2 or flat.shape[0] < d:
            raise ConfigError(
                f"pca.fit: needs at least max(2, bottleneck = {d}) images (got {flat.shape[0]})"
            )
        data = flat.to(torch.float64)
        mean = data.mean(dim=0)
        _, s, vh = torch.linalg.svd(data - mean, full_matrices=False)
        self.mean.copy_(mean.to(self.mean))
        self.components.copy_(vh[:d].to(self.components))
        self.explained_variance.copy_((s[:d] ** 2 / (flat.shape[0] - 1)).to(self.explained_variance))
        self.fitted.fill_(True)
        return self

    def _require_fit(self):
        if not bool(self.fitted):
            raise JetscanError("pca is not fitted: call module.fit(qcd_images) before using it")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The ``d`` principal coordinates ``(n, d)``."""
        self._require_fit()
        flat = self._images(x).reshape(x.shape[0], -1)
        return (flat - self.mean) @ self.components.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.components + self.mean


@register("dense_ae")
class DenseAE(ImageAutoencoder):
    """Dense autoencoder 1600-512-256-128-d-128-256-512-1600 (Farina, Nakai & Shih).

    Farina, Nakai & Shih, arXiv:1808.08992, d = ``bottleneck`` = 6. Our summary of the paper
    gives no layer sizes for the dense AE; we halve the width at each layer from 512 down to
    128, then the bottleneck, mirrored. ReLU on the hidden layers; the bottleneck and the output
    are linear (as in the CNN AE). Adam, learning rate 1e-3, minibatch 128 (the summary gives
    none); loss: per-jet pixel MSE.

    Parameters (d = 6): 1,971,014.
    """

    PAPER = _FARINA
    RULES = {
        "bottleneck": positive_int,
        "image_size": positive_int,
        "lr": positive_float,
        "batch_size": positive_int,
    }
    HIDDEN = (512, 256, 128)

    def __init__(self, *, bottleneck=6, image_size=40, lr=1e-3, batch_size=128):
        super().__init__()
        h = self._configure(bottleneck=bottleneck, image_size=image_size, lr=lr, batch_size=batch_size)
        sizes = (h["image_size"] ** 2, *self.HIDDEN)
        enc, dec = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.append(nn.Linear(sizes[-1], h["bottleneck"]))
        rev = (h["bottleneck"], *reversed(sizes))
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            dec.append(nn.Linear(a, b))
            if i < len(rev) - 2:
                dec.append(nn.ReLU())
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._images(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


@register("cnn_ae")
class CnnAE(ImageAutoencoder):
    """Convolutional AE 128C3-MP2-128C3-MP2-128C3-32N-dN-32N-12800N-128C3-US2-128C3-US2-1C3.

    Farina, Nakai & Shih, arXiv:1808.08992, d = ``bottleneck`` = 6, on 40 x 40 images:
    "same"-padded 3 x 3 convolutions keep the map size, so 40 -> 20 -> 10 and the flattened map
    is 128 x 10 x 10 = 12800; the decoder's dense layer restores it, and two nearest-neighbour
    2x upsamplings return to 40 x 40. ReLU on every hidden layer; the bottleneck (dN) and the
    last 1C3 are linear. ``filters`` (128) sets the width of every convolution (the test suite
    shrinks it to train fast). Adam, learning rate 1e-3, minibatch 128 (the summary gives none);
    loss: per-jet pixel MSE. Initialised as Keras does (Glorot-uniform weights, zero biases:
    :func:`glorot_zero_bias`): with PyTorch's defaults it did not learn on unit-sum images (on
    20k QCD jets, 10 epochs, its validation loss stayed at the mean QCD image's, 1.13e-4, and E10
    on tops was 0.11; with Keras's, three epochs of 5k jets reach 5.9e-5 against 1.0e-4).

    Parameters (d = 6): 1,425,223.
    """

    PAPER = _FARINA
    RULES = {
        "bottleneck": positive_int,
        "image_size": multiple_of(4, 4),
        "filters": positive_int,
        "lr": positive_float,
        "batch_size": positive_int,
    }

    def __init__(self, *, bottleneck=6, image_size=40, filters=128, lr=1e-3, batch_size=128):
        super().__init__()
        h = self._configure(bottleneck=bottleneck, image_size=image_size, filters=filters, lr=lr,
                            batch_size=batch_size)
        f, d = h["filters"], h["bottleneck"]
        self._side = h["image_size"] // 4
        flat = f * self._side * self._side
        self.encoder = nn.Sequential(
            conv_same(1, f, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            conv_same(f, f, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            conv_same(f, f, 3), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, 32), nn.ReLU(),
            nn.Linear(32, d),
        )
        self.decoder_dense = nn.Sequential(
            nn.Linear(d, 32), nn.ReLU(),
            nn.Linear(32, flat), nn.ReLU(),
        )
        self.decoder_conv = nn.Sequential(
            conv_same(f, f, 3), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv_same(f, f, 3), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv_same(f, 1, 3),
        )
        glorot_zero_bias(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._images(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_dense(z).reshape(z.shape[0], self.hyper["filters"], self._side, self._side)
        return self.decoder_conv(h)


@register("image_ae")
class ImageAE(ImageAutoencoder):
    """Heimel et al.'s image autoencoder.

    Heimel, Kasieczka, Plehn & Thompson, arXiv:1808.08979, sec. 2.1. Our summary of the paper
    fixes: convolutions, one 2 x 2 average pooling 40x40 -> 20x20, dense 400 -> 100 ->
    bottleneck, a mirrored decoder, PReLU everywhere except a linear last layer, Adam, and the
    per-jet loss summed over the 1600 pixels. Choices where it is silent:

    - encoder: two ``filters`` x ``kernel_size`` convolutions (10 x 4x4, "same"), average pool
      to 20 x 20, a ``filters`` and a one-filter convolution, so the flattened map is the
      400-unit layer (1 x 20 x 20); dense 100; dense ``bottleneck``;
    - decoder, mirrored: dense 100; dense 400 reshaped to 1 x 20 x 20; two convolutions;
      2x nearest-neighbour upsampling to 40 x 40; a ``filters`` convolution; a linear
      one-filter convolution;
    - PReLU with one slope per channel after convolutions, one per unit after dense layers
      (the bottleneck too); PyTorch's initial slope 0.25;
    - bottleneck 20: the start of the plateau (20 to 34) where the top-vs-QCD AUC is best
      (the paper scans 6 to 34);
    - Adam learning rate 1e-3 (Keras's default), minibatch 128 (the adversarial training's).

    ``image_size`` must be even (the pooling halves it; 400 = (40 / 2)^2).

    Parameters (bottleneck 20): 92,403.
    """

    PAPER = _HEIMEL
    LOSS = "pixel_sse"
    RULES = {
        "bottleneck": positive_int,
        "image_size": multiple_of(2, 2),
        "filters": positive_int,
        "kernel_size": positive_int,
        "lr": positive_float,
        "batch_size": positive_int,
    }

    def __init__(self, *, bottleneck=20, image_size=40, filters=10, kernel_size=4, lr=1e-3,
                 batch_size=128):
        super().__init__()
        h = self._configure(bottleneck=bottleneck, image_size=image_size, filters=filters,
                            kernel_size=kernel_size, lr=lr, batch_size=batch_size)
        f, k, d = h["filters"], h["kernel_size"], h["bottleneck"]
        self._side = h["image_size"] // 2
        flat = self._side * self._side

        def conv(a, b, act=True):
            layers = [conv_same(a, b, k)]
            return layers + [nn.PReLU(b)] if act else layers

        self.encoder = nn.Sequential(
            *conv(1, f), *conv(f, f),
            nn.AvgPool2d(2),
            *conv(f, f), *conv(f, 1),
            nn.Flatten(),
            nn.Linear(flat, 100), nn.PReLU(100),
            nn.Linear(100, d), nn.PReLU(d),
        )
        self.decoder_dense = nn.Sequential(
            nn.Linear(d, 100), nn.PReLU(100),
            nn.Linear(100, flat), nn.PReLU(flat),
        )
        self.decoder_conv = nn.Sequential(
            *conv(1, f), *conv(f, f),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *conv(f, f), *conv(f, 1, act=False),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._images(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_conv(self.decoder_dense(z).reshape(z.shape[0], 1, self._side, self._side))


@register("lola_ae")
class LolaAE(JetModel):
    """Heimel et al.'s LoLa autoencoder on ``(n, 40, 4)`` rest-frame four-vectors.

    Heimel, Kasieczka, Plehn & Thompson, arXiv:1808.08979, sec. 2.2. CoLa with the 40 inputs,
    the jet sum and M = ``n_combinations`` = 10 trainable combinations (51 vectors), each
    extended by its invariant mass to ``(E, px, py, pz, m)`` (255 inputs); dense encoder
    255 -> ``hidden`` (100) -> ``bottleneck``; decoder ``bottleneck`` -> 100 -> 160, reshaped to
    40 four-vectors. Loss: per-jet sum over 40 x 4 of squared differences.

    Choices where the summary is silent: one hidden layer of 100 each side (as the image AE's
    dense part); PReLU on every layer but the linear output; the mass of a spacelike trained
    combination is ``-sqrt(-m^2)`` (signed, so it stays informative and differentiable);
    bottleneck 10 (the paper finds bottlenecks <= 10 best for the LoLa AE); Adam 1e-3,
    minibatch 128. ``momentum_scale`` divides inputs before the network and scales the output
    back (1 = the paper's GeV); the loss is computed in the scaled units.

    Parameters (defaults): 44,480.
    """

    KIND = "autoencoder"
    PAPER = _HEIMEL
    LOSS = "p4_sse"
    OPTIMIZER = "adam"
    REPRESENTATION = "lola40"
    RULES = {
        "bottleneck": positive_int,
        "n_constituents": positive_int,
        "n_combinations": nonneg_int,
        "hidden": positive_int,
        "momentum_scale": positive_float,
        "lr": positive_float,
        "batch_size": positive_int,
    }

    def __init__(self, *, bottleneck=10, n_constituents=40, n_combinations=10, hidden=100,
                 momentum_scale=1.0, lr=1e-3, batch_size=128):
        super().__init__()
        h = self._configure(bottleneck=bottleneck, n_constituents=n_constituents,
                            n_combinations=n_combinations, hidden=hidden,
                            momentum_scale=momentum_scale, lr=lr, batch_size=batch_size)
        n, d, w = h["n_constituents"], h["bottleneck"], h["hidden"]
        self.cola = CoLa(n, h["n_combinations"], identity=True, total=True)
        n_in = self.cola.n_out * 5
        self.encoder = nn.Sequential(
            nn.Linear(n_in, w), nn.PReLU(w),
            nn.Linear(w, d), nn.PReLU(d),
        )
        self.decoder = nn.Sequential(
            nn.Linear(d, w), nn.PReLU(w),
            nn.Linear(w, n * 4),
        )

    @property
    def input_shape(self):
        return (self.hyper["n_constituents"], 4)

    def extended(self, x: torch.Tensor) -> torch.Tensor:
        """CoLa vectors with their masses ``(n, N + 1 + M, 5)``, in scaled units."""
        x = as_p4_batch(self.NAME, x, self.hyper["n_constituents"])
        k = self.cola(x / self.hyper["momentum_scale"])
        return torch.cat([k, signed_sqrt(minkowski_sq(k)).unsqueeze(-1)], dim=-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.extended(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z).reshape(z.shape[0], self.hyper["n_constituents"], 4)
        return out * self.hyper["momentum_scale"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructed four-vectors ``(n, N, 4)`` in the input's units."""
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-jet sum of squared differences over N x 4 ``(n,)`` (scaled units)."""
        s = self.hyper["momentum_scale"]
        return (((recon - x) / s) ** 2).reshape(x.shape[0], -1).sum(dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per jet ``(n,)``: the reconstruction loss."""
        return self.loss(x, self(x))
