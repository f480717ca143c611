"""Preprocessing throughput: jet images against energyflow, and the streaming loader against memory.

One run, on the same real jets (QCD + hadronic tops, 13 TeV, 800 < pT < 900 GeV, R = 0.8,
constituents stored as (n, 200) float32, as the quickstart study writes them), prints:

a. **images**, one thread (OMP_NUM_THREADS=1), jets/s per core:

   - ours: ``jetscan.core.images.heimel40`` (centre, rotate, flip, 40 x 40 over 1.14 x 1.38,
     unit sum) on the stored constituents tiled to ``--tile`` jets, in batches of 4096;
   - ours on energyflow's grid: ``jet_images`` with energyflow's pixel grid (below), centring
     only, and centre + rotate + flip;
   - energyflow (its own venv, ``benchmarks/energyflow_pixelate.py``): ``pixelate`` one jet at a
     time (its own centring), and ``center_ptyphims`` + ``rotate_ptyphims`` +
     ``reflect_ptyphims`` + ``pixelate`` (its closest analogue of heimel40);

   then the fraction of jets whose images agree (float32 tolerance) where the conventions
   match, and the ratios ours / energyflow (target >= 20x) and heimel40 jets/s/core (target
   >= 200k).

   Equivalence (read off energyflow 1.4.0's ``utils/image_utils.py`` and ``particle_utils.py``):
   energyflow's images are square, ``npix`` pixels of ``img_width / npix`` on a side, with
   ``image[phi_index, y_index]`` (our ``image[iy, ix]``, y = eta for massless constituents) and
   pT summed, normalised by the in-window sum (our ``normalise="sum"``). Its pixel index is
   ``ceil(t / w - 1/2) - (ceil(t_avg / w - 1/2) - npix // 2)``: the pT-weighted centroid's
   pixel (a nearest-pixel snap, not the centroid) goes to pixel ``npix // 2``, and pixel
   centres sit at multiples of w. For a jet already centred (t_avg = 0) that is exactly our
   half-open grid over ``[-(npix // 2 + 1/2) w, (npix - npix // 2 - 1/2) w)`` (for npix = 40,
   w = 1.5 / 40: [-0.76875, 0.73125), half a pixel off-symmetric), up to the side of a pixel
   edge a constituent exactly on it falls. So "matched conventions" = both pixelate
   jetscan-centred coordinates on that grid. Not equivalent: energyflow cannot make
   heimel40's non-square 1.14 x 1.38 window; its own centring snaps to the pixel grid (our
   centring is exact); it has no phi wrapping (we give it phi unwrapped around the hardest
   constituent, as our centring does internally); its reflection puts the larger pT *half*
   at positive y and phi where ours puts the *hardest constituent* in the upper-right
   quadrant (the rotation, major axis vertical about the pT centroid, is the same).

b. **the loader**: runs ``benchmarks/loader.py`` on this store (``--base-store``): JetStream
   over a tiled store larger than its cache, a shuffle buffer much smaller than the data,
   whole epochs with their start, cold (fresh process, page cache dropped) and warm, wall time
   with start-up, against the same consumer over in-memory arrays; see that script. (An
   earlier version of this part timed epochs served from the decoded-chunk cache its own
   untimed warm-up pass had filled; its loader/in-memory 0.999 did not measure streaming.)

Jets: a store of ``--qcd`` + ``--top`` jets generated once with ``generate(study,
use_ray=False)`` into ``--work`` (reused by later runs and by ``benchmarks/train.py``), or
``--store PATH`` of an existing store with samples qcd and top (copied to a temporary
directory first, never modified). Appends one JSON line to ``benchmarks/results.jsonl``.

    python benchmarks/preprocess.py [--qcd 2000 --top 1000] [--tile 100000] [--ef-jets 20000]
                                    [--epochs 3] [--store out/quickstart.zarr] [--quick]
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # not when benchmarks/train.py imports the store helpers
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"  # jets/s per core: one thread everywhere

import argparse  # noqa: E402
import atexit  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from _common import append_result, cpu_device, git_rev  # noqa: E402
from jetscan.core.images import IMAGE_PRESETS, heimel40, jet_images, preprocess_constituents  # noqa: E402
from jetscan.core.study import Study, settings_hash  # noqa: E402
from jetscan.storage import catalog, layout  # noqa: E402
from jetscan.storage.reader import read_jets  # noqa: E402

HERE = Path(__file__).resolve().parent
EF_ENV = HERE / ".venv-energyflow"
SAMPLES = ("qcd", "top")
CONSTITUENTS = ["constituents/pt", "constituents/eta", "constituents/phi"]
_TWO_PI = 2.0 * np.pi


# ------------------------------------------------------------------------------ the jets
def bench_study(store: str, n_qcd: int, n_top: int, shard_jets: int, representations, buffer: int | None = None) -> Study:
    """The benchmark study: the quickstart's jets (13 TeV, 800-900 GeV, R = 0.8, 200 constituents)."""
    data = {"batch_size": 128, "splits": {"train": 1.0, "val": 0.0, "test": 0.0}}
    if buffer is not None:
        data["shuffle_buffer_jets"] = buffer
    return Study.from_dict(
        {
            "name": "bench-preprocess",
            "store": store,
            "seed": 20181023,
            "sqrt_s_gev": 13000.0,
            "jet": {"r": 0.8, "pt_window_gev": [800.0, 900.0], "abs_eta_max": 1.0, "max_constituents": 200},
            "generation": {"shard_jets": shard_jets, "batch_events": 200},
            "preprocess": {"representations": list(representations)},
            "data": data,
            "samples": {
                "qcd": {"process": "qcd_dijet", "n_jets": n_qcd},
                "top": {"process": "top_hadronic", "n_jets": n_top},
            },
        }
    )


def study_from_store(src: str, dst: str, representations, buffer: int | None = None) -> Study:
    """Copy an existing store to ``dst`` and rebuild the study of its qcd and top samples.

    The study comes from the samples' stored generation settings, so its settings hash matches
    and ``preprocess`` accepts the copy; the original store is never touched.
    """
    if not Path(src).is_dir():
        raise SystemExit(f"--store {src}: no such directory")
    shutil.copytree(src, dst)
    root = layout.open_root(dst)
    settings = {}
    for s in SAMPLES:
        group = layout.open_sample(root, s)  # StorageError names a missing sample
        settings[s] = dict(group.attrs["settings"])
        n_shards = len(layout.shard_ranges(group.attrs["n_jets"], group.attrs["shard_jets"]))
        done = catalog.committed_shards(dst, s)
        if len(done) < n_shards:
            raise SystemExit(f"--store {src}: sample {s!r} has {len(done)}/{n_shards} shards generated; finish it first")
    common = {k: settings["qcd"][k] for k in ("sqrt_s_gev", "seed", "jet", "detector", "generation")}
    for s in SAMPLES[1:]:
        if any(settings[s][k] != v for k, v in common.items()):
            raise SystemExit(f"--store {src}: samples qcd and {s} were made with different study settings")
    data = {"batch_size": 128, "splits": {"train": 1.0, "val": 0.0, "test": 0.0}}
    if buffer is not None:
        data["shuffle_buffer_jets"] = buffer
    samples = {s: {k: v for k, v in settings[s]["sample"].items() if k != "name"} for s in SAMPLES}
    study = Study.from_dict(
        {"name": "bench-store", "store": dst, **common, "preprocess": {"representations": list(representations)},
         "data": data, "samples": samples}
    )
    for s in SAMPLES:
        if settings_hash(study.generation_settings(s)) != layout.open_sample(root, s).attrs["settings_hash"]:
            raise SystemExit(f"--store {src}: cannot rebuild the study of sample {s!r} (made by another jetscan version?)")
    return study


def prepare_store(args, representations) -> tuple[Study, str]:
    """Generate (or reuse, or copy) the store and preprocess ``representations`` into it."""
    from jetscan.jobs.preprocess import preprocess

    if args.store:
        tmp = Path(tempfile.mkdtemp(prefix="jetscan-bench-"))
        atexit.register(shutil.rmtree, tmp, True)  # the copy goes when the run ends
        study = study_from_store(args.store, str(tmp / "copy.zarr"), representations, args.buffer)
        source = f"copy of {args.store}"
    else:
        from jetscan.jobs.generate import generate

        path = Path(args.work) / f"q{args.qcd}-t{args.top}-s{args.shard_jets}.zarr"
        if args.fresh and path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        study = bench_study(str(path), args.qcd, args.top, args.shard_jets, representations, args.buffer)
        t0 = time.perf_counter()
        rows = generate(study, use_ray=False)
        if rows:
            n = sum(r["n_jets"] for r in rows)
            print(f"generated {n} jets ({', '.join(SAMPLES)}) in {time.perf_counter() - t0:.1f} s into {path}")
        source = str(path)
    t0 = time.perf_counter()
    rows, waiting = preprocess(study, use_ray=False)
    if waiting:
        raise SystemExit(f"shards not generated yet: {waiting}")
    if rows:
        print(f"preprocessed {', '.join(representations)} in {time.perf_counter() - t0:.1f} s")
    return study, source


def read_constituents(study: Study) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [read_jets(study.store, s, CONSTITUENTS) for s in SAMPLES]
    pt, eta, phi = (np.concatenate([p[f] for p in parts]) for f in CONSTITUENTS)
    return pt, eta, phi


# ----------------------------------------------------------------------------- helpers
def stats(times, jets_per_step) -> dict:
    """First-step (cold) latency; steady-state rate and p50/p95 (ms) over all steps but the first."""
    t = np.asarray(times, dtype=float)
    n = np.asarray(jets_per_step, dtype=float) * np.ones_like(t)
    rest, n_rest = (t[1:], n[1:]) if len(t) > 1 else (t, n)
    return {
        "first_ms": 1e3 * t[0],
        "rate": float(n_rest.sum() / rest.sum()),
        "p50_ms": float(1e3 * np.percentile(rest, 50)),
        "p95_ms": float(1e3 * np.percentile(rest, 95)),
        "steps": len(rest),
    }


def fmt(s: dict, unit: str = "jets/s") -> str:
    return (f"{s['rate']:10.0f} {unit}  first (cold) {s['first_ms']:7.2f} ms, "
            f"then p50 {s['p50_ms']:7.3f} ms, p95 {s['p95_ms']:7.3f} ms ({s['steps']} steps)")


# --------------------------------------------------------------------------- a. images
def ef_grid(npix: int, width: float) -> tuple[float, float]:
    """energyflow's pixel grid for a centred jet, as our (low, high) range (module docstring)."""
    w = width / npix
    return (-(npix // 2 + 0.5) * w, (npix - npix // 2 - 0.5) * w)


def time_ours(fns: dict, pt, eta, phi, batch: int, repeat: int) -> dict:
    """Per-batch times of each function; passes interleaved so drifts in machine load hit all alike."""
    times = {k: [] for k in fns}
    sizes = {k: [] for k in fns}
    for name, fn in fns.items():  # the cold first call: first-batch latency, not in the rate
        t0 = time.perf_counter()
        fn(pt[:batch], eta[:batch], phi[:batch])
        times[name].append(time.perf_counter() - t0)
        sizes[name].append(len(pt[:batch]))
    for _ in range(repeat):
        for name, fn in fns.items():
            for s in range(0, len(pt), batch):
                t0 = time.perf_counter()
                fn(pt[s : s + batch], eta[s : s + batch], phi[s : s + batch])
                times[name].append(time.perf_counter() - t0)
                sizes[name].append(len(pt[s : s + batch]))
    return {k: stats(times[k], sizes[k]) for k in fns}


def ensure_ef_env(python: Path) -> Path:
    """The energyflow venv (numpy < 2), created on first use."""
    if python.exists():
        return python
    env = python.parent.parent
    print(f"creating {env} (energyflow needs numpy < 2) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    # keep the venv out of git even where .gitignore does not list it (Python 3.13's venv does the same)
    (env / ".gitignore").write_text("*\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy<2", "energyflow"], check=True)
    return python


def agree(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> tuple[float, int]:
    """Fraction of jets whose images agree pixel by pixel, and the number that differ."""
    ok = (np.abs(ours - ref) <= atol + rtol * np.abs(ref)).reshape(len(ours), -1).all(axis=1)
    return float(ok.mean()), int((~ok).sum())


def images_part(args, pt, eta, phi) -> dict:
    n_real = len(pt)
    width = int(np.flatnonzero((pt > 0).any(axis=0))[-1]) + 1
    pt, eta, phi = pt[:, :width], eta[:, :width], phi[:, :width]
    reps = -(-args.tile // n_real)
    tpt, teta, tphi = (np.ascontiguousarray(np.tile(a, (reps, 1))[: args.tile]) for a in (pt, eta, phi))
    npix, img_width = args.npix, args.img_width
    grid = ef_grid(npix, img_width)
    common = dict(n_pixels=(npix, npix), x_range=grid, y_range=grid, colours=("pt",), normalise="sum")

    def centred(p, e, f):
        return jet_images(p, e, f, centre=True, rotate=False, flip=False, **common)[:, 0]

    def full(p, e, f):
        return jet_images(p, e, f, centre=True, rotate=True, flip=True, **common)[:, 0]

    print(f"a. images: {n_real} real jets ({width} constituent columns used), tiled to {args.tile}, batches of "
          f"{args.batch}, 1 thread")
    fns = {"heimel40": heimel40, "centred_ef_grid": centred, "full_ef_grid": full}
    ours = time_ours(fns, tpt, teta, tphi, args.batch, args.repeat)
    print(f"  ours heimel40 (centre+rotate+flip, 40x40 over 1.14x1.38)  {fmt(ours['heimel40'])}")
    print(f"  ours centre only, energyflow grid {npix}x{npix} over {img_width}     {fmt(ours['centred_ef_grid'])}")
    print(f"  ours centre+rotate+flip, energyflow grid            {fmt(ours['full_ef_grid'])}")
    result = {"jets_real": n_real, "tile": args.tile, "ours": ours, "grid": {"npix": npix, "img_width": img_width,
              "range": grid}}
    if args.skip_ef:
        return result

    # energyflow, in its own venv, on the same real jets
    python = ensure_ef_env(Path(args.ef_python))
    hard = np.argmax(pt, axis=1)
    rows = np.arange(n_real)
    dphi = phi - phi[rows, hard][:, None]
    dphi -= _TWO_PI * np.rint(dphi / _TWO_PI)
    phi_w = (phi[rows, hard][:, None] + dphi).astype(np.float32)
    x_c, y_c = preprocess_constituents(pt, eta, phi, centre=True, rotate=False, flip=False)
    tmp = Path(tempfile.mkdtemp(prefix="jetscan-ef-"))
    np.savez(tmp / "in.npz", pt=pt, eta=eta, phi=phi_w, x_c=x_c, y_c=y_c, npix=npix, img_width=img_width)
    cmd = [str(python), str(HERE / "energyflow_pixelate.py"), str(tmp / "in.npz"), str(tmp / "out.npz"),
           "--jets", str(args.ef_jets), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    subprocess.run(cmd, check=True, env=env)
    out = np.load(tmp / "out.npz")
    version = str(out["energyflow_version"])
    ef = {}
    for mode in ("pixelate", "pixelate_centred", "chain"):
        ef[mode] = stats(out[f"{mode}_times"], 1)
        print(f"  energyflow {version} {mode:17s} (per jet)              {fmt(ef[mode])}")

    # agreement on the real jets
    ours_c = centred(pt, eta, phi)
    ours_f = full(pt, eta, phi)
    a_c = agree(ours_c, out["pixelate_centred_images"])
    a_own = agree(ours_c, out["pixelate_images"])
    a_f = agree(ours_f, out["chain_images"])
    # our centre + rotate, then energyflow's reflection rule (larger pT half to positive x', y')
    xr, yr = preprocess_constituents(pt, eta, phi, centre=True, rotate=True, flip=True)
    xr = np.where(((pt * (xr < 0)).sum(1) > (pt * (xr > 0)).sum(1))[:, None], -xr, xr)
    yr = np.where(((pt * (yr < 0)).sum(1) > (pt * (yr > 0)).sum(1))[:, None], -yr, yr)
    ours_r = jet_images(pt, xr, yr, centre=False, rotate=False, flip=False, **common)[:, 0]
    a_r = agree(ours_r, out["chain_images"])
    print(f"  images agree (|d| <= 1e-6 + 1e-5 |ef|, per jet), {n_real} jets:")
    print(f"    matched conventions: both pixelate jetscan-centred jets on the same grid  {a_c[0]:7.2%}  ({a_c[1]} differ)")
    print(f"    ours centred vs energyflow's own centring (snaps to the pixel grid)       {a_own[0]:7.2%}  ({a_own[1]} differ)")
    print(f"    ours centre+rotate+flip vs energyflow center+rotate+reflect+pixelate       {a_f[0]:7.2%}  ({a_f[1]} differ: "
          "reflection by pT halves vs by the hardest constituent)")
    print(f"    ours centre+rotate with energyflow's reflection rule vs its chain             {a_r[0]:7.2%}  ({a_r[1]} differ)")
    r_c = ours["centred_ef_grid"]["rate"] / ef["pixelate"]["rate"]
    r_f = ours["full_ef_grid"]["rate"] / ef["chain"]["rate"]
    r_h = ours["heimel40"]["rate"] / ef["pixelate"]["rate"]
    print(f"ratio ours/energyflow, centring + pixelation (same grid)     = {r_c:7.1f}x  (target >= 20x)")
    print(f"ratio ours/energyflow, centre+rotate+flip/reflect + pixelate = {r_f:7.1f}x  (target >= 20x)")
    print(f"ratio ours heimel40 / energyflow pixelate                     = {r_h:7.1f}x  (for reference)")
    out.close()
    shutil.rmtree(tmp, ignore_errors=True)
    result.update(energyflow_version=version, energyflow=ef,
                  agreement={"matched_centred": a_c[0], "ef_own_centring": a_own[0], "full_chain": a_f[0],
                             "full_chain_ef_reflection": a_r[0]},
                  ratio_centred=r_c, ratio_full=r_f, ratio_heimel40_over_ef_pixelate=r_h)
    return result


# --------------------------------------------------------------------------- b. loader
def loader_part(args, study: Study) -> dict:
    """benchmarks/loader.py on this store (it appends its own results line)."""
    cmd = [sys.executable, str(HERE / "loader.py"), "--base-store", study.store, "--epochs", str(args.epochs),
           "--batch", str(args.loader_batch)]
    if args.buffer is not None:
        cmd += ["--buffer", str(args.buffer)]
    if args.quick:
        cmd.append("--quick")
    print("b. loader: " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return {"see": "benchmarks/loader.py (its own results line, bench=loader)"}


# ------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qcd", type=int, default=2000, help="QCD jets to generate")
    ap.add_argument("--top", type=int, default=1000, help="top jets to generate")
    ap.add_argument("--shard-jets", type=int, default=500)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "jetscan-bench"),
                    help="where the generated store is kept (reused by later runs and by train.py)")
    ap.add_argument("--fresh", action="store_true", help="regenerate the store")
    ap.add_argument("--store", help="an existing store with samples qcd and top (copied, never modified)")
    ap.add_argument("--tile", type=int, default=100_000, help="jets (real ones, tiled) for our image rates")
    ap.add_argument("--batch", type=int, default=4096, help="jets per heimel40 call")
    ap.add_argument("--repeat", type=int, default=3, help="passes over the tiled jets")
    ap.add_argument("--ef-jets", type=int, default=20_000, help="jets timed per energyflow mode")
    ap.add_argument("--ef-python", default=str(EF_ENV / "bin" / "python"))
    ap.add_argument("--npix", type=int, default=40, help="energyflow grid: pixels per side")
    ap.add_argument("--img-width", type=float, default=1.5, help="energyflow grid: width (heimel40_centred's)")
    ap.add_argument("--epochs", type=int, default=3, help="loader epochs per side (loader.py --epochs)")
    ap.add_argument("--buffer", type=int, default=None, help="shuffle_buffer_jets (default: the study default)")
    ap.add_argument("--loader-batch", type=int, default=128)
    ap.add_argument("--skip-ef", action="store_true")
    ap.add_argument("--skip-loader", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs (a few s of CPU)")
    args = ap.parse_args()
    if args.quick:
        args.qcd, args.top, args.shard_jets = 60, 40, 20
        args.tile, args.batch, args.repeat, args.ef_jets, args.epochs, args.loader_batch = 2000, 500, 1, 300, 2, 16

    study, source = prepare_store(args, ["heimel40"])
    pt, eta, phi = read_constituents(study)
    print(f"jets: {len(pt)} ({', '.join(SAMPLES)}) from {source}; constituents {pt.shape} {pt.dtype}")
    result = {
        "bench": "preprocess",
        "git": git_rev(),
        "device": cpu_device(),
        "config_hash": settings_hash({
            "jets": {s: settings_hash(study.generation_settings(s)) for s in SAMPLES},
            "heimel40": IMAGE_PRESETS["heimel40"],
            "args": {k: v for k, v in vars(args).items() if k not in ("work", "ef_python", "store", "fresh")},
        }),
        "quick": args.quick,
        "images": images_part(args, pt, eta, phi),
    }
    h = result["images"]["ours"]["heimel40"]["rate"]
    print(f"ours heimel40            = {h:,.0f} jets/s/core  (target >= 200,000)")
    if not args.skip_loader:
        result["loader"] = loader_part(args, study)
    append_result(result, quick=args.quick)


if __name__ == "__main__":
    main()
