"""Fixtures for the model tests: one torch thread, and seeded synthetic jets (no Pythia).

- ``blob_images(n, prongs, seed, size=40)``: unit-sum images ``(n, size, size)`` float32 of a
  Gaussian core near the centre plus, for ``prongs=2``, a second, softer blob 5-12 pixels away
  at a random angle: a one-prong (QCD-like) and a two-prong (W/top-like) family.
- ``spray_p4s(n, prongs, seed, n_const=40)``: ``(n, n_const, 4)`` float32 ``(E, px, py, pz)``
  massless constituents in ``prongs`` collimated sprays (unit total energy per prong); more
  prongs at wider angles give a heavier jet. Rows past a random multiplicity are zero padding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Keep each test module on one CPU thread (the machine is shared); restore afterwards."""
    try:
        import torch
    except ImportError:  # the test modules skip themselves
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _blob_images(n, prongs, seed, size=40):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2.0
    out = np.zeros((n, size, size))
    for i in range(n):
        x0, y0 = c + rng.normal(0, 0.5, 2)
        img = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.2**2))
        if prongs == 2:
            r, a = rng.uniform(5, 12), rng.uniform(0, 2 * math.pi)
            x1, y1 = x0 + r * math.cos(a), y0 + r * math.sin(a)
            blob = np.exp(-((xx - x1) ** 2 + (yy - y1) ** 2) / (2 * 1.2**2))
            img = img / img.sum() + rng.uniform(0.3, 0.8) * blob / blob.sum()
        img += rng.exponential(1e-4, img.shape) * (rng.random(img.shape) < 0.02)  # soft noise
        out[i] = img / img.sum()
    return out.astype(np.float32)


def _spray_p4s(n, prongs, seed, n_const=40):
    rng = np.random.default_rng(seed)
    out = np.zeros((n, n_const, 4))
    for i in range(n):
        mult = rng.integers(n_const // 2, n_const + 1)
        axes = []
        for k in range(prongs):
            theta = 0.0 if k == 0 else rng.uniform(0.4, 0.8)
            phi = rng.uniform(0, 2 * math.pi)
            axes.append((theta, phi))
        which = rng.integers(0, prongs, mult)
        for j in range(mult):
            theta0, phi0 = axes[which[j]]
            theta = abs(theta0 + rng.normal(0, 0.05))
            phi = phi0 + rng.normal(0, 0.05) / max(math.sin(theta0), 0.05)
            e = rng.exponential(1.0) / mult * prongs
            out[i, j] = e * np.array([1.0, math.sin(theta) * math.cos(phi),
                                      math.sin(theta) * math.sin(phi), math.cos(theta)])
    return out.astype(np.float32)


@pytest.fixture
def blob_images():
    return _blob_images


@pytest.fixture
def spray_p4s():
    return _spray_p4s
