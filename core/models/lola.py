"""CoLa and LoLa layers and the LoLa tagger (Butter, Kasieczka, Plehn & Russell).

Butter, Kasieczka, Plehn & Russell, "Deep-learned top tagging with a Lorentz layer",
arXiv:1707.08966. Inputs are ``(n, N, 4)`` four-vectors ``(E, px, py, pz)`` (``lola_inputs``
in :mod:`jetscan.core.kinematics`: the leading N = 40 constituents in the jet rest frame,
zero-padded).

- **CoLa** (combination layer): ``k~_j = sum_i k_i C_ij`` with ``C = [1_N | jet sum | W]``:
  the N inputs themselves (identity columns), optionally the jet sum (a column of ones; Heimel
  et al.'s LoLa autoencoder uses it) and M trainable columns ``W`` (N x M).
- **LoLa** (Lorentz layer), for each combined vector ``j`` (paper eq. 9):
  ``k^_j = (m^2(k~_j), pT(k~_j), sum_m w(E)_jm E(k~_m), sum_m w(d)_jm d^2_jm)`` with the
  Minkowski distance ``d^2_jm = (k~_j - k~_m)^mu g_mu,nu (k~_j - k~_m)^nu`` and trainable
  weight matrices ``w``. As in the authors' released layer we take several copies of the
  weighted terms: ``n_train_es`` energy sums (1), ``n_sum_dijs`` distance sums (2) and
  ``n_min_dijs`` distance minima ``min_m w(d)_jm d^2_jm`` (2), each with its own weights.
  ``g = diag(1, -1, -1, -1)``; ``train_metric=True`` makes its diagonal trainable (initialised
  to Minkowski), as the paper tried.

``m^2`` and every ``d^2`` are Lorentz invariant (CoLa is linear, so the combined vectors
transform like the inputs); ``pT`` is invariant under rotations about and boosts along z; the
energy sums are not invariant. Weights start uniform in [-0.05, 0.05] (Keras's "uniform", the
released layers' choice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jetscan.core.errors import ConfigError
from jetscan.core.models.registry import (
    JetModel,
    boolean,
    nonneg_int,
    positive_float,
    positive_int,
    register,
)

__all__ = ["CoLa", "LoLa", "LolaTagger", "minkowski_sq", "safe_sqrt", "signed_sqrt", "as_p4_batch"]

_MINKOWSKI = (1.0, -1.0, -1.0, -1.0)


def _uniform_(tensor: torch.Tensor, scale: float = 0.05) -> torch.Tensor:
    with torch.no_grad():
        return tensor.uniform_(-scale, scale)


def minkowski_sq(p4s: torch.Tensor, metric: torch.Tensor | None = None) -> torch.Tensor:
    """``p^mu g_mu,nu p^nu`` over the last axis ``(..., 4)``: the invariant mass squared."""
    g = p4s.new_tensor(_MINKOWSKI) if metric is None else metric.to(p4s)
    return (p4s * p4s * g).sum(dim=-1)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a finite gradient everywhere (0 where ``x <= 0``)."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)


def signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) sqrt(|x|)`` with a finite gradient everywhere (a spacelike mass stays signed)."""
    return torch.sign(x) * safe_sqrt(x.abs())


def as_p4_batch(model: str, x: torch.Tensor, n_constituents: int) -> torch.Tensor:
    """Check ``x`` is ``(n, n_constituents, 4)``; ConfigError naming the expected shape if not."""
    if x.dim() != 3 or tuple(x.shape[1:]) != (n_constituents, 4):
        raise ConfigError(
            f"{model} expects four-vectors (n, {n_constituents}, 4) as (E, px, py, pz) "
            f"(lola_inputs with n_const={n_constituents}); got {tuple(x.shape)}"
        )
    return x


class CoLa(nn.Module):
    """Combination layer: ``(n, N, 4) -> (n, N_out, 4)``, ``N_out = N*identity + total + M``.

    Output order: the N inputs (``identity``), the jet sum (``total``), then the M trainable
    combinations.
    """

    def __init__(self, n_constituents: int = 40, n_combinations: int = 15, *, identity: bool = True,
                 total: bool = False):
        super().__init__()
        self.n_constituents = int(n_constituents)
        self.n_combinations = int(n_combinations)
        self.identity = bool(identity)
        self.total = bool(total)
        self.weight = nn.Parameter(_uniform_(torch.empty(self.n_constituents, self.n_combinations)))
        self.n_out = self.n_constituents * self.identity + self.total + self.n_combinations

    def matrix(self) -> torch.Tensor:
        """The combination matrix ``C`` ``(N, N_out)``."""
        cols = []
        w = self.weight
        if self.identity:
            cols.append(torch.eye(self.n_constituents, dtype=w.dtype, device=w.device))
        if self.total:
            cols.append(torch.ones(self.n_constituents, 1, dtype=w.dtype, device=w.device))
        cols.append(w)
        return torch.cat(cols, dim=1)

    def forward(self, p4s: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bif,ij->bjf", p4s, self.matrix())

    def extra_repr(self) -> str:
        return (f"n_constituents={self.n_constituents}, n_combinations={self.n_combinations}, "
                f"identity={self.identity}, total={self.total}")


class LoLa(nn.Module):
    """Lorentz layer: ``(n, V, 4) -> (n, V, F)``.

    Features per vector, in order (``feature_names``): ``m2``, ``pt``, ``e_sum_<k>`` for
    ``k < n_train_es``, ``d2_sum_<k>`` for ``k < n_sum_dijs``, ``d2_min_<k>`` for
    ``k < n_min_dijs``; ``F = 2 + n_train_es + n_sum_dijs + n_min_dijs``.
    """

    def __init__(self, n_vectors: int, *, n_train_es: int = 1, n_sum_dijs: int = 2,
                 n_min_dijs: int = 2, train_metric: bool = False):
        super().__init__()
        self.n_vectors = int(n_vectors)
        self.n_train_es, self.n_sum_dijs, self.n_min_dijs = int(n_train_es), int(n_sum_dijs), int(n_min_dijs)
        v = self.n_vectors
        self.w_e = nn.Parameter(_uniform_(torch.empty(self.n_train_es, v, v)))
        self.w_d_sum = nn.Parameter(_uniform_(torch.empty(self.n_sum_dijs, v, v)))
        self.w_d_min = nn.Parameter(_uniform_(torch.empty(self.n_min_dijs, v, v)))
        metric = torch.tensor(_MINKOWSKI)
        if train_metric:
            self.metric = nn.Parameter(metric)
        else:
            self.register_buffer("metric", metric)
        self.train_metric = bool(train_metric)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (
            ("m2", "pt")
            + tuple(f"e_sum_{k}" for k in range(self.n_train_es))
            + tuple(f"d2_sum_{k}" for k in range(self.n_sum_dijs))
            + tuple(f"d2_min_{k}" for k in range(self.n_min_dijs))
        )

    @property
    def n_features(self) -> int:
        return 2 + self.n_train_es + self.n_sum_dijs + self.n_min_dijs

    def forward(self, p4s: torch.Tensor) -> torch.Tensor:
        g = self.metric.to(p4s.dtype)
        feats = [minkowski_sq(p4s, g), safe_sqrt(p4s[..., 1] ** 2 + p4s[..., 2] ** 2)]
        if self.n_train_es:
            # sum_m w_jm E_m, one row of weights per output vector j
            feats.extend(torch.einsum("kjm,bm->kbj", self.w_e, p4s[..., 0]).unbind(0))
        if self.n_sum_dijs or self.n_min_dijs:
            # d2_jm = sum_mu g_mu (k_j - k_m)_mu^2, a component at a time: (b, j, m), no (b, j, m, 4)
            comps = p4s.unbind(-1)
            d2 = sum(g[mu] * (c[:, :, None] - c[:, None, :]) ** 2 for mu, c in enumerate(comps))
            if self.n_sum_dijs:
                feats.extend(torch.einsum("kjm,bjm->kbj", self.w_d_sum, d2).unbind(0))
            for k in range(self.n_min_dijs):
                feats.append((self.w_d_min[k] * d2).amin(dim=-1))
        return torch.stack(feats, dim=-1)

    def extra_repr(self) -> str:
        return (f"n_vectors={self.n_vectors}, n_train_es={self.n_train_es}, "
                f"n_sum_dijs={self.n_sum_dijs}, n_min_dijs={self.n_min_dijs}, "
                f"train_metric={self.train_metric}")


@register("lola_tagger")
class LolaTagger(JetModel):
    """LoLa top tagger: CoLa(N=40, M=15) -> LoLa -> 100 -> 50 -> 2.

    Butter, Kasieczka, Plehn & Russell, arXiv:1707.08966. CoLa with the identity and
    ``n_combinations`` (M = 15) trainable combinations: 55 vectors; LoLa (module docstring)
    with 7 features each; flattened (385) into dense layers of 100 and 50 units (ReLU) and two
    output logits (softmax: ``score``); cross entropy (``loss``).

    ``momentum_scale`` divides the inputs first (1 = the paper's GeV; LoLa's ``m^2`` and
    ``d^2`` grow with the square of it). The summary gives no optimiser settings for the tagger;
    we default to Adam with learning rate 1e-3 and minibatch 128.

    Parameters (defaults): 59,477 (CoLa 600, LoLa 5 x 55 x 55 = 15,125, dense 43,752).
    """

    KIND = "tagger"
    PAPER = "Butter, Kasieczka, Plehn, Russell, arXiv:1707.08966"
    LOSS = "cross_entropy"
    OPTIMIZER = "adam"
    REPRESENTATION = "lola40"
    RULES = {
        "n_constituents": positive_int,
        "n_combinations": nonneg_int,
        "n_train_es": nonneg_int,
        "n_sum_dijs": nonneg_int,
        "n_min_dijs": nonneg_int,
        "train_metric": boolean,
        "momentum_scale": positive_float,
        "lr": positive_float,
        "batch_size": positive_int,
    }

    def __init__(self, *, n_constituents=40, n_combinations=15, n_train_es=1, n_sum_dijs=2,
                 n_min_dijs=2, train_metric=False, momentum_scale=1.0, lr=1e-3, batch_size=128):
        super().__init__()
        h = self._configure(n_constituents=n_constituents, n_combinations=n_combinations,
                            n_train_es=n_train_es, n_sum_dijs=n_sum_dijs, n_min_dijs=n_min_dijs,
                            train_metric=train_metric, momentum_scale=momentum_scale, lr=lr,
                            batch_size=batch_size)
        self.cola = CoLa(h["n_constituents"], h["n_combinations"], identity=True, total=False)
        self.lola = LoLa(self.cola.n_out, n_train_es=h["n_train_es"], n_sum_dijs=h["n_sum_dijs"],
                         n_min_dijs=h["n_min_dijs"], train_metric=h["train_metric"])
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.cola.n_out * self.lola.n_features, 100), nn.ReLU(),
            nn.Linear(100, 50), nn.ReLU(),
            nn.Linear(50, 2),
        )

    @property
    def input_shape(self):
        return (self.hyper["n_constituents"], 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The LoLa features ``(n, N + M, F)`` (``self.lola.feature_names``)."""
        x = as_p4_batch(self.NAME, x, self.hyper["n_constituents"])
        return self.lola(self.cola(x / self.hyper["momentum_scale"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Signal probability per jet ``(n,)``."""
        return torch.softmax(self(x), dim=-1)[:, 1]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-jet cross entropy ``(n,)``."""
        return F.cross_entropy(logits, labels.long(), reduction="none")
