"""Scan throughput and aggregation on Dask (``jetscan scan``).

Two measurements:

- **cells per hour, 1 vs N Dask workers on equal cores**: the same grid (``--cells`` repeats of
  one dense-autoencoder run, each a distinct training + evaluation) on a LocalCluster of N
  workers (``cores // N`` torch threads each) against one worker with equal cores
  (``cores // N`` threads, the whole run pinned to ``cores // N`` cores, so its decode threads
  and scheduler cannot spill onto the others: how the scan scales with workers, the issue's
  ratio) and one worker
  with all the cores as torch threads (what a user of this machine chooses between), each on
  a fresh copy of the store. Wall time from the call to its return (cluster start-up, worker
  imports, training, evaluation, results, aggregation), and the loop time from the first task
  submitted (the workers up, and warm: ``jetscan scan`` has them import the training stack
  before its first task) to the last one done (without start-up and aggregation). Issue
  target: >= 1.8x for N = 2; use cells long against a worker's start-up (``--epochs``).
  The N workers run pinned to their own cores (the default) and once more left to the OS
  scheduler (``pin_cores=False``); every side runs once per round (``--rounds``), the order
  alternating between rounds, and the ratios are taken within a round: median and range.
- **aggregation of C cells x J per-jet scores** (ROC + bootstrap band per cell, the scan's
  ``roc_bands``): background and signal scores of every cell stored as zarr arrays (as the
  results store holds them; the scores are drawn from two Gaussians, the benchmark measures
  the reduction, not physics), reduced on a 2-worker LocalCluster (one task per worker, each
  reading and reducing a run of cells) against a
  single-threaded numpy loop (:func:`jetscan.jobs.scan.roc_band_numpy`, reading the same
  arrays) run on one core, as each worker runs on one: left to the OS scheduler on 2 vCPUs, that
  loop took 2x as long here (zarr's reads hand work between threads, and a wake-up on the other
  vCPU is expensive on this virtual machine), which would flatter the cluster. Cold (first call; the cluster is up and its workers have imported the scan's code,
  as they have after a scan's cells: both counted in the start-up) and warm (repeated).
  Issue target: >= 1.8x.

    python benchmarks/scan.py [--store out/quickstart.zarr] [--cells 4] [--epochs 3] [--workers 2]
        [--agg-cells 100] [--agg-jets 100000] [--boot 50] [--part cells|agg|both] [--rounds 1]
        [--sides 1w_per,Nw]

Without ``--store`` a small store (QCD and top, Pythia, no Ray) is generated in a temporary
folder first (not timed). Appends one JSON line to ``benchmarks/results.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/distributed.py would shadow the distributed package: import _common by its path
# and keep this folder off sys.path (the Dask worker processes inherit it)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("_bench_common", _HERE / "_common.py")
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
append_result, cpu_device = _common.append_result, _common.cpu_device


def make_study(store: str | None, tmp: Path, epochs: int, cells: int, jets: int):
    from jetscan.core.study import Study
    from jetscan.jobs.generate import generate

    runs = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": epochs, "optimizer": "adam"}}
    scan = {"bench": {"runs": ["dense"], "repeats": cells}}
    if store:
        data = _common.store_study(store, "bench-scan")
    else:
        data = {"name": "bench-scan", "store": str(tmp / "base.zarr"), "seed": 5, "sqrt_s_gev": 13000.0,
                "jet": {"r": 0.8, "pt_window_gev": [800.0, 900.0], "abs_eta_max": 1.0, "max_constituents": 120},
                "generation": {"shard_jets": 250, "batch_events": 100},
                "samples": {"qcd": {"process": "qcd_dijet", "n_jets": jets}, "top": {"process": "top_hadronic", "n_jets": jets // 4}}}
    data.update({"preprocess": {"representations": ["heimel40"]}, "train": {"runs": runs}, "scan": scan})
    study = Study.from_dict(data)
    if not store:
        generate(study, use_ray=False)
    return study


def cells_per_hour(study, tmp: Path, workers: int, threads: int, pin: bool = True) -> dict:
    from jetscan.core.study import Study
    from jetscan.jobs.scan import scan

    copy = tmp / f"w{workers}t{threads}{'' if pin else 'u'}.zarr"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(study.store, copy, ignore=shutil.ignore_patterns("_runs", "_results", "results", "_scan"))
    data = study.model_dump(mode="json")
    data["store"] = str(copy)
    s = Study.from_dict(data)
    marks: list[float] = []
    t0 = time.perf_counter()
    out = scan(s, "bench", workers=workers, threads=threads, pin_cores=pin,
               echo=lambda msg: marks.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    assert not out["failed"], out["failed"]
    loop = marks[-1] - marks[0]  # first echo: workers up and warm, graph submitted; last: last task done
    shutil.rmtree(copy, ignore_errors=True)
    return {"workers": workers, "threads_per_worker": threads, "pinned": pin and workers > 1, "cells": out["cells"],
            "wall_s": wall, "loop_s": loop, "cells_per_hour_wall": 3600 * out["cells"] / wall,
            "cells_per_hour_loop": 3600 * out["cells"] / loop}


def aggregation(tmp: Path, cells: int, jets: int, n_boot: int, workers: int, repeat: int) -> dict:
    import numpy as np

    from jetscan.cluster.dask import open_client
    from jetscan.jobs.scan import _band_of_stored, roc_bands

    path = _common.score_store(tmp / "agg.zarr", cells, jets)

    def numpy_loop():  # the cells one after another: a Dask task's per-cell work, in this process
        return [_band_of_stored(f"{path}/c{c}/bkg", f"{path}/c{c}/sig", n_boot, seed=c) for c in range(cells)]

    def dask_run(client):
        pairs = [(f"{path}/c{c}/bkg", f"{path}/c{c}/sig") for c in range(cells)]
        return roc_bands(pairs, n_boot, client=client)

    times = {"numpy": [], "dask": []}
    t0 = time.perf_counter()
    with open_client(workers=workers) as client:
        # the workers import the scan's code, as they have after a scan's cells (start-up, not aggregation)
        client.run(importlib.import_module, "jetscan.jobs.scan")
        startup = time.perf_counter() - t0
        ref = None
        for i in range(repeat + 1):
            with _common.on_cores(1):  # one core, as each (pinned) worker has
                t = time.perf_counter()
                ref = numpy_loop()
                times["numpy"].append(time.perf_counter() - t)
            t = time.perf_counter()
            got = dask_run(client)
            times["dask"].append(time.perf_counter() - t)
        same = all(np.allclose(a[0], b[0]) for a, b in zip(ref, got))
    return {"cells": cells, "jets": jets, "n_boot": n_boot, "workers": workers, "pinned": True,
            "numpy_on_one_core": True, "cluster_startup_s": startup,
            "numpy_s": times["numpy"], "dask_s": times["dask"], "same_curves": bool(same),
            "ratio_cold": times["numpy"][0] / times["dask"][0],
            "ratio_warm": float(np.median(times["numpy"][1:]) / np.median(times["dask"][1:])) if repeat else None,
            "ratio_with_startup": times["numpy"][0] / (times["dask"][0] + startup)}


def cells_part(study, tmp: Path, workers: int, rounds: int, only=None) -> dict:
    """Cells per hour of every side of ``_common.worker_rounds``; ratios within a round, median
    and range ("equal cores per worker": the issue's ratio)."""
    import statistics

    def measure(key, r, n, threads, pin):
        got = cells_per_hour(study, tmp, n, threads, pin)
        print(f"round {r}, {key}: {n} worker(s) x {threads} thread(s){', pinned' if got['pinned'] else ''}: "
              f"{got['cells_per_hour_wall']:.0f} cells/hour (wall incl. cluster start-up), "
              f"{got['cells_per_hour_loop']:.0f} (loop)", flush=True)
        return got

    runs, per, cores = _common.worker_rounds(workers, rounds, measure, only)
    out = {"cells": runs, "rounds": rounds}
    for many in ("Nw", "Nw_unpinned"):
        for key, one in (("same_cores", "1w_all"), ("equal_cores_per_worker", "1w_per")):
            if many not in runs[0] or one not in runs[0]:
                continue  # a side left out (--sides)
            for what in ("wall", "loop"):
                xs = [x[many][f"cells_per_hour_{what}"] / x[one][f"cells_per_hour_{what}"] for x in runs]
                suffix = "" if many == "Nw" else "_unpinned"
                out[f"ratio_cells_per_hour_{what}_{key}{suffix}"] = statistics.median(xs)
                out[f"ratio_cells_per_hour_{what}_{key}{suffix}_rounds"] = xs
    for many, label in (("Nw", "pinned (default)"), ("Nw_unpinned", "not pinned (--no-pin-cores)")):
        suffix = "" if many == "Nw" else "_unpinned"
        for key, what in (("equal_cores_per_worker", f"equal cores per worker ({per} thread(s) each; target >= 1.8)"),
                          ("same_cores", f"1 worker with all {cores} cores as threads")):
            if f"ratio_cells_per_hour_wall_{key}{suffix}_rounds" not in out:
                continue
            print(f"ratio {workers} workers {label} / 1 worker, {what}: wall "
                  f"{_common.median_range(out[f'ratio_cells_per_hour_wall_{key}{suffix}_rounds'])}, loop "
                  f"{_common.median_range(out[f'ratio_cells_per_hour_loop_{key}{suffix}_rounds'])} (median (range) of {rounds} round(s))")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=None)
    p.add_argument("--cells", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--jets", type=int, default=1000, help="QCD jets of the generated store (no --store)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--agg-cells", type=int, default=100)
    p.add_argument("--agg-jets", type=int, default=100_000)
    p.add_argument("--boot", type=int, default=50)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--part", choices=["cells", "agg", "both"], default="both")
    p.add_argument("--rounds", type=int, default=1, help="cells: rounds of every side, alternating their order")
    p.add_argument("--sides", default=None,
                   help="cells: the sides to measure, comma-separated, of 1w_all,1w_per,Nw,Nw_unpinned (default all)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    result = {"bench": "scan", "device": cpu_device(), "cores": os.cpu_count(), "argv": sys.argv[1:]}
    try:
        if args.part in ("cells", "both"):
            study = make_study(args.store, tmp, args.epochs, args.cells, args.jets)
            result.update(cells_part(study, tmp, args.workers, args.rounds,
                                     None if args.sides is None else tuple(args.sides.split(","))))
        if args.part in ("agg", "both"):
            agg = aggregation(tmp, args.agg_cells, args.agg_jets, args.boot, args.workers, args.repeat)
            result["aggregation"] = agg
            print(f"aggregation {args.agg_cells} cells x {args.agg_jets} jets, {args.boot} bootstraps: numpy loop "
                  f"{agg['numpy_s'][0]:.2f} s cold / dask {args.workers} workers {agg['dask_s'][0]:.2f} s cold "
                  f"(cluster start-up {agg['cluster_startup_s']:.1f} s): ratio cold {agg['ratio_cold']:.2f}, warm "
                  f"{agg['ratio_warm'] if agg['ratio_warm'] is None else round(agg['ratio_warm'], 2)}, with start-up "
                  f"{agg['ratio_with_startup']:.2f} (target >= 1.8); same curves: {agg['same_curves']}")
        result["load_avg_note"] = "shared machine: see load_avg"
        append_result(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
