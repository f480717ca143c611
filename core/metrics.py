"""Metrics the seed papers report, as functions of scores and labels.

Convention: a larger score means "more signal-like" (for autoencoders the anomaly score is
the reconstruction loss). eps_S and eps_B are the signal and background efficiencies of a
cut ``score > threshold``.

- ``roc`` / ``auc``: the ROC curve and its area (ties handled exactly, as sklearn does).
- ``inv_eb_at(eps_s=0.3)``: background rejection 1/eps_B at a fixed signal efficiency
  (Kasieczka et al., arXiv:1902.09914).
- ``e10_e100``: signal efficiency at background efficiency 10% and 1% (Farina, Nakai & Shih).
- ``bands``: mean and standard deviation of any metric over independent test subsamples.
- ``js_divergence``: Jensen-Shannon divergence between two histograms (mass sculpting).
- ``mass_sculpting``: QCD mass histograms of the least QCD-like fractions with their JSD
  to the inclusive shape (Heimel et al. sec. 4).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["roc", "auc", "eps_s_at", "inv_eb_at", "e10_e100", "accuracy", "bands", "js_divergence", "mass_sculpting"]


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eps_B, eps_S, thresholds) for cuts ``score >= threshold``, thresholds decreasing.

    Starts at (0, 0) and ends at (1, 1); tied scores form one point.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    n_sig, n_bkg = int(labels.sum()), int((~labels).sum())
    if n_sig == 0 or n_bkg == 0:
        raise ValueError(f"a ROC curve needs both classes (got {n_sig} signal, {n_bkg} background)")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    eps_s = np.r_[0.0, tp / n_sig]
    eps_b = np.r_[0.0, fp / n_bkg]
    thresholds = np.r_[np.inf, s[distinct]]
    return eps_b, eps_s, thresholds


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; 0.5 for a random score)."""
    eps_b, eps_s, _ = roc(scores, labels)
    return float(np.trapezoid(eps_s, eps_b))


def eps_s_at(scores, labels, eps_b: float) -> float:
    """Signal efficiency at background efficiency ``eps_b`` (linear interpolation on the ROC)."""
    b, s, _ = roc(scores, labels)
    return float(np.interp(eps_b, b, s))


def inv_eb_at(scores, labels, eps_s: float = 0.3) -> float:
    """Background rejection 1/eps_B at signal efficiency ``eps_s`` (inf if no background passes)."""
    b, s, _ = roc(scores, labels)
    # eps_S is non-decreasing along the curve: take the first point reaching eps_s, interpolated
    eb = float(np.interp(eps_s, s, b))
    return float("inf") if eb <= 0 else 1.0 / eb


def e10_e100(scores, labels) -> tuple[float, float]:
    """Signal efficiencies at background efficiency 10% and 1% (Farina, Nakai & Shih)."""
    return eps_s_at(scores, labels, 0.1), eps_s_at(scores, labels, 0.01)


def accuracy(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of jets classified right by ``p(signal) > threshold``."""
    return float(np.mean((np.asarray(probabilities) > threshold) == np.asarray(labels).astype(bool)))


def bands(
    metric: Callable[[np.ndarray, np.ndarray], float],
    scores: np.ndarray,
    labels: np.ndarray,
    n_subsamples: int = 10,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean and standard deviation of ``metric`` over ``n_subsamples`` statistically
    independent test subsamples (disjoint, each with the same share of both classes)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(bool)
    sig = rng.permutation(np.flatnonzero(labels))
    bkg = rng.permutation(np.flatnonzero(~labels))
    if min(len(sig), len(bkg)) < n_subsamples:
        raise ValueError(f"need at least {n_subsamples} jets of each class for {n_subsamples} subsamples")
    values = [
        metric(scores[np.r_[s, b]], labels[np.r_[s, b]])
        for s, b in zip(np.array_split(sig, n_subsamples), np.array_split(bkg, n_subsamples))
    ]
    return float(np.mean(values)), float(np.std(values, ddof=1) if n_subsamples > 1 else 0.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) of two histograms (normalised here)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / b[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def mass_sculpting(
    masses: np.ndarray,
    scores: np.ndarray,
    fractions: tuple[float, ...] = (0.5, 0.2, 0.05),
    bins: np.ndarray | None = None,
) -> dict:
    """Background mass shapes for the least background-like ``fractions`` of jets.

    Returns ``{"bins", "inclusive", "selected": {f: histogram}, "jsd": {f: JSD to inclusive},
    "thresholds": {f: score cut}}``. A cut keeping fraction f keeps the jets with the
    highest scores (for an autoencoder: the largest losses).
    """
    masses = np.asarray(masses, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if bins is None:
        bins = np.linspace(0.0, 400.0, 41)
    inclusive = np.histogram(masses, bins=bins)[0].astype(np.float64)
    out = {"bins": np.asarray(bins), "inclusive": inclusive, "selected": {}, "jsd": {}, "thresholds": {}}
    for f in fractions:
        cut = float(np.quantile(scores, 1.0 - f))
        h = np.histogram(masses[scores >= cut], bins=bins)[0].astype(np.float64)
        out["selected"][f] = h
        out["jsd"][f] = js_divergence(h, inclusive)
        out["thresholds"][f] = cut
    return out
