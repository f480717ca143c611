"""Tests for jetscan.core.models.lola: CoLa, LoLa invariants, the LoLa tagger and LoLa AE inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jetscan.core.errors import ConfigError  # noqa: E402
from jetscan.core.models import CoLa, LoLa, build_model  # noqa: E402


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def boost(beta):
    beta = np.asarray(beta, dtype=np.float64)
    b2 = beta @ beta
    gamma = 1.0 / math.sqrt(1.0 - b2)
    lam = np.eye(4)
    lam[0, 0] = gamma
    lam[0, 1:] = lam[1:, 0] = -gamma * beta
    lam[1:, 1:] += (gamma - 1.0) * np.outer(beta, beta) / b2
    return lam


def lorentz(rotation, beta):
    rot = np.eye(4)
    rot[1:, 1:] = rotation
    return boost(beta) @ rot


def transform(p4s, lam):
    """Apply ``lam`` to every four-vector ``(..., 4)`` (float64 tensor)."""
    return p4s @ torch.from_numpy(lam).T


def metric_check(lam):
    g = np.diag([1.0, -1.0, -1.0, -1.0])
    np.testing.assert_allclose(lam.T @ g @ lam, g, atol=1e-12)


@pytest.fixture
def p4s(spray_p4s):
    return torch.from_numpy(spray_p4s(6, 3, seed=5)).double()


def test_cola_matrix_and_outputs():
    torch.manual_seed(0)
    cola = CoLa(5, 3, identity=True, total=True)
    c = cola.matrix()
    assert c.shape == (5, 5 + 1 + 3) and cola.n_out == 9
    torch.testing.assert_close(c[:, :5], torch.eye(5))
    torch.testing.assert_close(c[:, 5], torch.ones(5))
    assert c[:, 6:].abs().max() <= 0.05
    x = torch.randn(2, 5, 4)
    out = cola(x)
    assert out.shape == (2, 9, 4)
    torch.testing.assert_close(out[:, :5], x)
    torch.testing.assert_close(out[:, 5], x.sum(1))
    torch.testing.assert_close(out[:, 6:], torch.einsum("bif,ij->bjf", x, c[:, 6:]))
    assert CoLa(40, 15).n_out == 55  # the tagger's 40 + 15


def test_lola_features_by_hand(p4s):
    torch.manual_seed(0)
    lola = LoLa(40, n_train_es=1, n_sum_dijs=2, n_min_dijs=2).double()
    assert lola.feature_names == ("m2", "pt", "e_sum_0", "d2_sum_0", "d2_sum_1", "d2_min_0", "d2_min_1")
    out = lola(p4s)
    assert out.shape == (6, 40, 7)
    e, px, py, pz = p4s.unbind(-1)
    torch.testing.assert_close(out[..., 0], e**2 - px**2 - py**2 - pz**2)
    torch.testing.assert_close(out[..., 1], torch.sqrt(px**2 + py**2))
    torch.testing.assert_close(out[..., 2], e @ lola.w_e[0].T)
    # plain loops for one jet and one vector: d2_jm = (k_j - k_m)^2 in the Minkowski metric
    b, j = 1, 3
    d2 = [(e[b, j] - e[b, m]) ** 2 - (px[b, j] - px[b, m]) ** 2 - (py[b, j] - py[b, m]) ** 2
          - (pz[b, j] - pz[b, m]) ** 2 for m in range(40)]
    d2 = torch.stack(d2)
    torch.testing.assert_close(out[b, j, 3], (lola.w_d_sum[0, j] * d2).sum())
    torch.testing.assert_close(out[b, j, 6], (lola.w_d_min[1, j] * d2).min())


def test_lola_mass_and_distance_features_are_lorentz_invariant(p4s):
    torch.manual_seed(1)
    model, _ = build_model("lola_tagger")
    model = model.double()
    names = model.lola.feature_names
    invariant = [i for i, n in enumerate(names) if n == "m2" or n.startswith("d2_")]
    assert len(invariant) == 5
    rng = np.random.default_rng(7)
    before = model.features(p4s)
    for _ in range(3):
        beta = rng.normal(size=3)
        lam = lorentz(random_rotation(rng), 0.8 * beta / np.linalg.norm(beta))
        metric_check(lam)
        after = model.features(transform(p4s, lam))
        torch.testing.assert_close(after[..., invariant], before[..., invariant], rtol=1e-9, atol=1e-10)
        # the energies are frame dependent, and so are the weighted energy sums
        assert not torch.allclose(after[..., names.index("e_sum_0")], before[..., names.index("e_sum_0")])
    # pT is invariant under rotations about z and boosts along z only
    c, s = math.cos(0.7), math.sin(0.7)
    lam = lorentz(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), [0.0, 0.0, 0.6])
    after = model.features(transform(p4s, lam))
    torch.testing.assert_close(after[..., 1], before[..., 1], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(after[..., 0], before[..., 0], rtol=1e-9, atol=1e-10)


def test_lola_ae_masses_are_lorentz_invariant(p4s):
    torch.manual_seed(2)
    model, _ = build_model("lola_ae")
    model = model.double()
    ext = model.extended(p4s)
    assert ext.shape == (6, 51, 5)
    # the jet sum (column 40) carries the jet mass; massless constituents have mass 0
    jet = p4s.sum(1)
    mass = torch.sqrt(jet[:, 0] ** 2 - (jet[:, 1:] ** 2).sum(-1))
    torch.testing.assert_close(ext[:, 40, 4], mass)
    assert ext[:, :40, 4].abs().max() < 1e-3  # massless to float32 rounding of the inputs
    rng = np.random.default_rng(3)
    lam = lorentz(random_rotation(rng), [0.3, -0.5, 0.4])
    after = model.extended(transform(p4s, lam))
    torch.testing.assert_close(after[..., 4], ext[..., 4], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["lola_tagger", "lola_ae"])
def test_zero_padding_gives_finite_gradients(name, spray_p4s):
    torch.manual_seed(0)
    model, _ = build_model(name, n_constituents=40)
    x = torch.from_numpy(spray_p4s(4, 2, seed=1))
    x[:, 20:] = 0.0  # padding rows
    out = model(x)
    loss = model.loss(out, torch.tensor([0, 1, 0, 1])) if name == "lola_tagger" else model.loss(x, out)
    assert torch.isfinite(loss).all()
    loss.mean().backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_lola_shapes_and_parameter_counts():
    module, info = build_model("lola_tagger")
    # CoLa 40 x 15; LoLa 5 weight matrices of 55 x 55; dense 385-100-50-2
    by_hand = 40 * 15 + 5 * 55 * 55 + (385 * 100 + 100) + (100 * 50 + 50) + (50 * 2 + 2)
    assert info.n_params == by_hand == 59_477
    assert module(torch.rand(3, 40, 4)).shape == (3, 2)
    module, info = build_model("lola_ae")
    # CoLa 40 x 10; 255-100(PReLU)-10(PReLU); 10-100(PReLU)-160
    by_hand = (40 * 10 + (255 * 100 + 100) + 100 + (100 * 10 + 10) + 10
               + (10 * 100 + 100) + 100 + (100 * 160 + 160))
    assert info.n_params == by_hand == 44_480
    assert module(torch.rand(3, 40, 4)).shape == (3, 40, 4)
    assert build_model("lola_tagger", train_metric=True)[1].n_params == 59_477 + 4
    with pytest.raises(ConfigError, match=r"lola_tagger expects four-vectors \(n, 40, 4\)"):
        build_model("lola_tagger")[0](torch.rand(3, 30, 4))


def test_lola_tagger_separates_one_from_three_prong_sprays(spray_p4s):
    torch.manual_seed(4)
    x = torch.from_numpy(np.concatenate([spray_p4s(160, 1, seed=30), spray_p4s(160, 3, seed=31)]))
    y = torch.cat([torch.zeros(160, dtype=torch.long), torch.ones(160, dtype=torch.long)])
    model, _ = build_model("lola_tagger")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = model.loss(model(x[idx]), y[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt = torch.from_numpy(np.concatenate([spray_p4s(100, 1, seed=40), spray_p4s(100, 3, seed=41)]))
    yt = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    with torch.no_grad():
        acc = ((model.score(xt) > 0.5).long() == yt).float().mean().item()
    assert acc > 0.8, acc
