"""Tests for jetscan.core.models.autoencoders: shapes, by-hand counts, PCA algebra, learning."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jetscan.core.errors import ConfigError, JetscanError  # noqa: E402
from jetscan.core.models import PCA, build_model  # noqa: E402

IMAGE_AES = ("pca", "dense_ae", "cnn_ae", "image_ae")


@pytest.fixture
def qcd_images(blob_images):
    return torch.from_numpy(blob_images(64, 2, seed=1))


@pytest.mark.parametrize("name", IMAGE_AES)
@pytest.mark.parametrize("shape", [(3, 40, 40), (3, 1, 40, 40)])
def test_image_autoencoder_shapes(name, shape, qcd_images):
    torch.manual_seed(0)
    module, info = build_model(name)
    assert info.kind == ("pca" if name == "pca" else "autoencoder")
    assert info.input_shape == (40, 40) and info.representation == "heimel40"
    if name == "pca":
        module.fit(qcd_images)
    x = qcd_images[:3].reshape(shape)
    recon = module(x)
    assert recon.shape == x.shape and recon.dtype == torch.float32
    loss = module.loss(x, recon)
    sq = ((x - recon) ** 2).reshape(3, -1)  # Farina et al.: mean over pixels; Heimel et al.: sum
    torch.testing.assert_close(loss, sq.sum(1) if name == "image_ae" else sq.mean(1))
    torch.testing.assert_close(module.score(x), loss)
    z = module.encode(x)
    assert z.shape == (3, info.hyper["bottleneck"])


def test_lola_ae_shapes_and_loss(spray_p4s):
    torch.manual_seed(0)
    module, info = build_model("lola_ae")
    assert info.input_shape == (40, 4) and info.representation == "lola40" and info.hyper["bottleneck"] == 10
    x = torch.from_numpy(spray_p4s(5, 2, seed=2))
    recon = module(x)
    assert recon.shape == (5, 40, 4)
    torch.testing.assert_close(module.loss(x, recon), ((recon - x) ** 2).sum(dim=(1, 2)))
    scaled, _ = build_model("lola_ae", momentum_scale=100.0)
    recon = scaled(x * 100.0)
    torch.testing.assert_close(scaled.loss(x * 100.0, recon), ((recon / 100.0 - x) ** 2).sum(dim=(1, 2)))


def test_loss_conventions():
    """Farina et al.: per-jet mean over pixels; Heimel et al.: sum over the 1600 pixels."""
    torch.manual_seed(0)
    x, r = torch.rand(4, 40, 40), torch.rand(4, 40, 40)
    sq = ((x - r) ** 2).reshape(4, -1)
    for name in ("pca", "dense_ae", "cnn_ae"):
        torch.testing.assert_close(build_model(name)[0].loss(x, r), sq.mean(1))
    torch.testing.assert_close(build_model("image_ae")[0].loss(x, r), sq.sum(1))


def test_cnn_ae_parameter_count_by_hand():
    # 128C3-MP2-128C3-MP2-128C3-32N-6N-32N-12800N-128C3-US2-128C3-US2-1C3 on 40 x 40
    c3 = 128 * 128 * 9 + 128  # a 128 -> 128 3x3 convolution: 147,584
    by_hand = (
        (1 * 128 * 9 + 128)  # 128C3 on the input: 1,280
        + c3 + c3  # 128C3, 128C3 (after the pools)
        + (12800 * 32 + 32)  # 32N on the flattened 128 x 10 x 10: 409,632
        + (32 * 6 + 6)  # 6N: 198
        + (6 * 32 + 32)  # 32N: 224
        + (32 * 12800 + 12800)  # 12800N: 422,400
        + c3 + c3  # 128C3, 128C3 (around the first upsampling)
        + (128 * 1 * 9 + 1)  # 1C3: 1,153
    )
    assert by_hand == 1_425_223
    module, info = build_model("cnn_ae")
    assert info.n_params == sum(p.numel() for p in module.parameters()) == 1_425_223
    # the bottleneck enters two dense layers: (32 + 1) + 32 parameters per unit
    assert build_model("cnn_ae", bottleneck=10)[1].n_params == 1_425_223 + 4 * (32 + 1 + 32)


def test_other_parameter_counts_by_hand():
    dense = (1600 * 512 + 512) + (512 * 256 + 256) + (256 * 128 + 128) + (128 * 6 + 6) \
        + (6 * 128 + 128) + (128 * 256 + 256) + (256 * 512 + 512) + (512 * 1600 + 1600)
    assert build_model("dense_ae")[1].n_params == dense == 1_971_014
    conv4 = lambda a, b: a * b * 16 + b  # noqa: E731  4x4 convolution
    encoder = conv4(1, 10) + 10 + conv4(10, 10) + 10 + conv4(10, 10) + 10 + conv4(10, 1) + 1 \
        + (400 * 100 + 100) + 100 + (100 * 20 + 20) + 20
    decoder = (20 * 100 + 100) + 100 + (100 * 400 + 400) + 400 \
        + conv4(1, 10) + 10 + conv4(10, 10) + 10 + conv4(10, 10) + 10 + conv4(10, 1)
    assert build_model("image_ae")[1].n_params == encoder + decoder == 92_403
    assert build_model("pca")[1].n_params == 0


def test_pca_reconstruction_is_the_projection(qcd_images):
    pca, info = build_model("pca", bottleneck=6)
    assert pca.fit(qcd_images) is pca
    c, mean = pca.components.double(), pca.mean.double()
    torch.testing.assert_close(c @ c.T, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    flat = qcd_images.reshape(64, -1).double()
    projected = (flat - mean) @ c.T @ c + mean
    torch.testing.assert_close(pca(qcd_images).double(), projected.reshape(64, 40, 40), atol=1e-6, rtol=1e-4)
    # mean and components are numpy's SVD of the centred data (up to each component's sign)
    data = flat.numpy()
    centred = data - data.mean(0)
    _, s, vh = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(pca.mean.numpy(), data.mean(0), atol=1e-7)
    np.testing.assert_allclose(np.abs(np.sum(vh[:6] * pca.components.numpy(), axis=1)), 1.0, atol=1e-4)
    var = pca.explained_variance.numpy()
    np.testing.assert_allclose(var, s[:6] ** 2 / 63, rtol=1e-4)
    assert np.all(np.diff(var) <= 0)
    # a projection: applying it twice changes nothing
    torch.testing.assert_close(pca(pca(qcd_images)), pca(qcd_images), atol=1e-7, rtol=1e-4)


def test_pca_full_rank_reconstructs_exactly(blob_images):
    x = torch.from_numpy(blob_images(100, 2, seed=3, size=6))  # 36 pixels, 100 images
    pca, _ = build_model("pca", bottleneck=36, image_size=6)
    pca.fit(x)
    torch.testing.assert_close(pca(x), x, atol=1e-6, rtol=0)
    assert pca.loss(x, pca(x)).max() < 1e-12
    fewer, _ = build_model("pca", bottleneck=3, image_size=6)
    assert fewer.fit(x).loss(x, fewer(x)).mean() > 1e-9  # 3 components do not


def test_pca_needs_fit_and_enough_images(qcd_images):
    pca = PCA()
    with pytest.raises(JetscanError, match=r"pca is not fitted: call module.fit"):
        pca(qcd_images)
    with pytest.raises(ConfigError, match=r"pca.fit: needs at least max\(2, bottleneck = 6\) images \(got 4\)"):
        pca.fit(qcd_images[:4])


@pytest.mark.parametrize(
    "name, hyper, steps",
    [
        ("dense_ae", {}, 50),
        # the paper's 128 filters cost ~1 s a step on one CPU thread; 16 keep the architecture
        # (~0.1 s a step; below 20% of its start after 10 steps)
        ("cnn_ae", {"filters": 16}, 25),
        # ~0.4 s a step on one thread; below 12% of its start after 10 steps
        ("image_ae", {}, 12),
    ],
)
def test_autoencoders_learn(name, hyper, steps, qcd_images):
    """Full-batch Adam steps (the models' default lr) on 64 fixed images halve the mean loss."""
    torch.manual_seed(0)
    model, info = build_model(name, **hyper)
    opt = torch.optim.Adam(model.parameters(), lr=info.optimizer_settings["lr"])
    with torch.no_grad():
        start = model.loss(qcd_images, model(qcd_images)).mean().item()
    for _ in range(steps):
        loss = model.loss(qcd_images, model(qcd_images)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = model.loss(qcd_images, model(qcd_images)).mean().item()
    assert end < 0.5 * start, (start, end)


def test_lola_ae_learns(spray_p4s):
    torch.manual_seed(0)
    x = torch.from_numpy(spray_p4s(64, 2, seed=9))
    model, info = build_model("lola_ae")
    opt = torch.optim.Adam(model.parameters(), lr=info.optimizer_settings["lr"])
    with torch.no_grad():
        start = model.loss(x, model(x)).mean().item()
    for _ in range(50):
        loss = model.loss(x, model(x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = model.loss(x, model(x)).mean().item()
    assert end < 0.5 * start, (start, end)
