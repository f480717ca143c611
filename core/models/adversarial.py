"""Mass-decorrelating adversary for autoencoders (Heimel et al. sec. 2.3).

Heimel, Kasieczka, Plehn & Thompson, "QCD or What?", arXiv:1808.08979, sec. 2.3: an adversary
reads the autoencoder's output and predicts the jet-mass bin; the autoencoder is trained on
``L = L_auto - adv_lambda * L_adv`` so its reconstruction (hence its loss) carries little mass
information, and the adversary on ``L_adv`` (categorical cross entropy). Per minibatch of 128:
one autoencoder step, then one adversary step (:func:`adversarial_step`).

Mass classes (:func:`mass_bin_labels`), ``n_bins + 2`` of them, in increasing mass:

- class 0: underflow, ``m < edges[0]``;
- classes 1 .. n_bins: the equal-QCD-population bins, ``edges[i-1] <= m < edges[i]`` for
  class ``i`` (the last one also takes ``m == edges[-1]``);
- class n_bins + 1: overflow, ``m > edges[-1]``.

With the paper's 10 bins that is 12 classes: 0 underflow, 1-10 the bins, 11 overflow. Edges
from :func:`mass_bin_edges` split the QCD sample at its quantiles (optionally only inside
``mass_range``), so the under- and overflow classes collect the jets beyond them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jetscan.core.errors import ConfigError
from jetscan.core.models.registry import (
    FrozenMapping,
    _validate,
    int_at_least,
    nonneg_float,
    positive_float,
    positive_int,
)

__all__ = ["MassAdversary", "AdversarialLosses", "mass_bin_edges", "mass_bin_labels", "adversarial_step"]

_HIDDEN = (800, 400, 200, 100, 50, 25, 10)


class MassAdversary(nn.Module):
    """Dense adversary 800-400-200-100-50-25-10-12 on the flattened AE output.

    Heimel et al., arXiv:1808.08979, sec. 2.3: ReLU hidden layers of 800, 400, 200, 100, 50, 25
    and 10 units and a softmax over ``n_bins + 2`` = 12 mass classes (``forward`` returns the
    logits; ``predict_proba`` the softmax); categorical cross entropy (``loss``). Plain-number
    settings for a search: ``n_inputs`` (1600, a 40 x 40 image), ``n_bins`` (10),
    ``adv_lambda`` (5e-4, the paper's value for tops; :func:`adversarial_step` uses it when not
    given one), ``lr`` (Adam, 1e-3; the summary gives none).

    Parameters (defaults): 1,708,217.
    """

    PAPER = "Heimel, Kasieczka, Plehn, Thompson, arXiv:1808.08979, sec. 2.3"
    RULES = {
        "n_inputs": positive_int,
        "n_bins": int_at_least(1),
        "adv_lambda": nonneg_float,
        "lr": positive_float,
    }

    def __init__(self, *, n_inputs=1600, n_bins=10, adv_lambda=5e-4, lr=1e-3):
        super().__init__()
        self.hyper = FrozenMapping(_validate("mass_adversary", self.RULES, dict(
            n_inputs=n_inputs, n_bins=n_bins, adv_lambda=adv_lambda, lr=lr)))
        self.n_classes = self.hyper["n_bins"] + 2
        sizes = (self.hyper["n_inputs"], *_HIDDEN)
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], self.n_classes))
        self.net = nn.Sequential(*layers)

    @property
    def adv_lambda(self) -> float:
        return self.hyper["adv_lambda"]

    def forward(self, recon: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, n_bins + 2)`` from the AE output (any shape ``(n, ...)``, flattened)."""
        flat = recon.reshape(recon.shape[0], -1)
        if flat.shape[1] != self.hyper["n_inputs"]:
            raise ConfigError(
                f"mass_adversary.n_inputs: is {self.hyper['n_inputs']} but the AE output has "
                f"{flat.shape[1]} values per jet; build MassAdversary(n_inputs={flat.shape[1]})"
            )
        return self.net(flat)

    def predict_proba(self, recon: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(recon), dim=-1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-jet categorical cross entropy ``(n,)``."""
        return F.cross_entropy(logits, labels.long(), reduction="none")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())


def _as_numpy(masses, what: str) -> np.ndarray:
    if isinstance(masses, torch.Tensor):
        masses = masses.detach().cpu().numpy()
    arr = np.asarray(masses, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"{what}: masses must be a 1-d array (got shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{what}: masses must be finite (got {int((~np.isfinite(arr)).sum())} NaN/inf)")
    return arr


def mass_bin_edges(qcd_masses, n_bins: int = 10, mass_range=None) -> np.ndarray:
    """``n_bins + 1`` increasing edges holding equal numbers of QCD jets (float64 numpy).

    The QCD masses (those inside ``mass_range = (lo, hi)`` when given) are sorted; the inner
    edge ``k`` lies midway between the masses ranked ``round(k n / n_bins) - 1`` and
    ``round(k n / n_bins)``, so each bin holds the same QCD count to within one jet; the outer
    edges are the sample's smallest and largest mass. Ties that would make two edges coincide
    (e.g. many zero masses) raise ConfigError: use fewer bins or a ``mass_range``.
    """
    m = _as_numpy(qcd_masses, "mass_bin_edges")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"mass_bin_edges.n_bins: must be a positive integer (got {n_bins!r})")
    if mass_range is not None:
        lo, hi = (float(v) for v in mass_range)
        if not lo < hi:
            raise ConfigError(f"mass_bin_edges.mass_range: lower edge {lo} must be below upper edge {hi}")
        m = m[(m >= lo) & (m <= hi)]
    if m.size < n_bins:
        raise ConfigError(
            f"mass_bin_edges: needs at least n_bins = {n_bins} QCD masses (got {m.size})"
        )
    s = np.sort(m)
    ranks = np.rint(np.arange(1, int(n_bins)) * s.size / int(n_bins)).astype(np.int64)
    # an inner edge sits midway between the jets ranked just below and just above it, so
    # bin k holds exactly ranks[k] - ranks[k-1] jets (equal to within one)
    edges = np.concatenate([s[:1], 0.5 * (s[ranks - 1] + s[ranks]), s[-1:]])
    if np.any(np.diff(edges) <= 0):
        raise ConfigError(
            f"mass_bin_edges: QCD masses have too many ties for {n_bins} equal-population bins "
            f"(edges {np.round(edges, 3).tolist()}); use fewer bins or a mass_range"
        )
    return edges


def mass_bin_labels(masses, edges):
    """Mass classes in ``[0, len(edges) + 1)``: 0 underflow, 1..n_bins inside, n_bins+1 overflow.

    Returns int64: a ``torch.long`` tensor (on the input's device) for a tensor input, else a
    numpy array.
    """
    edges = _as_numpy(edges, "mass_bin_labels")
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ConfigError(
            f"mass_bin_labels: edges must be at least 2 strictly increasing values (got {edges.tolist()})"
        )
    m = _as_numpy(masses, "mass_bin_labels")
    labels = np.searchsorted(edges, m, side="right")  # 0 below, i for edges[i-1] <= m < edges[i]
    labels[m == edges[-1]] = edges.size - 1  # the top edge belongs to the last bin
    labels = labels.astype(np.int64)
    if isinstance(masses, torch.Tensor):
        return torch.from_numpy(labels).to(masses.device)
    return labels


class AdversarialLosses(NamedTuple):
    """Batch-mean losses of one :func:`adversarial_step`: the AE's reconstruction loss (before
    its update) and the adversary's cross entropy (before its update)."""

    auto: float
    adv: float


def adversarial_step(ae, adversary, opt_ae, opt_adv, x, mass_labels, adv_lambda=None) -> AdversarialLosses:
    """One minibatch of adversarial training (Heimel et al. sec. 2.3).

    1. AE step on ``L = L_auto - adv_lambda * L_adv``: ``L_auto`` is the batch mean of
       ``ae.loss(x, ae(x))`` and ``L_adv`` the adversary's cross entropy on that output (the
       adversary's parameters are frozen for this step).
    2. Adversary step on ``L_adv``, recomputed on the updated AE's output (no gradient into the
       AE).

    ``adv_lambda`` defaults to ``adversary.adv_lambda``. Returns both losses as floats.
    """
    if adv_lambda is None:
        adv_lambda = getattr(adversary, "adv_lambda", None)
    adv_lambda = _validate("adversarial_step", {"adv_lambda": nonneg_float},
                           {"adv_lambda": adv_lambda})["adv_lambda"]
    labels = torch.as_tensor(mass_labels).long().to(x.device)

    # 1. autoencoder step, adversary frozen
    frozen = [p for p in adversary.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        recon = ae(x)
        l_auto = ae.loss(x, recon).mean()
        l_adv = F.cross_entropy(adversary(recon), labels)
        opt_ae.zero_grad()
        (l_auto - adv_lambda * l_adv).backward()
        opt_ae.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)

    # 2. adversary step on the updated autoencoder's output
    with torch.no_grad():
        recon = ae(x)
    l_adv2 = F.cross_entropy(adversary(recon), labels)
    opt_adv.zero_grad()
    l_adv2.backward()
    opt_adv.step()
    return AdversarialLosses(float(l_auto.detach()), float(l_adv2.detach()))
