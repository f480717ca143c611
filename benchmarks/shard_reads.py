"""Direct shard reads (``jetscan.storage.shardread``) against zarr's reads, on the same store.

The store is the one ``benchmarks/preprocess.py`` generates (real Pythia jets: 2000 QCD +
1000 top, 13 TeV, 800-900 GeV, 500-jet shards, heimel40 preprocessed; ``--store`` for
another). Three reads, as jetscan makes them:

- **preprocess**: ``layout.read_rows`` of a whole shard of the constituent arrays a
  representation needs (pt, eta, phi, ...: zstd, 200 columns);
- **loader unit**: one inner chunk of ``inputs/heimel40`` plus the jets' label and mass, the
  streaming loader's unit (blosc-zstd images, 6.4 kB a jet), from arrays opened once, as
  ``JetStream`` reads them;
- **whole sample**: every array of a sample, shard by shard.

Each side reads everything once per round, the sides alternating within a round; round 0
runs right after ``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only, said when it failed)
and is reported as **cold**, the median of the others as **warm**. Both wall time and this
process's CPU time (all threads; zarr reads through its own event-loop thread) are
reported, with the ratios zarr / direct. The arrays both sides return are compared value by
value. Appends one JSON line to ``benchmarks/results.jsonl``.

    python benchmarks/shard_reads.py [--rounds 5] [--store PATH] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_result, cpu_device, drop_page_cache, git_rev  # noqa: E402


def workloads(store: str):
    """{name: (jets per pass, a function making one pass, returning the arrays read)}."""
    from jetscan.core import representations as reps
    from jetscan.core.study import RepresentationConfig
    from jetscan.storage import catalog, layout, shardread
    from jetscan.storage.loader import _read_slices  # imports torch: before any timing

    root = layout.open_root(store)
    qcd = layout.open_sample(root, "qcd")
    shards = catalog.read_catalog(store, "qcd")
    fields = reps.required_fields(RepresentationConfig(preset="heimel40"))
    n_qcd = int(qcd["jets/pt"].shape[0])
    chunk = layout.chunk_jets_for(int(qcd.attrs["shard_jets"]))
    unit_paths = ["inputs/heimel40", "truth/label", "jets/mass"]
    every = [*layout.JET_FIELDS, *layout.CONSTITUENT_FIELDS, "inputs/heimel40"]

    def preprocess_pass():
        return [layout.read_rows(qcd, fields, int(r["start"]), int(r["stop"])) for r in shards.to_pylist()]

    def loader_pass():  # the arrays opened once, as JetStream does
        handles = [(a, shardread.reader(a)) for a in (qcd[p] for p in unit_paths)]
        return [dict(zip(unit_paths, _read_slices(handles, slice(s, min(s + chunk, n_qcd)))))
                for s in range(0, n_qcd, chunk)]

    def sample_pass():
        return [layout.read_rows(qcd, every, int(r["start"]), int(r["stop"])) for r in shards.to_pylist()]

    return {"preprocess (constituents of a shard)": (n_qcd, preprocess_pass),
            f"loader unit ({chunk} jets: heimel40, label, mass)": (n_qcd, loader_pass),
            "whole sample (every array, shard by shard)": (n_qcd, sample_pass)}


def side(name: str):
    """A context in which reads are direct ("direct", the default) or all through zarr ("zarr")."""
    from jetscan.storage import shardread

    if name == "zarr":
        return mock.patch.object(shardread, "reader", lambda arr: None)
    return contextlib.nullcontext()


def same(a, b) -> bool:
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds (the first after dropping the page cache)")
    ap.add_argument("--store", help="a store with qcd and heimel40 (default: benchmarks/preprocess.py's)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "jetscan-bench"))
    ap.add_argument("--quick", action="store_true", help="tiny store, 2 rounds: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds = 2
    store = args.store
    if store is None:
        from preprocess import prepare_store

        ns = types.SimpleNamespace(store=None, work=args.work, qcd=2000, top=1000, shard_jets=500, fresh=False, buffer=None)
        if args.quick:
            ns.qcd, ns.top, ns.shard_jets = 60, 40, 20
        store = str(prepare_store(ns, ["heimel40"])[0].store)
    loads = workloads(store)
    times = {w: {s: [] for s in ("zarr", "direct")} for w in loads}
    cache_note = ""
    identical = True
    for r in range(args.rounds):
        if r == 0:
            cache_note = drop_page_cache()
        for w, (jets, fn) in loads.items():
            got = {}
            order = ("zarr", "direct") if r % 2 == 0 else ("direct", "zarr")
            for s in order:
                if r == 0 and s == order[1]:
                    drop_page_cache()  # both sides cold in round 0
                with side(s):
                    c0, t0 = time.process_time(), time.perf_counter()
                    got[s] = fn()
                    times[w][s].append((time.perf_counter() - t0, time.process_time() - c0))
            identical &= same(got["zarr"], got["direct"])
    print(f"store {store}; page cache for the cold round: {cache_note}")
    print(f"{'read':52s}{'side':>8s}{'cold wall':>11s}{'cold cpu':>10s}{'warm wall':>11s}{'warm cpu':>10s}  jets/s warm")
    results = {}
    for w, (jets, _) in loads.items():
        res = {}
        for s in ("zarr", "direct"):
            cold = times[w][s][0]
            warm = times[w][s][1:] or times[w][s]
            res[s] = {"cold_wall_s": cold[0], "cold_cpu_s": cold[1],
                      "warm_wall_s": statistics.median(t[0] for t in warm),
                      "warm_cpu_s": statistics.median(t[1] for t in warm), "jets": jets}
            print(f"{w:52s}{s:>8s}{cold[0]:11.3f}{cold[1]:10.3f}{res[s]['warm_wall_s']:11.3f}"
                  f"{res[s]['warm_cpu_s']:10.3f}  {jets / res[s]['warm_wall_s']:10.0f}")
        ratios = {k: res["zarr"][k] / res["direct"][k] for k in ("cold_wall_s", "cold_cpu_s", "warm_wall_s", "warm_cpu_s")}
        res["ratio_zarr_over_direct"] = ratios
        results[w] = res
        print(f"{'':52s}{'ratio':>8s}" + "".join(f"{ratios[k]:{11 if 'wall' in k else 10}.2f}" for k in ratios)
              + "   (zarr / direct)")
    print(f"both sides read identical arrays: {'yes' if identical else 'NO'}")
    append_result({"bench": "shard_reads", "git": git_rev(), "device": cpu_device(), "store": store,
                   "rounds": args.rounds, "page_cache": cache_note, "results": results, "identical": identical},
                  quick=args.quick)
    if not identical:
        sys.exit("direct and zarr reads returned different arrays")


if __name__ == "__main__":
    main()
