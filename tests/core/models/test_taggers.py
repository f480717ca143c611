"""Tests for jetscan.core.models.taggers: shapes, by-hand parameter counts, learning."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jetscan.core.errors import ConfigError  # noqa: E402
from jetscan.core.models import build_model  # noqa: E402


def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def dense(n_in, n_out):
    return n_in * n_out + n_out


def test_macaluso_shih_parameter_count_by_hand():
    # 128C4-64C4-MP2-64C4-64C4-MP2-64N-256N-256N-2 on (4, 37, 37), "same" padding:
    # 37 -> MP2 -> 18 -> MP2 -> 9, flattened 64 * 9 * 9 = 5184
    by_hand = (
        (4 * 128 * 16 + 128)  # 128C4: 8,320
        + (128 * 64 * 16 + 64)  # 64C4: 131,136
        + 2 * (64 * 64 * 16 + 64)  # 64C4 x 2: 131,200
        + (5184 * 64 + 64)  # 64N: 331,840
        + (64 * 256 + 256)  # 256N: 16,640
        + (256 * 256 + 256)  # 256N: 65,792
        + (256 * 2 + 2)  # output: 514
    )
    assert by_hand == 685_442
    module, info = build_model("macaluso_shih")
    assert info.n_params == sum(p.numel() for p in module.parameters()) == 685_442
    # one colour: only the first convolution changes
    assert build_model("macaluso_shih", channels=1)[1].n_params == 685_442 - 3 * 128 * 16


def test_deeptop_minimal_parameter_count_by_hand():
    # 8C4-8C4-MP2-8C4-8C4-64N-64N-64N-2 on (1, 40, 40): 40 -> MP2 -> 20, flattened 8 * 20 * 20
    by_hand = conv(1, 8, 4) + 3 * conv(8, 8, 4) + dense(3200, 64) + 2 * dense(64, 64) + dense(64, 2)
    assert by_hand == 216_546
    assert build_model("deeptop_minimal")[1].n_params == 216_546
    # on the 37 x 37 grid: 37 -> 18, flattened 8 * 18 * 18 = 2592
    assert build_model("deeptop_minimal", image_size=37)[1].n_params == by_hand - (3200 - 2592) * 64


@pytest.mark.parametrize(
    "name, hyper, shape",
    [
        ("deeptop_minimal", {}, (5, 40, 40)),
        ("deeptop_minimal", {}, (5, 1, 40, 40)),
        ("deeptop_minimal", {"image_size": 37}, (5, 37, 37)),
        ("deeptop_minimal", {"image_size": 37, "channels": 4}, (5, 4, 37, 37)),
        ("macaluso_shih", {}, (5, 4, 37, 37)),
        ("macaluso_shih", {"channels": 1}, (5, 37, 37)),
        ("macaluso_shih", {"channels": 1, "image_size": 40}, (5, 40, 40)),
    ],
)
def test_tagger_output_shapes(name, hyper, shape):
    torch.manual_seed(0)
    module, info = build_model(name, **hyper)
    x = torch.rand(shape)
    logits = module(x)
    assert logits.shape == (5, 2) and logits.dtype == torch.float32
    p = module.score(x)
    assert p.shape == (5,) and torch.all((p >= 0) & (p <= 1))
    labels = torch.tensor([0, 1, 0, 1, 1])
    loss = module.loss(logits, labels)
    assert loss.shape == (5,)
    torch.testing.assert_close(loss[:2], module.loss(logits[:2], labels[:2]))  # per jet: no batch coupling


def test_tagger_losses_are_the_papers():
    torch.manual_seed(1)
    logits = torch.randn(6, 2)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    deeptop, _ = build_model("deeptop_minimal")
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    expected = ((torch.softmax(logits, -1) - onehot) ** 2).mean(-1)
    torch.testing.assert_close(deeptop.loss(logits, labels), expected)
    ms, _ = build_model("macaluso_shih")
    expected = -torch.log_softmax(logits, -1)[torch.arange(6), labels]
    torch.testing.assert_close(ms.loss(logits, labels), expected)


def test_wrong_image_shape_raises_with_expected_shape():
    module, _ = build_model("macaluso_shih")
    with pytest.raises(ConfigError, match=r"macaluso_shih expects images \(n, 4, 37, 37\); got \(2, 40, 40\)"):
        module(torch.rand(2, 40, 40))
    module, _ = build_model("deeptop_minimal")
    with pytest.raises(ConfigError, match=r"\(n, 40, 40\) or \(n, 1, 40, 40\)"):
        module(torch.rand(2, 37, 37))


def test_deeptop_separates_one_from_two_prong_images(blob_images):
    """A short training (Adam, 60 steps of 64) separates the two blob families: accuracy > 0.8."""
    torch.manual_seed(3)
    x = torch.from_numpy(
        np.concatenate([blob_images(192, 1, seed=10), blob_images(192, 2, seed=11)])
    )
    y = torch.cat([torch.zeros(192, dtype=torch.long), torch.ones(192, dtype=torch.long)])
    scale = 100.0  # unit-sum images have pixels ~1e-2; DeepTop scaled pixels to O(1)
    model, _ = build_model("deeptop_minimal")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = model.loss(model(x[idx] * scale), y[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt = torch.from_numpy(
        np.concatenate([blob_images(100, 1, seed=20), blob_images(100, 2, seed=21)])
    )
    yt = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    with torch.no_grad():
        acc = ((model.score(xt * scale) > 0.5).long() == yt).float().mean().item()
    assert acc > 0.8, acc
