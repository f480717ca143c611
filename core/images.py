"""Jet images: centre, rotate, flip, ``pixelate``, and the seed papers' presets.

Recipes (see the repository's seed-physics reference):

- Heimel, Kasieczka, Plehn & Thompson, "QCD or What?", arXiv:1808.08979, sec. 2.1: shift the
  pT-weighted centroid to the origin, rotate the major principal axis to 12 o'clock, flip so the
  hardest constituent is in the upper-right quadrant, then 40 x 40 pixels over
  eta' in [-0.57, 0.57], phi' in [-0.69, 0.69], pixel = summed pT, normalised to unit sum.
- Macaluso & Shih, "Pulling out all the tops with computer vision and deep learning",
  arXiv:1803.00107: the same preprocessing, 37 x 37 pixels over 3.2 x 3.2 in (eta', phi'), four
  colours (neutral pT, track pT, track count, muon count), pT colours normalised by the jet's pT.

Conventions, used everywhere in this module:

- x = eta, y = phi. After preprocessing, x' = eta' is the horizontal axis and y' = phi' the
  vertical one; "12 o'clock" is +y', the "upper-right quadrant" is x' >= 0 and y' >= 0.
- An image is ``image[..., iy, ix]``: column ``ix`` grows with x' (eta') and row ``iy`` grows
  with y' (phi'), so row 0 is the *lowest* phi' (draw with ``imshow(origin="lower")``). Pixels
  are half-open, ``[lo + i * size, lo + (i + 1) * size)``; constituents outside the range are
  dropped. ``n_pixels`` is ``(nx, ny)`` in the order of ``x_range, y_range``.
- Inputs are ``(n_jets, M)`` constituent arrays; padding has ``pt = 0`` (``kind = -1``) and
  finite coordinates (the generator writes zeros), and never reaches an image. The arrays may be
  float32 or float64; coordinates keep that dtype, images are float32 (a unit-sum image sums to
  1 to float32 rounding).
- Everything is vectorised over jets (no per-jet Python loop): numpy broadcasting on the padded
  arrays, trimmed to the last column holding a real constituent, and ``np.add.at`` on flat pixel
  indices, a batch of a few thousand jets at a time.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

_TWO_PI = 2.0 * np.pi

__all__ = [
    "COLOURS",
    "IMAGE_PRESETS",
    "preprocess_constituents",
    "pixelate",
    "jet_images",
    "heimel40",
    "ms37x4",
    "high_level_inputs",
]

#: colour name -> (constituent kinds it takes, or None for all; pixel weight "pt" or "count").
#: Kinds: 0 track (charged), 1 neutral calorimeter tower, 2 muon. A muon is a charged particle
#: with a track, so it counts as a track (as Delphes's Track collection holds muon tracks) and
#: also in the muon colours; the neutral and track pT colours together hold all the jet's pT.
COLOURS = {
    "pt": (None, "pt"),
    "count": (None, "count"),
    "neutral_pt": ((1,), "pt"),
    "neutral_count": ((1,), "count"),
    "track_pt": ((0, 2), "pt"),
    "track_count": ((0, 2), "count"),
    "muon_pt": ((2,), "pt"),
    "muon_count": ((2,), "count"),
}

#: normalisations: None (raw sums), "sum" (each channel to unit sum; an empty channel stays 0),
#: "total_pt" (pT colours divided by the jet's scalar pT sum over all its constituents, in the
#: window or not; count colours stay raw counts).
_NORMALISATIONS = (None, "sum", "total_pt", "max")

IMAGE_PRESETS = {
    # Heimel et al. sec. 2.1, top vs QCD
    "heimel40": dict(n_pixels=(40, 40), x_range=(-0.57, 0.57), y_range=(-0.69, 0.69),
                     colours=("pt",), centre=True, rotate=True, flip=True, normalise="sum"),
    # Heimel et al. sec. 3: scalar and dark-shower samples are only centred
    "heimel40_centred": dict(n_pixels=(40, 40), x_range=(-0.75, 0.75), y_range=(-0.75, 0.75),
                             colours=("pt",), centre=True, rotate=False, flip=False,
                             normalise="sum"),
    # Macaluso & Shih, four colours
    "ms37x4": dict(n_pixels=(37, 37), x_range=(-1.6, 1.6), y_range=(-1.6, 1.6),
                   colours=("neutral_pt", "track_pt", "track_count", "muon_count"),
                   centre=True, rotate=True, flip=True, normalise="total_pt"),
    # Macaluso & Shih, one colour (total pT)
    # DeepTop's intensity scaling (pixels in [0, 1]) on the Heimel et al. 40 x 40 grid
    "heimel40_max": dict(n_pixels=(40, 40), x_range=(-0.57, 0.57), y_range=(-0.69, 0.69),
                         colours=("pt",), centre=True, rotate=True, flip=True, normalise="max"),
    "ms37": dict(n_pixels=(37, 37), x_range=(-1.6, 1.6), y_range=(-1.6, 1.6), colours=("pt",),
                 centre=True, rotate=True, flip=True, normalise="total_pt"),
}


def _affine(pt, eta, phi, centre, rotate, flip):
    """The preprocessing as a per-jet affine map of the constituents' (eta, phi).

    Returns ``(x, y, coef)``: ``x = eta - eta_h``, ``y = delta_phi(phi, phi_h)`` relative to the
    hardest constituent h (so a jet across phi = +-pi is in one piece), and ``coef`` of shape
    ``(6, n_jets)`` with ``x' = c0 x + c1 y + c2`` and ``y' = c3 x + c4 y + c5``.
    """
    n = pt.shape[0]
    rows = np.arange(n)
    hard = np.argmax(pt, axis=1)
    eta_h, phi_h = eta[rows, hard], phi[rows, hard]
    x = eta - eta_h[:, None]
    y = phi - phi_h[:, None]
    y -= _TWO_PI * np.rint(y * (1.0 / _TWO_PI))  # as delta_phi, but [-pi, pi] is enough here
    w = pt  # padding has pt = 0 and so weighs nothing
    wx, wy = w * x, w * y
    tot = w.sum(axis=1)
    inv = np.where(tot > 0, 1.0 / np.where(tot > 0, tot, 1), 0)
    xc = wx.sum(axis=1) * inv  # pT-weighted centroid
    yc = wy.sum(axis=1) * inv
    one, zero = np.ones_like(xc), np.zeros_like(xc)
    c0, c1, c3, c4 = one, zero, zero, one
    if rotate:
        # pT-weighted second moments about the centroid, from moments about the hardest
        # constituent (|x|, |y| < ~1 within a jet, so the subtraction loses little)
        sxx = np.einsum("ij,ij->i", wx, x) - tot * xc * xc
        sxy = np.einsum("ij,ij->i", wx, y) - tot * xc * yc
        syy = np.einsum("ij,ij->i", wy, y) - tot * yc * yc
        # major axis at angle theta from +x; rotate by pi/2 - theta so it points along +y
        theta = 0.5 * np.arctan2(2 * sxy, sxx - syy)
        s, c = np.sin(theta), np.cos(theta)
        c0, c1, c3, c4 = s, -c, c, s
    if flip:
        uh, vh = -xc, -yc  # the hardest constituent sits at x = y = 0 before centring
        sx = np.where(c0 * uh + c1 * vh < 0, -1, 1).astype(xc.dtype)
        sy = np.where(c3 * uh + c4 * vh < 0, -1, 1).astype(xc.dtype)
        c0, c1, c3, c4 = c0 * sx, c1 * sx, c3 * sy, c4 * sy
    c2 = -(c0 * xc + c1 * yc)
    c5 = -(c3 * xc + c4 * yc)
    if not centre:  # keep the transform about the centroid, but put the centroid back
        c2 = c2 + xc + eta_h
        c5 = c5 + yc + phi_h
    return x, y, np.stack([c0, c1, c2, c3, c4, c5])


def _as_float(*arrays):
    arrays = [np.asarray(a) for a in arrays]
    dtype = np.result_type(*arrays, np.float32)
    return [a.astype(dtype, copy=False) for a in arrays]


def _check_constituents(name, pt, *others):
    if pt.ndim != 2 or any(a.shape != pt.shape for a in others):
        raise ConfigError(
            f"{name} needs (n_jets, M) constituent arrays of one shape; got "
            f"{[a.shape for a in (pt, *others)]}."
        )


def preprocess_constituents(pt, eta, phi, *, centre=True, rotate=True, flip=True):
    """Centre, rotate and flip each jet's constituents (Heimel et al. sec. 2.1; Macaluso & Shih).

    Convention: x = eta, y = phi. Steps, all pT-weighted and done per jet:

    1. phi is taken relative to the hardest constituent (wrapped as ``delta_phi``: jets across
       phi = +-pi are handled), then the pT-weighted centroid is moved to the origin;
    2. ``rotate``: the major principal axis of the pT-weighted (eta, phi) covariance (weights
       pT) is turned to 12 o'clock, i.e. along +y (phi');
    3. ``flip``: reflect x -> -x and/or y -> -y so the hardest constituent has eta' >= 0 and
       phi' >= 0 (the upper-right quadrant).

    ``centre=False`` does steps 2-3 about the centroid but leaves it where it was (phi then
    continuous across the jet, possibly outside [-pi, pi)). Returns new ``(eta', phi')`` arrays
    of the input shape; padding (``pt = 0``) stays padding, at (0, 0).
    """
    pt, eta, phi = _as_float(pt, eta, phi)
    _check_constituents("preprocess_constituents", pt, eta, phi)
    if pt.size == 0:
        return eta.copy(), phi.copy()
    x, y, c = _affine(pt, eta, phi, centre, rotate, flip)
    real = pt > 0
    xs = np.where(real, c[0][:, None] * x + c[1][:, None] * y + c[2][:, None], 0)
    ys = np.where(real, c[3][:, None] * x + c[4][:, None] * y + c[5][:, None], 0)
    return xs, ys


def _grid(n_pixels, x_range, y_range):
    nx, ny = (n_pixels, n_pixels) if np.isscalar(n_pixels) else tuple(n_pixels)
    if int(nx) != nx or int(ny) != ny or nx < 1 or ny < 1:
        raise ConfigError(f"n_pixels must be positive integers (nx, ny), got {n_pixels!r}.")
    for name, (lo, hi) in (("x_range", x_range), ("y_range", y_range)):
        if not lo < hi:
            raise ConfigError(f"{name} must be (low, high) with low < high, got {(lo, hi)}.")
    x_range, y_range = (float(x_range[0]), float(x_range[1])), (float(y_range[0]), float(y_range[1]))
    return int(nx), int(ny), x_range, y_range


def _pixel_index(real, fx, fy, nx, ny):
    """In-image pixel index ``iy * nx + ix`` (int32) and the mask of constituents that land."""
    inside = real & (fx >= 0) & (fx < nx) & (fy >= 0) & (fy < ny)
    with np.errstate(invalid="ignore"):  # NaN or huge coordinates are outside anyway
        return fy.astype(np.int32) * nx + fx.astype(np.int32), inside


def _fill(flat, first, pix, inside, weights):
    """Add ``weights`` of the constituents ``inside`` into the flat float32 ``flat``.

    Jet ``j`` (row ``j`` of ``pix``) goes to ``flat[first[j] + pix]`` (``np.add.at``).
    ``weights`` is ``None`` (count 1 each), a per-jet ``(n_jets,)`` or a ``(n_jets, M)`` array.
    """
    pos = np.flatnonzero(inside)
    idx = (pix + first[:, None]).take(pos)
    if weights is None:
        w = np.ones(pos.size, dtype=np.float32)
    elif weights.ndim == 1:
        w = np.repeat(weights.astype(np.float32), np.count_nonzero(inside, axis=1))
    else:
        w = weights.take(pos).astype(np.float32, copy=False)
    np.add.at(flat, idx, w)


def pixelate(pt, x, y, *, n_pixels=(40, 40), x_range=(-0.57, 0.57), y_range=(-0.69, 0.69),
             weights=None):
    """Sum ``weights`` (default pT) of constituents at ``(x, y)`` into ``(n_jets, ny, nx)`` float32.

    ``image[j, iy, ix]``: ``ix`` along x (eta'), ``iy`` along y (phi'), row 0 at the lowest y.
    Pixels are half-open; constituents outside ``x_range`` x ``y_range`` are dropped, and padding
    (``pt <= 0``) is skipped even when ``weights`` are given. No normalisation.
    """
    pt, x, y = _as_float(pt, x, y)
    _check_constituents("pixelate", pt, x, y)
    nx, ny, (x0, x1), (y0, y1) = _grid(n_pixels, x_range, y_range)
    w = pt if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float32), pt.shape)
    fx, fy = (x - x0) * (nx / (x1 - x0)), (y - y0) * (ny / (y1 - y0))
    pix, inside = _pixel_index(pt > 0, fx, fy, nx, ny)
    out = np.zeros((pt.shape[0], ny, nx), dtype=np.float32)
    _fill(out.reshape(-1), np.arange(pt.shape[0]) * (nx * ny), pix, inside, w)
    return out


def _safe_inverse(tot):
    return np.where(tot > 0, 1.0 / np.where(tot > 0, tot, 1), 0.0)


def _images_batch(out, pt, eta, phi, kind, nx, ny, xr, yr, colours, centre, rotate, flip,
                  normalise):
    """Fill ``out`` ``(n_jets, n_colours, ny, nx)`` (zeros, C-contiguous) for one batch."""
    n, n_col = out.shape[:2]
    x, y, c = _affine(pt, eta, phi, centre, rotate, flip)
    # fold the pixel scaling into the per-jet affine map: fx = a x + b y + d, in pixel units
    sx, sy = nx / (xr[1] - xr[0]), ny / (yr[1] - yr[0])
    a, b, d = c[0] * sx, c[1] * sx, (c[2] - xr[0]) * sx
    fx = a[:, None] * x + b[:, None] * y + d[:, None]
    a, b, d = c[3] * sy, c[4] * sy, (c[5] - yr[0]) * sy
    fy = a[:, None] * x + b[:, None] * y + d[:, None]
    pix, inside = _pixel_index(pt > 0, fx, fy, nx, ny)
    if normalise == "total_pt":
        jet_scale = _safe_inverse(pt.sum(axis=1))
    flat = out.reshape(-1)
    for ic, name in enumerate(colours):
        kinds_in, what = COLOURS[name]
        sel = inside
        if kinds_in is not None:
            of_kind = kind == kinds_in[0]
            for k in kinds_in[1:]:
                of_kind |= kind == k
            sel = inside & of_kind
        first = (np.arange(n) * n_col + ic) * (nx * ny)
        if normalise == "sum":
            tot = np.einsum("ij,ij->i", pt, sel) if what == "pt" else np.count_nonzero(sel, axis=1)
            scale = _safe_inverse(tot)
        elif normalise == "total_pt" and what == "pt":
            scale = jet_scale
        else:
            scale = None
        if what == "pt":
            w = pt if scale is None else pt * scale.astype(pt.dtype)[:, None]
        else:
            w = scale
        _fill(flat, first, pix, sel, w)


def jet_images(pt, eta, phi, kind=None, *, n_pixels=(40, 40), x_range=(-0.57, 0.57),
               y_range=(-0.69, 0.69), colours=("pt",), centre=True, rotate=True, flip=True,
               normalise="sum", batch_size=4096):
    """Preprocessed, pixelated jet images ``(n_jets, n_colours, ny, nx)`` float32.

    ``preprocess_constituents`` then ``pixelate`` (see the module docstring for the axes), one
    channel per entry of ``colours`` (names in ``COLOURS``; all but ``"pt"`` and ``"count"`` need
    ``kind``). ``normalise``: None (raw sums); ``"sum"`` (each channel of each jet to unit sum,
    Heimel et al.); ``"total_pt"`` (pT channels divided by the jet's scalar pT sum over all its
    constituents, in the window or not; count channels stay raw counts, Macaluso & Shih);
    ``"max"`` (each channel of each jet divided by its brightest pixel, so pixels lie in
    [0, 1]: the intensity scaling of DeepTop, Kasieczka et al. arXiv:1701.08784). An
    empty jet gives an all-zero image, never NaN. Presets: ``IMAGE_PRESETS``. Work is
    vectorised over ``batch_size`` jets at a time.
    """
    pt, eta, phi = _as_float(pt, eta, phi)
    _check_constituents("jet_images", pt, eta, phi)
    nx, ny, xr, yr = _grid(n_pixels, x_range, y_range)
    colours = (colours,) if isinstance(colours, str) else tuple(colours)
    unknown = [name for name in colours if name not in COLOURS]
    if unknown or not colours:
        raise ConfigError(f"colours must be names from {sorted(COLOURS)}; got {list(colours)}.")
    if normalise not in _NORMALISATIONS:
        raise ConfigError(f"normalise must be one of {_NORMALISATIONS}; got {normalise!r}.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}; the default is 4096.")
    needs_kind = [name for name in colours if COLOURS[name][0] is not None]
    if needs_kind and kind is None:
        raise ConfigError(f"colours {needs_kind} need the constituents' kind: pass kind=... .")
    if kind is not None:
        kind = np.asarray(kind)
        _check_constituents("jet_images", pt, kind)
    n, n_col = pt.shape[0], len(colours)
    out = np.zeros((n, n_col, ny, nx), dtype=np.float32)
    real = np.flatnonzero((pt > 0).any(axis=0)) if pt.size else np.zeros(0, int)
    if real.size == 0:
        return out
    width = int(real[-1]) + 1  # columns past this are padding in every jet
    pt, eta, phi = pt[:, :width], eta[:, :width], phi[:, :width]
    kind = None if kind is None else kind[:, :width]
    for start in range(0, n, int(batch_size)):
        sl = slice(start, start + int(batch_size))
        _images_batch(out[sl], pt[sl], eta[sl], phi[sl], None if kind is None else kind[sl],
                      nx, ny, xr, yr, colours, centre, rotate, flip, None if normalise == "max" else normalise)
    if normalise == "max":
        peak = out.max(axis=(2, 3), keepdims=True)
        np.divide(out, peak, out=out, where=peak > 0)
    return out


def heimel40(pt, eta, phi, **overrides):
    """Heimel et al. (arXiv:1808.08979 sec. 2.1) 40 x 40 pT images ``(n_jets, 40, 40)``, unit sum.

    Preset ``IMAGE_PRESETS["heimel40"]``; keyword ``overrides`` change any ``jet_images`` setting
    (with more than one colour the channel axis is kept: ``(n_jets, n_colours, ny, nx)``).
    """
    settings = {**IMAGE_PRESETS["heimel40"], **overrides}
    kind = settings.pop("kind", None)
    images = jet_images(pt, eta, phi, kind, **settings)
    return images[:, 0] if images.shape[1] == 1 else images


def ms37x4(pt, eta, phi, kind, **overrides):
    """Macaluso & Shih (arXiv:1803.00107) four-colour images ``(n_jets, 4, 37, 37)``.

    Channels: neutral pT, track pT (tracks and muons), track count, muon count, over 3.2 x 3.2
    in (eta', phi'). The pT channels are divided by the jet's scalar pT sum (all constituents),
    so together they sum to 1 when the whole jet is in the window; the count channels are raw
    counts. Preset ``IMAGE_PRESETS["ms37x4"]``; ``overrides`` change any ``jet_images`` setting.
    """
    return jet_images(pt, eta, phi, kind, **{**IMAGE_PRESETS["ms37x4"], **overrides})


def high_level_inputs(mass, tau1, tau2, tau3, sd_mass):
    """Jet-level inputs ``(n, 4)`` = ``[mass, tau32, tau21, sd_mass]`` (float32).

    ``tau32 = tau3 / tau2`` and ``tau21 = tau2 / tau1``, set to 0 where the denominator is 0.
    """
    inputs = _as_float(mass, tau1, tau2, tau3, sd_mass)
    mass, tau1, tau2, tau3, sd_mass = np.broadcast_arrays(*inputs)

    def ratio(num, den):
        return np.where(den != 0, num / np.where(den != 0, den, 1), 0)

    out = np.stack([mass, ratio(tau3, tau2), ratio(tau2, tau1), sd_mass], axis=-1)
    return out.astype(np.float32)
