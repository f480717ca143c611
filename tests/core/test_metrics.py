"""Metrics against by-hand definitions and known closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core.metrics import auc, bands, e10_e100, eps_s_at, inv_eb_at, js_divergence, mass_sculpting, roc


def gaussians(n=20000, shift=1.0, seed=0):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(shift, 1, n), rng.normal(0, 1, n)]
    y = np.r_[np.ones(n), np.zeros(n)]
    return s, y


def test_auc_of_two_gaussians_matches_the_closed_form():
    from math import erf, sqrt

    s, y = gaussians(shift=1.0)
    # AUC = Phi(shift / sqrt(2))
    assert auc(s, y) == pytest.approx(0.5 * (1 + erf(1.0 / sqrt(2) / sqrt(2))), abs=0.005)
    assert auc(-s, y) == pytest.approx(1 - auc(s, y), abs=1e-12)


def test_auc_equals_the_pair_counting_definition_with_ties():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)
    y = rng.integers(0, 2, 300)
    sig, bkg = s[y == 1], s[y == 0]
    by_hand = ((sig[:, None] > bkg[None, :]).sum() + 0.5 * (sig[:, None] == bkg[None, :]).sum()) / (len(sig) * len(bkg))
    assert auc(s, y) == pytest.approx(by_hand, abs=1e-12)


def test_roc_endpoints_and_monotonic():
    s, y = gaussians(2000)
    b, e, t = roc(s, y)
    assert (b[0], e[0]) == (0, 0) and (b[-1], e[-1]) == (1, 1)
    assert (np.diff(b) >= 0).all() and (np.diff(e) >= 0).all() and (np.diff(t) < 0).all()


def test_working_points_by_hand():
    s, y = gaussians(50000, shift=2.0, seed=3)
    sig, bkg = s[y == 1], s[y == 0]
    cut = np.quantile(bkg, 0.9)
    assert eps_s_at(s, y, 0.1) == pytest.approx(np.mean(sig > cut), abs=0.005)
    e10, e100 = e10_e100(s, y)
    assert e10 > e100 > 0
    cut30 = np.quantile(sig, 0.7)
    assert inv_eb_at(s, y, 0.3) == pytest.approx(1 / np.mean(bkg > cut30), rel=0.05)


def test_bands_use_disjoint_subsamples():
    s, y = gaussians(5000, shift=1.0)
    mean, std = bands(auc, s, y, n_subsamples=10)
    assert mean == pytest.approx(auc(s, y), abs=0.01)
    assert 0 < std < 0.02


def test_js_divergence_limits():
    p = np.array([1.0, 2.0, 3.0])
    assert js_divergence(p, 2 * p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(np.log(2))


def test_sculpting_sees_a_mass_correlated_score():
    rng = np.random.default_rng(5)
    m = rng.exponential(60.0, 50000)
    flat = mass_sculpting(m, rng.random(len(m)))
    sculpt = mass_sculpting(m, m + rng.normal(0, 5, len(m)))
    assert flat["jsd"][0.05] < 0.02 < sculpt["jsd"][0.05]
    score = m + rng.normal(0, 5, len(m))
    sel = mass_sculpting(m, score)
    in_range = (score >= sel["thresholds"][0.05]) & (m < 400.0)
    assert sel["selected"][0.05].sum() == in_range.sum()
    with pytest.raises(ValueError, match="needs both classes"):
        roc(np.ones(3), np.ones(3))
