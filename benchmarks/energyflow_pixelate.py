"""energyflow's per-jet pixelation, timed: the reference side of ``benchmarks/preprocess.py``.

Runs inside its own environment (energyflow 1.4 needs numpy < 2), which ``preprocess.py``
creates on first use::

    python3 -m venv benchmarks/.venv-energyflow
    benchmarks/.venv-energyflow/bin/pip install "numpy<2" energyflow

Do not import jetscan here. Input: an .npz written by ``preprocess.py`` holding padded,
pT-ordered float32 constituent arrays ``pt``, ``eta``, ``phi`` (phi already unwrapped around
each jet's hardest constituent: energyflow does no phi wrapping) and ``x_c``, ``y_c`` (the
constituents centred by jetscan, used for the matched-conventions comparison), plus the grid
(``npix``, ``img_width``). Each jet becomes one ``(n_i, 3)`` float64 array of (pT, y = eta, phi)
*before* timing starts (energyflow's datasets hand out such ragged per-jet arrays), so the
timed loop is only energyflow's own per-jet work. Modes:

- ``pixelate``: ``pixelate(jet, npix, img_width, nb_chan=1, norm=True)`` on (pt, eta, phi):
  energyflow's own centring, which moves the pT-weighted centroid's *pixel* (not the centroid
  itself) to pixel ``npix // 2``;
- ``pixelate_centred``: the same call on jetscan's centred (x_c, y_c): energyflow's re-centring
  is then a no-op, so only the pixelation is compared;
- ``chain``: ``center_ptyphims(center="ptscheme")`` (the pT-weighted centroid to the origin),
  ``rotate_ptyphims`` (principal axis vertical), ``reflect_ptyphims(which="both")`` (more pT at
  positive y and phi), then ``pixelate``: energyflow's nearest equivalent of heimel40.

Writes ``<mode>_seconds`` (total), ``<mode>_times`` (per-jet seconds, all timed jets) and
``<mode>_images`` (float32 ``(n_real, npix, npix)``, the first pass over the real jets) to the
output .npz, plus ``energyflow_version`` and ``numpy_version``.

    python benchmarks/energyflow_pixelate.py IN.npz OUT.npz [--jets 20000] [--modes pixelate,chain]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

import energyflow as ef  # noqa: E402
from energyflow.utils import center_ptyphims, pixelate, reflect_ptyphims, rotate_ptyphims  # noqa: E402

MODES = ("pixelate", "pixelate_centred", "chain")


def ragged(pt: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Per-jet (n_i, 3) float64 arrays of (pt, a, b), padding (pt = 0, trailing) dropped."""
    n_real = (pt > 0).sum(axis=1)
    return [np.stack([pt[j, :n], a[j, :n], b[j, :n]], axis=1).astype(np.float64) for j, n in enumerate(n_real)]


def run(jets: list[np.ndarray], n_timed: int, npix: int, width: float, chain: bool):
    n_real = len(jets)
    images = np.zeros((n_real, npix, npix), np.float32)
    times = np.empty(n_timed)
    t_all = time.perf_counter()
    for k in range(n_timed):
        jet = jets[k % n_real]
        t0 = time.perf_counter()
        if chain:
            jet = center_ptyphims(jet, center="ptscheme")
            jet = rotate_ptyphims(jet, copy=False)
            jet = reflect_ptyphims(jet, which="both", copy=False)
        img = pixelate(jet, npix=npix, img_width=width, nb_chan=1, norm=True)
        times[k] = time.perf_counter() - t0
        if k < n_real:
            images[k] = img[..., 0]
    return time.perf_counter() - t_all, times, images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--jets", type=int, default=20000, help="jets timed per mode (the real jets, cycled)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--quiet", action="store_true", help="no per-mode line (preprocess.py prints its own)")
    args = ap.parse_args()

    d = np.load(args.inp)
    npix, width = int(d["npix"]), float(d["img_width"])
    inputs = {
        "pixelate": ragged(d["pt"], d["eta"], d["phi"]),
        "pixelate_centred": ragged(d["pt"], d["x_c"], d["y_c"]),
    }
    inputs["chain"] = inputs["pixelate"]
    out = {"energyflow_version": np.array(ef.__version__), "numpy_version": np.array(np.__version__)}
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        jets = inputs[mode]
        n_timed = max(args.jets, len(jets))
        total, times, images = run(jets, n_timed, npix, width, chain=(mode == "chain"))
        out[f"{mode}_seconds"] = np.array(total)
        out[f"{mode}_times"] = times
        out[f"{mode}_images"] = images
        if not args.quiet:
            print(f"  energyflow {ef.__version__} {mode:17s} {n_timed} jets in {total:.2f} s: "
                  f"{n_timed / total:9.0f} jets/s (1 thread)", flush=True)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
