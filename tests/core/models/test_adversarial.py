"""Tests for jetscan.core.models.adversarial: mass bins, the adversary, the alternating step."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jetscan.core.errors import ConfigError  # noqa: E402
from jetscan.core.models import (  # noqa: E402
    AdversarialLosses,
    MassAdversary,
    adversarial_step,
    build_model,
    mass_bin_edges,
    mass_bin_labels,
)


@pytest.fixture
def qcd_masses():
    """A falling QCD-like jet-mass spectrum (GeV): a threshold at 10 and an exponential tail."""
    rng = np.random.default_rng(12)
    return 10.0 + rng.exponential(45.0, 20_000)


def test_bins_hold_equal_qcd_populations(qcd_masses):
    edges = mass_bin_edges(qcd_masses, n_bins=10)
    assert edges.shape == (11,) and np.all(np.diff(edges) > 0)
    assert edges[0] == qcd_masses.min() and edges[-1] == qcd_masses.max()
    labels = mass_bin_labels(qcd_masses, edges)
    assert labels.dtype == np.int64 and labels.min() == 1 and labels.max() == 10
    counts = np.bincount(labels, minlength=12)
    assert counts[0] == counts[11] == 0  # the QCD sample itself has no under/overflow
    assert counts[1:11].max() - counts[1:11].min() <= 1
    assert counts[1:11].sum() == 20_000
    # a falling spectrum: bins widen with mass
    assert np.all(np.diff(np.diff(edges)) > 0)


def test_bin_labels_underflow_inside_overflow(qcd_masses):
    edges = mass_bin_edges(qcd_masses, n_bins=10)
    probe = np.array([edges[0] - 1.0, edges[0], 0.5 * (edges[0] + edges[1]), edges[1],
                      edges[5] - 1e-9, edges[-1], edges[-1] + 1.0, 1e6])
    assert mass_bin_labels(probe, edges).tolist() == [0, 1, 1, 2, 5, 10, 11, 11]
    labels = mass_bin_labels(torch.from_numpy(probe), edges)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.long
    assert labels.tolist() == [0, 1, 1, 2, 5, 10, 11, 11]


def test_mass_range_restricts_the_bins(qcd_masses):
    edges = mass_bin_edges(qcd_masses, n_bins=5, mass_range=(20.0, 150.0))
    assert edges[0] >= 20.0 and edges[-1] <= 150.0
    labels = mass_bin_labels(qcd_masses, edges)
    inside = (qcd_masses >= edges[0]) & (qcd_masses <= edges[-1])
    counts = np.bincount(labels[inside], minlength=7)[1:6]
    assert counts.max() - counts.min() <= 1
    assert set(np.unique(labels[~inside])) == {0, 6}


def test_bad_mass_inputs_raise():
    with pytest.raises(ConfigError, match="too many ties"):
        mass_bin_edges(np.r_[np.zeros(500), np.linspace(1, 2, 100)], n_bins=10)
    with pytest.raises(ConfigError, match=r"n_bins: must be a positive integer \(got 0\)"):
        mass_bin_edges(np.arange(100.0), n_bins=0)
    with pytest.raises(ConfigError, match="must be finite"):
        mass_bin_edges(np.array([1.0, np.nan, 3.0]), n_bins=1)
    with pytest.raises(ConfigError, match="lower edge 5.0 must be below upper edge 1.0"):
        mass_bin_edges(np.arange(100.0), mass_range=(5, 1))
    with pytest.raises(ConfigError, match="strictly increasing"):
        mass_bin_labels(np.arange(3.0), [1.0, 1.0, 2.0])


def test_mass_adversary_architecture():
    torch.manual_seed(0)
    adv = MassAdversary()
    sizes = (1600, 800, 400, 200, 100, 50, 25, 10, 12)
    by_hand = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert by_hand == 1_708_217
    assert sum(p.numel() for p in adv.parameters()) == by_hand
    logits = adv(torch.rand(5, 40, 40))
    assert logits.shape == (5, 12) and adv.n_classes == 12
    torch.testing.assert_close(adv.predict_proba(torch.rand(5, 1600)).sum(-1), torch.ones(5))
    assert adv.loss(logits, torch.tensor([0, 3, 11, 5, 1])).shape == (5,)
    assert adv.adv_lambda == 5e-4
    with pytest.raises(ConfigError, match=r"mass_adversary.n_inputs: is 1600 but the AE output has 64"):
        adv(torch.rand(2, 8, 8))
    with pytest.raises(ConfigError, match=r"mass_adversary.adv_lambda: must be a finite number >= 0 \(got -1\)"):
        MassAdversary(adv_lambda=-1)
    assert MassAdversary(n_bins=50, n_inputs=64).n_classes == 52


def _small_setup(seed=0):
    torch.manual_seed(seed)
    ae, _ = build_model("image_ae", image_size=8, filters=2, bottleneck=3)
    adv = MassAdversary(n_inputs=64, adv_lambda=0.3)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((16, 8, 8)))
    labels = torch.from_numpy(rng.integers(0, 12, 16))
    return ae.double(), adv.double(), x, labels  # float64: the by-hand comparison is exact


def _sgd_by_hand(ae, adv, x, labels, lam, lr):
    """The alternating update written out with autograd.grad and plain SGD."""
    f = torch.nn.functional
    recon = ae(x)
    l_auto = ae.loss(x, recon).mean()
    l_adv = f.cross_entropy(adv(recon), labels)
    grads = torch.autograd.grad(l_auto - lam * l_adv, list(ae.parameters()))
    with torch.no_grad():
        for p, g in zip(ae.parameters(), grads):
            p -= lr * g
        recon = ae(x)
    l_adv2 = f.cross_entropy(adv(recon), labels)
    grads = torch.autograd.grad(l_adv2, list(adv.parameters()))
    with torch.no_grad():
        for p, g in zip(adv.parameters(), grads):
            p -= lr * g
    return float(l_auto.detach()), float(l_adv2.detach())


def test_adversarial_step_is_one_ae_step_then_one_adversary_step():
    ae, adv, x, labels = _small_setup()
    ae_ref, adv_ref = copy.deepcopy(ae), copy.deepcopy(adv)
    lr = 0.05
    opt_ae = torch.optim.SGD(ae.parameters(), lr=lr)
    opt_adv = torch.optim.SGD(adv.parameters(), lr=lr)
    for _ in range(2):
        losses = adversarial_step(ae, adv, opt_ae, opt_adv, x, labels, 0.3)
        expected = _sgd_by_hand(ae_ref, adv_ref, x, labels, 0.3, lr)
        assert isinstance(losses, AdversarialLosses)
        assert isinstance(losses.auto, float) and isinstance(losses.adv, float)
        assert losses == pytest.approx(expected, rel=1e-5)
    for p, q in zip(ae.parameters(), ae_ref.parameters()):
        torch.testing.assert_close(p, q)
    for p, q in zip(adv.parameters(), adv_ref.parameters()):
        torch.testing.assert_close(p, q)
    assert all(p.requires_grad for p in adv.parameters())  # unfrozen again


def test_adversarial_step_sign_and_default_lambda():
    """adv_lambda > 0 moves the AE up the adversary's loss: with SGD the AE update shifts by
    exactly ``+lr * adv_lambda * grad(L_adv)``; ``adv_lambda=None`` takes the adversary's."""
    ae, adv, x, labels = _small_setup(1)
    lr, lam = 1e-3, 0.3
    grad_adv = torch.autograd.grad(
        torch.nn.functional.cross_entropy(adv(ae(x)), labels), list(ae.parameters()))
    runs = {}
    for key in (0.0, lam, None):
        a, d = copy.deepcopy(ae), copy.deepcopy(adv)
        adversarial_step(a, d, torch.optim.SGD(a.parameters(), lr=lr),
                         torch.optim.SGD(d.parameters(), lr=lr), x, labels, key)
        runs[key] = list(a.parameters())
    shift = [p - q for p, q in zip(runs[lam], runs[0.0])]
    for s_, g in zip(shift, grad_adv):
        torch.testing.assert_close(s_, lr * lam * g, rtol=1e-6, atol=1e-15)
    ascent = sum((s_ * g).sum() for s_, g in zip(shift, grad_adv))
    assert ascent > 0  # first-order change of L_adv: lr * lam * |grad|^2
    for p, q in zip(runs[None], runs[lam]):  # adv.adv_lambda == 0.3
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"adversarial_step.adv_lambda: must be a finite number >= 0"):
        adversarial_step(ae, adv, torch.optim.SGD(ae.parameters(), lr=0.1),
                         torch.optim.SGD(adv.parameters(), lr=0.1), x, labels, -1.0)
