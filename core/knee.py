"""The knee of a curve: where adding capacity stops paying (an unsupervised model choice).

Farina, Nakai & Shih (arXiv:1808.08992, sec. 3) pick the autoencoder's latent dimension where
the reconstruction loss stops improving. :func:`knee_point` finds that point as the Kneedle
method does (Satopää et al., "Finding a 'Kneedle' in a Haystack", ICDCS workshops 2011): both
axes are normalised to [0, 1], and the knee is the point farthest from the chord joining the
first and last points (Kneedle's difference curve is this distance up to a constant factor).
"""

from __future__ import annotations

import numpy as np

__all__ = ["knee_point"]


def knee_point(x, y) -> int | None:
    """Index (into the x-sorted points) of the knee of ``y(x)``, or None.

    ``x``, ``y``: 1-d arrays of equal length (unsorted is fine; duplicate x values are not
    merged: pass one y per x, e.g. the best loss per bottleneck). Returns the index into
    ``np.argsort(x, kind="stable")``-ordered points; None for fewer than 3 points, a flat
    curve, or a straight line (no point lies off the chord).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({len(x)}, {len(y)})")
    if len(x) < 3 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    dx, dy = xs[-1] - xs[0], ys.max() - ys.min()
    if dx <= 0 or dy <= 0:
        return None
    xn, yn = (xs - xs[0]) / dx, (ys - ys.min()) / dy
    # distance of every point from the chord through the first and last points
    cx, cy = xn[-1] - xn[0], yn[-1] - yn[0]
    dist = np.abs(cx * (yn - yn[0]) - cy * (xn - xn[0])) / np.hypot(cx, cy)
    best = int(np.argmax(dist))
    if dist[best] < 1e-9:
        return None
    return best
