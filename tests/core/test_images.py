"""Tests for jetscan.core.images: preprocessing, pixelation, the Heimel and Macaluso-Shih presets.

Invariants (unit sum, rotation / reflection / translation invariance, orientation) and a
by-hand per-particle pixelation loop, on seeded synthetic jets (no Pythia). Jets are float64
in the invariance tests so no constituent sits within rounding of a pixel edge.
"""

from __future__ import annotations

import bisect

import numpy as np
import pytest


from jetscan.core import images
from jetscan.core.errors import ConfigError

TRACK, NEUTRAL, MUON, PAD = 0, 1, 2, -1
HEIMEL = images.IMAGE_PRESETS["heimel40"]


def wrap(phi):
    return (phi + np.pi) % (2 * np.pi) - np.pi


def make_jets(n_jets=48, m_max=90, n_range=(30, 70), spread=0.12, width=0.03, eta0=None, phi0=None,
              seed=7, dtype=np.float64):
    """Seeded jets: 3 gaussian prongs about (eta0, phi0), exponential pT, pT-ordered, padded.

    With the defaults every constituent stays within ~0.45 of the centroid, inside the Heimel
    window whatever the rotation.
    """
    rng = np.random.default_rng(seed)
    n_const = rng.integers(n_range[0], n_range[1] + 1, n_jets)
    real = np.arange(m_max)[None, :] < n_const[:, None]
    prongs = np.clip(rng.normal(0, spread, (n_jets, 3, 2)), -0.25, 0.25)
    which = rng.integers(0, 3, (n_jets, m_max))
    jitter = np.clip(rng.normal(0, width, (n_jets, m_max, 2)), -0.1, 0.1)
    d = prongs[np.arange(n_jets)[:, None], which] + jitter
    pt = np.where(real, rng.exponential(10.0, (n_jets, m_max)) + 0.01, 0.0)
    order = np.argsort(-pt, axis=1, kind="stable")
    pt, d = np.take_along_axis(pt, order, 1), d[np.arange(n_jets)[:, None], order]
    eta0 = rng.uniform(-1.5, 1.5, (n_jets, 1)) if eta0 is None else eta0
    phi0 = rng.uniform(-np.pi, np.pi, (n_jets, 1)) if phi0 is None else phi0
    eta = np.where(real, eta0 + d[..., 0], 0.0)
    phi = np.where(real, wrap(phi0 + d[..., 1]), 0.0)
    kind = np.where(real, rng.choice([TRACK, NEUTRAL, MUON], (n_jets, m_max), p=[0.6, 0.37, 0.03]), PAD)
    return dict(pt=pt.astype(dtype), eta=eta.astype(dtype), phi=phi.astype(dtype),
                kind=kind.astype(np.int8), n_constituents=n_const)


@pytest.fixture
def tiny_jets():
    return make_jets()


def _transform(jets, fn):
    """Apply ``fn(deta, dphi) -> (deta', dphi')`` about each jet's hardest constituent."""
    eta_h, phi_h = jets["eta"][:, :1], jets["phi"][:, :1]
    deta, dphi = jets["eta"] - eta_h, wrap(jets["phi"] - phi_h)
    new_deta, new_dphi = fn(deta, dphi)
    real = jets["pt"] > 0
    eta, phi = np.where(real, eta_h + new_deta, 0.0), np.where(real, wrap(phi_h + new_dphi), 0.0)
    return {**jets, "eta": eta, "phi": phi}


def _assert_same_preprocessing(a, b):
    xa, ya = images.preprocess_constituents(a["pt"], a["eta"], a["phi"])
    xb, yb = images.preprocess_constituents(b["pt"], b["eta"], b["phi"])
    np.testing.assert_allclose(xa, xb, atol=1e-9)
    np.testing.assert_allclose(ya, yb, atol=1e-9)
    np.testing.assert_allclose(images.heimel40(a["pt"], a["eta"], a["phi"]),
                               images.heimel40(b["pt"], b["eta"], b["phi"]), atol=1e-6)


def test_heimel40_shape_and_unit_sum(tiny_jets):
    j = tiny_jets
    img = images.heimel40(j["pt"], j["eta"], j["phi"])
    assert img.shape == (48, 40, 40) and img.dtype == np.float32
    np.testing.assert_allclose(img.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert np.all(img >= 0)
    assert 10 <= np.count_nonzero(img, axis=(1, 2)).mean() <= 70  # as the paper reports


def test_empty_and_single_constituent_jets_no_nan():
    pt = np.zeros((3, 5))
    eta, phi = np.zeros_like(pt), np.zeros_like(pt)
    pt[1, 0], eta[1, 0], phi[1, 0] = 40.0, 1.0, 3.1
    kind = np.where(pt > 0, TRACK, PAD)
    img = images.heimel40(pt, eta, phi)
    assert not np.isnan(img).any()
    assert img[0].sum() == 0 and img[2].sum() == 0 and img[1].sum() == pytest.approx(1.0)
    four = images.ms37x4(pt, eta, phi, kind)
    assert not np.isnan(four).any() and four[0].sum() == 0
    x, y = images.preprocess_constituents(pt, eta, phi)
    assert not np.isnan(x).any() and x[1, 0] == 0 and y[1, 0] == 0
    assert images.heimel40(pt[:0], eta[:0], phi[:0]).shape == (0, 40, 40)


@pytest.mark.parametrize("angle", [0.3, 1.1, np.pi / 2, 2.5, np.pi, -2.0])
def test_rotation_invariance(tiny_jets, angle):
    c, s = np.cos(angle), np.sin(angle)
    rotated = _transform(tiny_jets, lambda x, y: (c * x - s * y, s * x + c * y))
    _assert_same_preprocessing(tiny_jets, rotated)


@pytest.mark.parametrize("axis_angle", [0.0, np.pi / 2, 0.7, 2.2])
def test_reflection_invariance(tiny_jets, axis_angle):
    # reflection about the line through the hardest constituent at axis_angle
    c, s = np.cos(2 * axis_angle), np.sin(2 * axis_angle)
    reflected = _transform(tiny_jets, lambda x, y: (c * x + s * y, s * x - c * y))
    _assert_same_preprocessing(tiny_jets, reflected)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.9, -1.4), (-1.3, 2.9)])
def test_translation_invariance(shift):
    base = make_jets(eta0=0.2, phi0=0.0)
    moved = make_jets(eta0=0.2 + shift[0], phi0=shift[1])
    _assert_same_preprocessing(base, moved)


def test_translation_across_phi_wrap():
    base = make_jets(eta0=0.0, phi0=0.5)
    across = make_jets(eta0=0.0, phi0=np.pi - 0.02)  # jets straddle phi = +-pi
    real = across["pt"] > 0
    assert np.any(across["phi"][real] > 3.0) and np.any(across["phi"][real] < -3.0)
    _assert_same_preprocessing(base, across)
    img = images.heimel40(across["pt"], across["eta"], across["phi"])
    np.testing.assert_allclose(img.sum(axis=(1, 2)), 1.0, rtol=1e-5)  # nothing lost at the wrap


def test_constituent_order_and_padding_width_do_not_matter(tiny_jets):
    j = tiny_jets
    perm = np.random.default_rng(2).permutation(j["pt"].shape[1])
    wide = {k: np.pad(j[k][:, perm], ((0, 0), (0, 110)), constant_values=PAD if k == "kind" else 0)
            for k in ("pt", "eta", "phi", "kind")}
    np.testing.assert_allclose(images.heimel40(wide["pt"], wide["eta"], wide["phi"]),
                               images.heimel40(j["pt"], j["eta"], j["phi"]), atol=1e-6)
    np.testing.assert_allclose(images.ms37x4(wide["pt"], wide["eta"], wide["phi"], wide["kind"]),
                               images.ms37x4(j["pt"], j["eta"], j["phi"], j["kind"]), atol=1e-6)


def test_preprocessing_conventions(tiny_jets):
    j = tiny_jets
    x, y = images.preprocess_constituents(j["pt"], j["eta"], j["phi"])
    w = j["pt"]
    # centroid at the origin
    np.testing.assert_allclose((w * x).sum(1), 0, atol=1e-9)
    np.testing.assert_allclose((w * y).sum(1), 0, atol=1e-9)
    # major principal axis along y (12 o'clock): no xy correlation, more spread in y
    sxx, syy, sxy = (w * x * x).sum(1), (w * y * y).sum(1), (w * x * y).sum(1)
    np.testing.assert_allclose(sxy, 0, atol=1e-9)
    assert np.all(syy >= sxx)
    # hardest constituent (column 0) in the upper-right quadrant; padding at (0, 0)
    assert np.all(x[:, 0] >= 0) and np.all(y[:, 0] >= 0)
    assert np.all(x[w == 0] == 0) and np.all(y[w == 0] == 0)


def test_hardest_constituent_in_upper_right_pixels(tiny_jets):
    j = tiny_jets
    only_hardest = np.where(np.arange(j["pt"].shape[1]) == 0, j["pt"], 0.0)
    x, y = images.preprocess_constituents(j["pt"], j["eta"], j["phi"])
    img = images.pixelate(only_hardest, x, y)
    iy, ix = np.nonzero(img.sum(axis=0))
    assert np.all(ix >= 20) and np.all(iy >= 20)  # image[j, iy, ix], iy grows with phi'


def test_pixel_orientation():
    pt = np.array([[1.0, 2.0, 3.0]])
    x = np.array([[0.5, -0.5, 0.0]])
    y = np.array([[-0.6, 0.6, 0.0]])
    img = images.pixelate(pt, x, y)
    dx, dy = 1.14 / 40, 1.38 / 40
    assert img[0, int((-0.6 + 0.69) / dy), int((0.5 + 0.57) / dx)] == 1.0
    assert img[0, int((0.6 + 0.69) / dy), int((-0.5 + 0.57) / dx)] == 2.0
    assert img[0, 20, 20] == 3.0  # the origin is the lower-left corner of pixel (20, 20)


def test_pixel_edges_are_half_open():
    lo, hi = -0.57, 0.57
    eps = 1e-9  # pixel edges hold up to rounding in the scaling, not to the last ulp
    x = np.array([[lo, hi, lo - eps, hi - eps, 0.0, 0.0, 0.0, 0.0]])
    y = np.array([[0.0, 0.0, 0.0, 0.0, -0.69, 0.69, -0.69 - eps, 0.69 - eps]])
    pt = np.array([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]])
    img = images.pixelate(pt, x, y)
    assert img[0, 20, 0] == 1.0 and img[0, 20, 39] == 8.0  # lo in, hi out, below lo out
    assert img[0, 0, 20] == 16.0 and img[0, 39, 20] == 128.0  # same along y
    assert img.sum() == 1.0 + 8.0 + 16.0 + 128.0


def _pixelate_by_hand(pt, x, y, n_pixels, x_range, y_range, weights=None):
    nx, ny = n_pixels
    x_edges, y_edges = np.linspace(*x_range, nx + 1), np.linspace(*y_range, ny + 1)
    out = np.zeros((pt.shape[0], ny, nx))
    for jet in range(pt.shape[0]):
        for i in range(pt.shape[1]):
            if pt[jet, i] <= 0:
                continue
            if not (x_range[0] <= x[jet, i] < x_range[1] and y_range[0] <= y[jet, i] < y_range[1]):
                continue
            ix = bisect.bisect_right(x_edges, x[jet, i]) - 1
            iy = bisect.bisect_right(y_edges, y[jet, i]) - 1
            out[jet, iy, ix] += pt[jet, i] if weights is None else weights[jet, i]
    return out


@pytest.mark.parametrize("n_pixels,x_range,y_range", [
    ((40, 40), (-0.57, 0.57), (-0.69, 0.69)),
    ((13, 7), (-0.1, 0.15), (-0.2, 0.25)),  # non-square, many constituents dropped on all sides
])
def test_pixelate_matches_by_hand_loop(tiny_jets, n_pixels, x_range, y_range):
    j = tiny_jets
    x, y = images.preprocess_constituents(j["pt"], j["eta"], j["phi"])
    kw = dict(n_pixels=n_pixels, x_range=x_range, y_range=y_range)
    got = images.pixelate(j["pt"], x, y, **kw)
    assert got.shape == (48, n_pixels[1], n_pixels[0])
    by_hand = _pixelate_by_hand(j["pt"], x, y, n_pixels, x_range, y_range)
    np.testing.assert_allclose(got, by_hand, rtol=1e-5)
    ones = np.ones_like(j["pt"])
    counts = images.pixelate(j["pt"], x, y, weights=ones, **kw)
    by_hand = _pixelate_by_hand(j["pt"], x, y, n_pixels, x_range, y_range, ones)
    np.testing.assert_array_equal(counts, by_hand)


def test_jet_images_equals_preprocess_then_pixelate(tiny_jets):
    j = tiny_jets
    raw = images.jet_images(j["pt"], j["eta"], j["phi"], **{**HEIMEL, "normalise": None})[:, 0]
    x, y = images.preprocess_constituents(j["pt"], j["eta"], j["phi"])
    ref = images.pixelate(j["pt"], x, y, n_pixels=(40, 40), x_range=(-0.57, 0.57), y_range=(-0.69, 0.69))
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(images.heimel40(j["pt"], j["eta"], j["phi"]),
                               ref / ref.sum(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-7)


def test_centre_only_preset_does_not_rotate(tiny_jets):
    j = tiny_jets
    x, y = images.preprocess_constituents(j["pt"], j["eta"], j["phi"], rotate=False, flip=False)
    w = j["pt"]
    eta_c = (w * j["eta"]).sum(1, keepdims=True) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(np.where(w > 0, j["eta"] - eta_c, 0), x, atol=1e-9)
    img = images.jet_images(j["pt"], j["eta"], j["phi"], **images.IMAGE_PRESETS["heimel40_centred"])
    ref = images.pixelate(j["pt"], x, y, n_pixels=40, x_range=(-0.75, 0.75), y_range=(-0.75, 0.75))
    np.testing.assert_allclose(img[:, 0], ref / ref.sum(axis=(1, 2), keepdims=True), atol=1e-6)


def test_no_centring_keeps_the_jet_in_place(tiny_jets):
    j = tiny_jets
    x, y = images.preprocess_constituents(j["pt"], j["eta"], j["phi"],
                                          centre=False, rotate=False, flip=False)
    real = j["pt"] > 0
    np.testing.assert_allclose(x[real], j["eta"][real], atol=1e-9)
    np.testing.assert_allclose(wrap(y - j["phi"])[real], 0, atol=1e-9)


def test_float32_input_agrees_with_float64(tiny_jets):
    j = tiny_jets
    x64, y64 = images.preprocess_constituents(j["pt"], j["eta"], j["phi"])
    x32, y32 = images.preprocess_constituents(*(j[k].astype(np.float32) for k in ("pt", "eta", "phi")))
    assert x32.dtype == np.float32
    np.testing.assert_allclose(x32, x64, atol=2e-5)
    np.testing.assert_allclose(y32, y64, atol=2e-5)
    img32 = images.heimel40(*(j[k].astype(np.float32) for k in ("pt", "eta", "phi")))
    img64 = images.heimel40(j["pt"], j["eta"], j["phi"])
    assert np.abs(img32 - img64).sum(axis=(1, 2)).max() < 0.02  # at most a rare edge pixel moves


def test_batches_agree(tiny_jets):
    j = tiny_jets
    args = (j["pt"], j["eta"], j["phi"], j["kind"])
    np.testing.assert_array_equal(images.ms37x4(*args, batch_size=5), images.ms37x4(*args))


def test_ms37x4_colours(tiny_jets):
    j = tiny_jets
    img = images.ms37x4(j["pt"], j["eta"], j["phi"], j["kind"])
    assert img.shape == (48, 4, 37, 37) and img.dtype == np.float32
    neutral_pt, track_pt, track_count, muon_count = (img[:, c].sum(axis=(1, 2)) for c in range(4))
    kind = j["kind"]
    is_track = (kind == TRACK) | (kind == MUON)  # a muon is a track too
    # the whole jet fits in 3.2 x 3.2: counts are exact, pT fractions add up to one
    np.testing.assert_array_equal(track_count, is_track.sum(1))
    np.testing.assert_array_equal(muon_count, (kind == MUON).sum(1))
    np.testing.assert_allclose(neutral_pt + track_pt, 1.0, rtol=1e-5)
    total = j["pt"].sum(1)
    neutral_fraction = np.where(kind == NEUTRAL, j["pt"], 0).sum(1) / total
    np.testing.assert_allclose(neutral_pt, neutral_fraction, rtol=1e-5)
    assert np.all(img[:, 2:] == np.round(img[:, 2:]))  # counts are integers
    # pixel by pixel, against pixelate of each kind
    x, y = images.preprocess_constituents(j["pt"], j["eta"], j["phi"])
    kw = dict(n_pixels=37, x_range=(-1.6, 1.6), y_range=(-1.6, 1.6))
    ref_tracks = images.pixelate(np.where(is_track, j["pt"], 0), x, y, weights=np.ones_like(x), **kw)
    np.testing.assert_array_equal(img[:, 2], ref_tracks)
    ref_neutral = images.pixelate(np.where(kind == NEUTRAL, j["pt"], 0), x, y, **kw)
    ref_neutral /= total[:, None, None]
    np.testing.assert_allclose(img[:, 0], ref_neutral, rtol=1e-5, atol=1e-7)


def test_ms37x4_drops_out_of_range_constituents():
    j = make_jets(n_jets=4)
    far = j["n_constituents"] - 1  # the softest constituent of each jet, moved 2.5 away in eta
    j["eta"][np.arange(4), far] += 2.5
    img = images.ms37x4(j["pt"], j["eta"], j["phi"], j["kind"])
    is_track = np.isin(j["kind"], (TRACK, MUON))
    far_track = is_track[np.arange(4), far]
    np.testing.assert_array_equal(img[:, 2].sum(axis=(1, 2)), is_track.sum(1) - far_track)
    pt_sum = img[:, :2].sum(axis=(1, 2, 3))
    np.testing.assert_allclose(pt_sum, 1 - j["pt"][np.arange(4), far] / j["pt"].sum(1), rtol=1e-5)


def test_presets_are_a_config_change(tiny_jets):
    j = tiny_jets
    via_dict = images.jet_images(j["pt"], j["eta"], j["phi"], j["kind"], **images.IMAGE_PRESETS["ms37x4"])
    np.testing.assert_array_equal(via_dict, images.ms37x4(j["pt"], j["eta"], j["phi"], j["kind"]))
    coarse = images.heimel40(j["pt"], j["eta"], j["phi"], n_pixels=(20, 10))
    assert coarse.shape == (48, 10, 20)
    two = images.heimel40(j["pt"], j["eta"], j["phi"], colours=("pt", "count"))
    assert two.shape == (48, 2, 40, 40)
    np.testing.assert_allclose(coarse.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    per_colour = images.jet_images(j["pt"], j["eta"], j["phi"], j["kind"], colours=("neutral_pt", "count"),
                                   normalise="sum")
    np.testing.assert_allclose(per_colour.sum(axis=(2, 3)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(colours=("pt", "glow")), "colours"),
    (dict(normalise="median"), "normalise"),
    (dict(colours=("track_pt",)), "kind"),
    (dict(x_range=(0.5, -0.5)), "x_range"),
    (dict(n_pixels=(0, 40)), "n_pixels"),
])
def test_bad_settings_are_config_errors(tiny_jets, kwargs, match):
    j = tiny_jets
    with pytest.raises(ConfigError, match=match):
        images.jet_images(j["pt"], j["eta"], j["phi"], **kwargs)


def test_high_level_inputs_safe_division():
    out = images.high_level_inputs(
        mass=[170.0, 80.0, 0.0], tau1=[0.4, 0.0, 0.0], tau2=[0.2, 0.1, 0.0], tau3=[0.1, 0.05, 0.0],
        sd_mass=[165.0, 75.0, 0.0],
    )
    assert out.shape == (3, 4) and out.dtype == np.float32 and not np.isnan(out).any()
    np.testing.assert_allclose(out[0], [170.0, 0.5, 0.5, 165.0])
    np.testing.assert_allclose(out[1], [80.0, 0.5, 0.0, 75.0])  # tau1 = 0: tau21 -> 0
    np.testing.assert_allclose(out[2], 0.0)


def test_max_normalisation_scales_pixels_to_unit_peak():
    rng = np.random.default_rng(17)
    pt = rng.exponential(20.0, (50, 30)).astype(np.float32)
    eta = rng.normal(0, 0.1, (50, 30)).astype(np.float32)
    phi = rng.normal(0, 0.1, (50, 30)).astype(np.float32)
    img = images.jet_images(pt, eta, phi, **images.IMAGE_PRESETS["heimel40_max"])
    unit = images.jet_images(pt, eta, phi, **images.IMAGE_PRESETS["heimel40"])
    np.testing.assert_allclose(img.max(axis=(1, 2, 3)), 1.0)
    np.testing.assert_allclose(img, unit / unit.max(axis=(1, 2, 3), keepdims=True), rtol=1e-5)
