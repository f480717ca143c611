"""The models read what jetscan.core makes: heimel40 and ms37x4 images, lola_inputs four-vectors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jetscan.core.models import build_model  # noqa: E402


@pytest.fixture
def tiny_constituents():
    """Four seeded synthetic fat jets of up to 30 massless constituents (pT-ordered, padded)."""
    rng = np.random.default_rng(2026)
    n, m = 4, 30
    pt = np.sort(rng.exponential(30.0, (n, m)), axis=1)[:, ::-1].copy()
    pt[:, 25:] = 0.0  # padding
    eta = 0.3 + rng.normal(0, 0.25, (n, m))
    phi = 1.0 + rng.normal(0, 0.25, (n, m))
    e = pt * np.cosh(eta)
    kind = rng.integers(0, 3, (n, m))
    kind[:, 25:] = -1
    return pt, eta, phi, e, kind


@pytest.mark.parametrize("name", ["deeptop_minimal", "pca", "dense_ae", "cnn_ae", "image_ae"])
def test_heimel40_images_feed_the_image_models(name, tiny_constituents):
    from jetscan.core.images import heimel40

    pt, eta, phi, _, _ = tiny_constituents
    x = torch.from_numpy(heimel40(pt, eta, phi))
    module, info = build_model(name, **({"bottleneck": 3} if name == "pca" else {}))  # 4 jets
    assert tuple(x.shape[1:]) == info.input_shape and info.representation == "heimel40"
    if name == "pca":
        module.fit(x)
    out = module(x)
    assert torch.isfinite(out).all()
    assert out.shape == ((4, 2) if info.kind == "tagger" else x.shape)


def test_ms37x4_images_feed_macaluso_shih(tiny_constituents):
    from jetscan.core.images import ms37x4

    pt, eta, phi, _, kind = tiny_constituents
    x = torch.from_numpy(ms37x4(pt, eta, phi, kind))
    module, info = build_model("macaluso_shih")
    assert tuple(x.shape[1:]) == info.input_shape == (4, 37, 37) and info.representation == "ms37x4"
    assert module(x).shape == (4, 2)


@pytest.mark.parametrize("name", ["lola_tagger", "lola_ae"])
def test_lola_inputs_feed_the_lola_models(name, tiny_constituents):
    from jetscan.core.kinematics import lola_inputs

    pt, eta, phi, e, _ = tiny_constituents
    x = torch.from_numpy(lola_inputs(pt, eta, phi, e, n_const=40))
    module, info = build_model(name, momentum_scale=100.0)
    assert tuple(x.shape[1:]) == info.input_shape == (40, 4) and info.representation == "lola40"
    out = module(x)
    assert torch.isfinite(out).all()
    assert out.shape == ((4, 2) if info.kind == "tagger" else (4, 40, 4))
