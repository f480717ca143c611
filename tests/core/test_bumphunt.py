"""core.bumphunt (Farina, Nakai & Shih sec. 6): the loss cut keeps 1/R of the background, S/B in the
window rises when the score separates, the sideband fit recovers an injected peak within its
uncertainty, and bad input is one clear ConfigError. Statistical method tests on arrays drawn from a
known falling spectrum plus a Gaussian peak."""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core.bumphunt import bump_hunt, fitted_counts, loss_threshold, s_over_b, sideband_fit, signal_window
from jetscan.core.errors import ConfigError

WINDOW = (360.0, 440.0)
SIDEBANDS = (260.0, 540.0)


def _spectrum(rng, n_bkg=20000, n_sig=300, sigma_gev=15.0):
    """Background masses falling exponentially from 200 GeV (slope 80 GeV), signal a peak at 400 GeV."""
    return 200.0 + rng.exponential(80.0, n_bkg), rng.normal(400.0, sigma_gev, n_sig)


def _in(m, window=WINDOW):
    return int(((m >= window[0]) & (m < window[1])).sum())


def test_sideband_fit_recovers_an_injected_peak_within_its_uncertainty():
    rng = np.random.default_rng(11)
    b, s = _spectrum(rng)
    fit = sideband_fit(np.r_[b, s], WINDOW, SIDEBANDS)
    assert fit["observed"] == _in(b) + _in(s)
    assert abs(fit["s_fit"] - _in(s)) < 2.0 * fit["s_fit_err"]
    assert abs(fit["b_fit"] - _in(b)) < 2.0 * np.hypot(fit["b_fit_err"], np.sqrt(_in(b)))
    assert fit["s_fit"] > 3.0 * fit["s_fit_err"]  # a 300-jet peak on ~1700 jets is seen
    assert fit["chi2"] / fit["ndf"] < 2.0  # the exponential describes the sidebands
    # the fitted curve integrates to the fitted background under the window
    assert fitted_counts(fit, [WINDOW[0], WINDOW[1]])[0] == pytest.approx(fit["b_fit"], rel=0.01)
    # many draws: the pulls centre on 0 and are not wider than the quoted uncertainty
    pulls = []
    for seed in range(40):
        b, s = _spectrum(np.random.default_rng(100 + seed))
        f = sideband_fit(np.r_[b, s], WINDOW, SIDEBANDS)
        pulls.append((f["s_fit"] - _in(s)) / f["s_fit_err"])
    assert abs(np.mean(pulls)) < 0.45 and 0.5 < np.std(pulls) < 1.3
    # without a peak the estimate is consistent with no signal
    f0 = sideband_fit(b, WINDOW, SIDEBANDS)
    assert abs(f0["s_fit"]) < 2.5 * f0["s_fit_err"]


def test_sideband_fit_of_a_curved_spectrum_needs_the_second_order():
    """A log-quadratic background: degree 2 fits it (and the default sidebands of one window width work)."""
    rng = np.random.default_rng(5)
    m = rng.uniform(150.0, 650.0, 400000)
    keep = rng.uniform(size=len(m)) < np.exp(-((m - 150.0) / 200.0) ** 2)  # falls faster and faster
    b = m[keep]
    f2 = sideband_fit(b, WINDOW, degree=2)
    assert f2["sidebands_gev"] == (200.0, 600.0)  # two window widths each side
    assert abs(f2["s_fit"]) < 2.5 * f2["s_fit_err"]
    f1 = sideband_fit(b, WINDOW, degree=1)
    assert f1["chi2"] / f1["ndf"] > 2.0 * f2["chi2"] / f2["ndf"]  # the exponential misses the curvature


@pytest.mark.parametrize("rejection", [10.0, 1000.0])
def test_the_cut_at_rejection_r_keeps_one_in_r_background_jets(rejection):
    rng = np.random.default_rng(3)
    n_bkg, n_sig = 200000, 200
    score = np.r_[rng.exponential(1.0, n_bkg), rng.exponential(1.0, n_sig) + 3.0]
    label = np.r_[np.zeros(n_bkg, np.int64), np.ones(n_sig, np.int64)]
    mass = np.r_[200.0 + rng.exponential(80.0, n_bkg), rng.normal(400.0, 15.0, n_sig)]
    t = loss_threshold(score, label, rejection)
    assert abs(int((score[:n_bkg] > t).sum()) - n_bkg / rejection) <= 1
    # label-free: 1/R of all jets pass, so fewer background jets than with the truth cut
    t_free = loss_threshold(score, rejection=rejection, use_labels=False)
    assert abs(int((score > t_free).sum()) - (n_bkg + n_sig) / rejection) <= 1
    assert t_free >= t
    out = bump_hunt(mass, score, label, window_gev=WINDOW, rejection=rejection, fit=False)
    assert out["background_kept"] == pytest.approx(1.0 / rejection, rel=0.01)
    assert out["threshold"] == t and out["fit"] is None


def test_s_over_b_rises_after_the_cut_when_the_score_separates():
    rng = np.random.default_rng(7)
    n_bkg, n_sig = 200000, 400
    mass = np.r_[200.0 + rng.exponential(80.0, n_bkg), rng.normal(400.0, 15.0, n_sig)]
    label = np.r_[np.zeros(n_bkg, np.int64), np.ones(n_sig, np.int64)]
    separating = np.r_[rng.exponential(1.0, n_bkg), rng.exponential(1.0, n_sig) + 4.0]
    out = bump_hunt(mass, separating, label, rejection=100.0, sidebands_gev=SIDEBANDS)
    lo, hi = out["window_gev"]
    inside = (mass[n_bkg:] >= lo) & (mass[n_bkg:] < hi)
    assert inside.mean() == pytest.approx(0.68, abs=0.01)  # the default window: the central 68 % of the signal
    before, after = out["before"], out["after"]
    assert before["s"] == int(inside.sum()) and before["b"] == _in(mass[:n_bkg], (lo, hi))
    assert before["s_over_b"] < 0.05
    assert after["s_over_b"] > before["s_over_b"] + 3.0 * after["s_over_b_err"]
    assert out["signal_kept"] > 0.5 and out["fit"]["observed"] == after["s"] + after["b"]
    assert out["fit_before"]["s_fit"] == pytest.approx(before["s"], abs=3.0 * out["fit_before"]["s_fit_err"])
    # a score that does not separate leaves S/B where it was (within its uncertainty): the rise is the score's
    blind = rng.exponential(1.0, n_bkg + n_sig)
    flat = bump_hunt(mass, blind, label, rejection=100.0, fit=False)["after"]
    assert abs(flat["s_over_b"] - before["s_over_b"]) < 3.0 * flat["s_over_b_err"] + 1e-9
    assert s_over_b(10, 40) == (0.25, pytest.approx(np.sqrt(10 + 100 / 40) / 40))


def test_bad_input_is_one_clear_error():
    rng = np.random.default_rng(1)
    mass = np.r_[200.0 + rng.exponential(80.0, 2000), rng.normal(400.0, 15.0, 50)]
    score = rng.exponential(1.0, len(mass))
    label = np.r_[np.zeros(2000, np.int64), np.ones(50, np.int64)]
    with pytest.raises(ConfigError, match=r"window \(440, 360\) GeV is empty"):
        bump_hunt(mass, score, label, window_gev=(440.0, 360.0))
    with pytest.raises(ConfigError, match="outside the data"):
        bump_hunt(mass, score, label, window_gev=(5000.0, 6000.0))
    with pytest.raises(ConfigError, match=r"rejection 0.5 must be >= 1"):
        bump_hunt(mass, score, label, rejection=0.5)
    with pytest.raises(ConfigError, match=r"too few to fit a falling shape \(need 10\)"):
        bump_hunt(mass, score, label, window_gev=WINDOW, rejection=1000.0)  # 2 background jets pass
    with pytest.raises(ConfigError, match="one length per jet"):
        bump_hunt(mass[:-1], score, label)
    with pytest.raises(ConfigError, match="needs background and signal"):
        bump_hunt(mass, score, np.zeros_like(label))
    with pytest.raises(ConfigError, match="holds 0 .background. and 1 .signal. only"):
        bump_hunt(mass, score, label * 2)
    with pytest.raises(ConfigError, match="coverage 1.5"):
        signal_window(mass[label == 1], 1.5)
    with pytest.raises(ConfigError, match="must reach past the window"):
        sideband_fit(mass, WINDOW, (370.0, 540.0))
