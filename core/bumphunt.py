"""The bump hunt of Farina, Nakai & Shih (arXiv:1808.08992, sec. 6): an autoencoder's loss as a cut
that keeps a resonance search in the jet mass working.

The paper trains its CNN autoencoder on QCD jets that hold a 1e-3 admixture of 400 GeV RPV
gluinos (the "data"), cuts on the reconstruction loss so that QCD is rejected 1000x, and looks
at the jet-mass spectrum in the gluino's window: S/B rises from about 4 % to about 25 %. The
background under the peak comes from a fit of a smooth falling shape to the sidebands either
side of the window, as in a classic bump hunt.

Arrays in, dicts out, no I/O (``jetscan reproduce farina`` feeds it a run's stored test scores):

- :func:`signal_window` - the mass window: the central interval holding ``coverage`` of the
  signal jets (truth labels; default 68 %);
- :func:`loss_threshold` - the loss cut for a background rejection R: the (1 - 1/R) quantile of
  the background jets' scores (truth labels, as the paper quotes the rejection of QCD), or,
  label-free, of all jets' scores (what an analysis of real data can do; with a 1e-3 admixture
  the two differ by the signal jets above the cut);
- :func:`sideband_fit` - a binned Poisson maximum-likelihood fit of ``exp(polynomial)`` to the
  mass spectrum in the sidebands (a log-linear Poisson model: convex, solved by Newton steps),
  interpolated under the window: B_fit with its uncertainty from the fit's covariance, and
  S_fit = observed - B_fit with the observed count's Poisson uncertainty added in quadrature;
- :func:`bump_hunt` - all of it: S, B, S/B in the window before and after the cut (truth) and the
  sideband estimate after the cut (and before it, where the sidebands allow a fit).

Masses in GeV. Bad input is one :class:`~jetscan.core.errors.ConfigError` naming the fix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jetscan.core.errors import ConfigError

__all__ = ["signal_window", "loss_threshold", "sideband_fit", "fitted_counts", "s_over_b", "bump_hunt",
           "DEFAULT_REJECTION", "DEFAULT_COVERAGE", "MIN_SIDEBAND_JETS"]

#: Farina et al. sec. 6: the loss cut rejects QCD by 1000
DEFAULT_REJECTION = 1000.0
#: the central share of signal jets the default window holds
DEFAULT_COVERAGE = 0.68
#: fewer sideband jets than this cannot pin down a falling shape
MIN_SIDEBAND_JETS = 10
#: default sidebands: this many window widths either side (few jets survive a 1000x cut)
SIDEBAND_WIDTHS = 2.0
_SUB_BINS = 32


# --------------------------------------------------------------------------------------
# inputs


def _arrays(mass_gev, score, label) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mass_gev = np.asarray(mass_gev, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label)
    if mass_gev.ndim != 1 or mass_gev.shape != score.shape or mass_gev.shape != label.shape:
        raise ConfigError(
            f"bump hunt: mass_gev, score and label must be 1-D arrays of one length per jet, got shapes "
            f"{mass_gev.shape}, {score.shape}, {label.shape}"
        )
    if not len(mass_gev):
        raise ConfigError("bump hunt: no jets given; pass the test sample's masses, scores and labels")
    if not (np.isfinite(mass_gev).all() and np.isfinite(score).all()):
        raise ConfigError("bump hunt: mass_gev and score must be finite (a NaN loss means a broken evaluation)")
    if not np.isin(label, (0, 1)).all():
        raise ConfigError("bump hunt: label holds 0 (background) and 1 (signal) only")
    label = label.astype(bool)
    if label.all() or not label.any():
        raise ConfigError(
            f"bump hunt: the sample needs background and signal jets (got {int((~label).sum())} background, "
            f"{int(label.sum())} signal); mix the signal into the background test jets"
        )
    return mass_gev, score, label


def _check_rejection(rejection: float) -> float:
    rejection = float(rejection)
    if not rejection >= 1.0 or not math.isfinite(rejection):
        raise ConfigError(
            f"bump hunt: rejection {rejection:g} must be >= 1 (a cut keeping 1/R of the background; "
            "Farina et al. use 1000)"
        )
    return rejection


def _check_window(window_gev, mass_gev: np.ndarray, *, on_data: bool = True) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in window_gev)
    except (TypeError, ValueError):
        raise ConfigError(f"bump hunt: window_gev is (low, high) in GeV, e.g. (340, 440); got {window_gev!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ConfigError(f"bump hunt: the mass window ({lo:g}, {hi:g}) GeV is empty; give low < high")
    if on_data and (hi <= mass_gev.min() or lo >= mass_gev.max() or not ((mass_gev >= lo) & (mass_gev < hi)).any()):
        raise ConfigError(
            f"bump hunt: the mass window ({lo:g}, {hi:g}) GeV is outside the data (jet masses "
            f"{mass_gev.min():.4g}-{mass_gev.max():.4g} GeV); move the window onto the signal's peak"
        )
    return lo, hi


# --------------------------------------------------------------------------------------
# the pieces


def signal_window(signal_mass_gev, coverage: float = DEFAULT_COVERAGE) -> tuple[float, float]:
    """The central mass interval holding ``coverage`` of the signal jets (its (1 -/+ coverage)/2 quantiles)."""
    m = np.asarray(signal_mass_gev, dtype=np.float64)
    if not 0.0 < coverage < 1.0:
        raise ConfigError(f"bump hunt: window coverage {coverage:g} is a share of the signal jets in (0, 1), e.g. 0.68")
    if m.ndim != 1 or not len(m):
        raise ConfigError("bump hunt: no signal jets to place the mass window on; pass window_gev instead")
    lo, hi = np.quantile(m, [(1.0 - coverage) / 2.0, (1.0 + coverage) / 2.0])
    return float(lo), float(hi)


def loss_threshold(score, label=None, rejection: float = DEFAULT_REJECTION, *, use_labels: bool = True) -> float:
    """The loss above which a jet is kept, so that the background is rejected ``rejection`` times.

    ``use_labels=True`` (the default, Farina et al.'s "rejects QCD by 1000"): the (1 - 1/R)
    quantile of the background jets' scores (truth labels, ``label == 0``). ``use_labels=False``:
    the same quantile of all jets' scores, which needs no labels (a search on data): it keeps
    1/R of all jets, so slightly less than 1/R of the background when signal sits above the cut."""
    rejection = _check_rejection(rejection)
    score = np.asarray(score, dtype=np.float64)
    if use_labels:
        if label is None:
            raise ConfigError("bump hunt: use_labels=True takes the background quantile and needs label; "
                              "or pass use_labels=False for the label-free cut")
        score = score[np.asarray(label) == 0]
    if not len(score):
        raise ConfigError("bump hunt: no jets to place the loss cut on")
    return float(np.quantile(score, 1.0 - 1.0 / rejection))


def _poly_design(mass_gev: np.ndarray, centre_gev: float, half_range_gev: float, degree: int) -> np.ndarray:
    x = (mass_gev - centre_gev) / half_range_gev
    return np.vander(x, degree + 1, increasing=True)


def sideband_fit(
    mass_gev,
    window_gev: tuple[float, float],
    sidebands_gev: tuple[float, float] | None = None,
    *,
    n_window_bins: int = 10,
    degree: int = 1,
    min_sideband_jets: int = MIN_SIDEBAND_JETS,
    max_iter: int = 100,
) -> dict[str, Any]:
    """Fit the falling background in the sidebands and interpolate it under the window.

    ``mass_gev``: the masses of the selected jets (signal and background alike: the fit never
    sees labels). ``sidebands_gev``: (low, high) of the fitted range around the window (default:
    ``SIDEBAND_WIDTHS`` window widths each side, cut at 0 GeV). Bins are one ``(hi - lo) / n_window_bins`` wide. The model is
    a density ``exp(theta_0 + theta_1 x + ... + theta_degree x^degree)`` per GeV in the scaled
    mass ``x`` (``degree`` 1: an exponential), fitted by binned Poisson maximum likelihood to the
    sideband bins only.

    Returns ``{"window_gev", "sidebands_gev", "edges_gev", "counts", "expected" (per bin, window
    bins included), "in_window" (bool per bin), "theta", "covariance", "n_sideband", "observed"
    (jets in the window), "b_fit", "b_fit_err" (from the fit's covariance), "s_fit", "s_fit_err"
    (sqrt(observed + b_fit_err^2)), "chi2" (Baker-Cousins: the Poisson likelihood ratio), "ndf"
    (sideband bins less parameters)}``."""
    mass_gev = np.asarray(mass_gev, dtype=np.float64)
    if mass_gev.ndim != 1 or not len(mass_gev):
        raise ConfigError("bump hunt: no jets passed to the sideband fit")
    lo, hi = _check_window(window_gev, mass_gev, on_data=False)
    width = hi - lo
    if sidebands_gev is None:
        sb_lo, sb_hi = max(0.0, lo - SIDEBAND_WIDTHS * width), hi + SIDEBAND_WIDTHS * width
    else:
        sb_lo, sb_hi = (float(x) for x in sidebands_gev)
    if not sb_lo < lo or not sb_hi > hi:
        raise ConfigError(
            f"bump hunt: sidebands ({sb_lo:g}, {sb_hi:g}) GeV must reach past the window ({lo:g}, {hi:g}) on both sides"
        )
    if degree < 0 or n_window_bins < 1:
        raise ConfigError(f"bump hunt: degree >= 0 and n_window_bins >= 1 (got {degree}, {n_window_bins})")
    bin_gev = width / n_window_bins
    n_lo = max(1, int(round((lo - sb_lo) / bin_gev)))
    n_hi = max(1, int(round((sb_hi - hi) / bin_gev)))
    edges = np.r_[np.linspace(sb_lo, lo, n_lo + 1)[:-1], np.linspace(lo, hi, n_window_bins + 1)[:-1],
                  np.linspace(hi, sb_hi, n_hi + 1)]
    counts = np.histogram(mass_gev, bins=edges)[0].astype(np.float64)
    in_window = np.zeros(len(counts), dtype=bool)
    in_window[n_lo : n_lo + n_window_bins] = True
    side = ~in_window
    n_side = int(counts[side].sum())
    need = max(int(min_sideband_jets), degree + 2)
    if n_side < need:
        raise ConfigError(
            f"bump hunt: {n_side} jets in the sidebands ({sb_lo:.4g}-{lo:.4g} and {hi:.4g}-{sb_hi:.4g} GeV) "
            f"after the cut, too few to fit a falling shape (need {need}): use more test jets, a lower "
            "rejection, wider sidebands or a lower degree"
        )
    mids = 0.5 * (edges[1:] + edges[:-1])
    widths = np.diff(edges)
    centre, half = 0.5 * (sb_lo + sb_hi), 0.5 * (sb_hi - sb_lo)
    design = _poly_design(mids, centre, half, degree)
    offset = np.log(widths)  # expected = width * density at the bin centre
    a, y, off = design[side], counts[side], offset[side]

    def nll(theta):
        eta = a @ theta + off
        return float(np.sum(np.exp(eta) - y * eta))

    theta = np.zeros(degree + 1)
    theta[0] = math.log(max(n_side, 1) / widths[side].sum())
    value = nll(theta)
    for _ in range(max_iter):  # Newton steps on a convex likelihood, halved until it falls
        mu = np.exp(a @ theta + off)
        grad = a.T @ (mu - y)
        hess = (a * mu[:, None]).T @ a
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            trial = theta - t * step
            v = nll(trial)
            if v <= value:
                break
            t *= 0.5
        else:
            break  # no step lowers the likelihood any more: at the minimum
        theta, change, value = trial, value - v, v
        if change < 1e-10 * max(1.0, abs(value)):
            break
    mu_side = np.exp(a @ theta + off)
    cov = np.linalg.inv((a * mu_side[:, None]).T @ a)  # the inverse Fisher information
    expected = np.exp(design @ theta + offset)
    b_fit = float(expected[in_window].sum())
    g = design[in_window].T @ expected[in_window]  # d b_fit / d theta
    b_err = float(math.sqrt(max(g @ cov @ g, 0.0)))
    observed = int(counts[in_window].sum())
    s_fit = observed - b_fit
    # Baker-Cousins chi2 (the Poisson likelihood ratio to a perfect fit): sound for bins of few jets
    chi2 = float(2.0 * np.sum(mu_side - y + np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / mu_side), 0.0)))
    return {
        "window_gev": (lo, hi), "sidebands_gev": (float(sb_lo), float(sb_hi)), "edges_gev": edges, "counts": counts,
        "expected": expected, "in_window": in_window, "theta": theta, "covariance": cov, "degree": int(degree),
        "centre_gev": float(centre), "half_range_gev": float(half), "n_sideband": n_side, "observed": observed,
        "b_fit": b_fit, "b_fit_err": b_err, "s_fit": float(s_fit), "s_fit_err": float(math.sqrt(observed + b_err**2)),
        "chi2": chi2, "ndf": int(side.sum()) - (degree + 1),
    }


def fitted_counts(fit: dict[str, Any], edges_gev) -> np.ndarray:
    """The fitted background's expected counts in bins ``edges_gev`` (for drawing the fit on any histogram)."""
    edges = np.asarray(edges_gev, dtype=np.float64)
    sub = (np.arange(_SUB_BINS) + 0.5) / _SUB_BINS  # midpoint rule on 32 sub-bins of each bin
    widths = np.diff(edges)
    points = edges[:-1, None] + widths[:, None] * sub[None, :]
    density = np.exp(_poly_design(points.ravel(), fit["centre_gev"], fit["half_range_gev"], fit["degree"]) @ fit["theta"])
    return widths * density.reshape(points.shape).mean(axis=1)


def s_over_b(s: float, b: float) -> tuple[float, float]:
    """S/B and its Poisson uncertainty, sqrt(S + S^2 / B) / B (NaN where B is 0)."""
    if b <= 0:
        return float("nan"), float("nan")
    return s / b, math.sqrt(s + s * s / b) / b


def _window_counts(mass_gev, label, keep, lo, hi) -> dict[str, float]:
    inside = keep & (mass_gev >= lo) & (mass_gev < hi)
    s, b = int((inside & label).sum()), int((inside & ~label).sum())
    r, err = s_over_b(s, b)
    return {"s": s, "b": b, "s_over_b": r, "s_over_b_err": err, "n_jets": int(keep.sum())}


def bump_hunt(
    mass_gev,
    score,
    label,
    *,
    window_gev: tuple[float, float] | None = None,
    coverage: float = DEFAULT_COVERAGE,
    rejection: float = DEFAULT_REJECTION,
    use_labels: bool = True,
    sidebands_gev: tuple[float, float] | None = None,
    n_window_bins: int = 10,
    degree: int = 1,
    min_sideband_jets: int = MIN_SIDEBAND_JETS,
    fit: bool = True,
) -> dict[str, Any]:
    """Farina et al.'s bump hunt (arXiv:1808.08992 sec. 6) on one mixed sample.

    ``mass_gev``, ``score`` (the anomaly score, e.g. the AE loss: high = anomalous), ``label``
    (1 = signal, 0 = background) per jet. ``window_gev``: the mass window (default: the central
    ``coverage`` of the signal jets' masses). ``rejection``: the loss cut keeps 1/R of the
    background (:func:`loss_threshold`; ``use_labels`` as there). ``fit``: also run
    :func:`sideband_fit` after the cut (``"fit"``) and before it (``"fit_before"``, None where
    its sidebands are too thin); a fit after the cut that cannot be made raises ConfigError.

    Returns ``{"window_gev", "threshold", "rejection", "use_labels", "background_kept" (share of
    background jets passing), "signal_kept", "before": {"s", "b", "s_over_b", "s_over_b_err",
    "n_jets"}, "after": {...}, "fit", "fit_before"}``: S, B (truth) in the window; the error of
    S/B is Poisson (:func:`s_over_b`)."""
    mass_gev, score, label = _arrays(mass_gev, score, label)
    rejection = _check_rejection(rejection)
    if window_gev is None:
        window_gev = signal_window(mass_gev[label], coverage)
    lo, hi = _check_window(window_gev, mass_gev)
    threshold = loss_threshold(score, label.astype(np.int64), rejection, use_labels=use_labels)
    keep = score > threshold
    everything = np.ones(len(mass_gev), dtype=bool)
    out: dict[str, Any] = {
        "window_gev": (lo, hi), "threshold": threshold, "rejection": rejection, "use_labels": bool(use_labels),
        "background_kept": float(keep[~label].mean()), "signal_kept": float(keep[label].mean()),
        "before": _window_counts(mass_gev, label, everything, lo, hi),
        "after": _window_counts(mass_gev, label, keep, lo, hi),
        "fit": None, "fit_before": None,
    }
    if fit:
        opts = dict(sidebands_gev=sidebands_gev, n_window_bins=n_window_bins, degree=degree,
                    min_sideband_jets=min_sideband_jets)
        try:
            out["fit_before"] = sideband_fit(mass_gev, (lo, hi), **opts)
        except ConfigError:
            out["fit_before"] = None
        if not keep.any():
            raise ConfigError(
                f"bump hunt: no jet passes the loss cut (rejection {rejection:g} of {int((~label).sum())} background "
                "jets): use more test jets or a lower rejection"
            )
        out["fit"] = sideband_fit(mass_gev[keep], (lo, hi), **opts)
    return out
