"""The streaming loader, measured as a user sees it: a store larger than the cache, whole epochs.

``JetStream(study, ["qcd", "top"], "heimel40")`` (stored 40 x 40 images, batch 128, the
study's default 4,096-jet shuffle buffer) reads a store of ``--jets`` real jets, far more
than its shuffle buffer and more than its cache (``--cache-mb``, or the cache off). Every
measurement runs in a fresh process, started after ``sync; echo 3 > /proc/sys/vm/drop_caches``
(root only; the script says when that failed), so epoch 0 is **cold** (page cache and the
loader's cache empty) and the later epochs are **warm** (page cache full, the loader's cache
holding what its bound allows). Each epoch is timed whole, from asking for its first batch
to its last step; the **wall** time of a process runs from its spawn (imports, opening the
store, loading arrays for the in-memory side) to its end.

1. **decode**: one decode worker, no consumer, the cache off: jets/s and jets per CPU-second
   of the whole process (all threads, ``time.process_time``), i.e. per core (target >=
   50,000 heimel40 jets/s per core); and the same with every chunk read through zarr instead
   of directly from the shard files (:mod:`jetscan.storage.shardread`), as before it.
2. **feeding a consumer of 50k jets/s** (``--rate``): each step is a real
   ``Linear(1600, 2)`` + SGD step on one torch thread, then waits until ``batch / rate``
   seconds have passed since it got its batch (a GPU-fed host thread waits on the device the
   same way), so the consumer never takes more than ``rate`` jets/s. Sides: in-memory numpy
   arrays of the same jets (a shuffled index per epoch, ``torch.from_numpy`` per batch), and
   JetStream as ``data.decode_process: auto`` (the default) makes it, with 1 and ``--workers``
   decode workers, the cache off and at ``--cache-mb`` (none of these streams fits its cache,
   and all read directly from the shard files: decode threads in the consumer's process), and
   with its decode process (``true``, 1 worker, the cache off): once as it is, once reading every
   chunk through zarr (no direct shard reads), which is how ``auto`` made these streams before.
   Ratio streamed / in-memory over whole epochs (target >= 0.95), cold and warm. The sides run
   in ``--repeats`` interleaved rounds (the machine's speed drifts between minutes: decode
   rates of 63k and 87k jets per CPU-second were seen minutes apart); each round gives its
   ratios, and the median and range over the rounds are reported.
3. **memory**: peak RSS of a fresh process making one pass over a ``--jets`` and a
   ``--big-jets`` store (same settings), next to the loader's own accounting
   (``JetStream.memory()``: cache + shuffle buffer + read-ahead, bounded by ``data.cache_mb``).
   The decode process's own peak RSS is added (it shares pages with the consumer, so the sum
   overstates the total). The two sums should be equal: a 100M-jet store trains in the RAM of
   a 100k-jet one.

Jets: the store ``benchmarks/preprocess.py`` generates (2000 QCD + 1000 top, 13 TeV,
800-900 GeV, ``--base-store`` to give another one with samples qcd and top and heimel40
preprocessed), tiled: for each sample one shard of 10,000 jets (chunks of 1,000) is written
from the real jets repeated, and its files are copied to fill the sample (real jets, real
compressed chunks, made in seconds). Appends one JSON line to ``benchmarks/results.jsonl``.

    python benchmarks/loader.py [--jets 100000] [--big-jets 1000000] [--epochs 3] [--rate 50000]
                                [--workers 2] [--cache-mb 256] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLES = ("qcd", "top")
REP = "heimel40"
SHARD_JETS = 10_000


# ------------------------------------------------------------------------------ stores
def tiled_store(base_store: str, dst: Path, n_jets: int, shard_jets: int = SHARD_JETS) -> str:
    """A store of ``n_jets`` (split evenly over qcd and top) made of the base store's real jets.

    Shard 0 of each array is written through zarr (the base jets repeated); the other shards
    are copies of its files, so the chunks are real compressed chunks of real jets.
    """
    import numpy as np

    from jetscan.storage import catalog, layout

    done = dst / ".tiled-complete"
    if done.exists():
        return str(dst)
    if dst.exists():
        shutil.rmtree(dst)
    per_sample = n_jets // len(SAMPLES)
    if per_sample % shard_jets:
        raise SystemExit(f"--jets {n_jets}: need a multiple of {len(SAMPLES) * shard_jets}")
    src_root = layout.open_root(base_store)
    root = layout.open_root(str(dst), mode="w")
    arrays = ["truth/label", "jets/mass", f"inputs/{REP}"]
    for name in SAMPLES:
        src = layout.open_sample(src_root, name)
        attrs = dict(src.attrs)
        attrs.update(n_jets=per_sample, shard_jets=shard_jets)
        group = layout.create_sample(root, name, n_jets=per_sample, shard_jets=shard_jets,
                                     max_constituents=src["constituents/pt"].shape[1], attrs=attrs)
        layout.create_inputs(group, REP, shape=src[f"inputs/{REP}"].shape[1:], shard_jets=shard_jets,
                             attrs=dict(src[f"inputs/{REP}"].attrs))
        for path in arrays:
            values = src[path][:]
            group[path][:shard_jets] = np.resize(values, (shard_jets, *values.shape[1:]))
            first = dst / name / path / "c" / "0"  # absent when all its values are the fill value (QCD labels)
            for shard in range(1, per_sample // shard_jets):
                if first.is_dir():
                    shutil.copytree(first, first.with_name(str(shard)))
                elif first.exists():
                    shutil.copyfile(first, first.with_name(str(shard)))
        for shard, (start, stop) in enumerate(layout.shard_ranges(per_sample, shard_jets)):
            common = {"sample": name, "shard": shard, "start": start, "stop": stop, "n_jets": stop - start,
                      "seconds": 0.0, "created_utc": catalog.now_utc(), "host": "benchmarks/loader.py",
                      "jetscan": "tiled"}
            catalog.commit_shard(str(dst), {**common, "n_events": -1, "seed": shard, "settings_hash": attrs.get("settings_hash", ""),
                                            "pythia8mc": "", "fastjet": "", "zarr": ""})
            catalog.commit_shard(str(dst), {**common, "representation": REP, "nbytes_stored": -1, "settings_hash": ""},
                                 table=f"inputs/{REP}")
    done.write_text("ok\n")
    return str(dst)


def base_key(base_store: str) -> str:
    """What the tiled stores are made of: the base samples' settings and sizes (reused while they match)."""
    from jetscan.core.study import settings_hash
    from jetscan.storage import layout

    root = layout.open_root(base_store)
    return settings_hash({s: [layout.open_sample(root, s).attrs.get("settings_hash"), layout.open_sample(root, s).attrs["n_jets"]]
                          for s in SAMPLES})[:10]


def store_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def bench_study(store: str, *, cache_mb: int, workers: int, prefetch: int, buffer: int | None, batch: int,
                process: bool | str = True, ahead: int = 4):
    from jetscan.core.study import Study

    data = {"batch_size": batch, "splits": {"train": 1.0, "val": 0.0, "test": 0.0}, "cache_mb": cache_mb,
            "decode_workers": workers, "prefetch_chunks": prefetch, "decode_process": process, "batches_ahead": ahead}
    if buffer is not None:
        data["shuffle_buffer_jets"] = buffer
    return Study.from_dict({
        "name": "bench-loader", "store": store, "seed": 20181023, "sqrt_s_gev": 13000.0,
        "jet": {"r": 0.8, "pt_window_gev": [800.0, 900.0], "abs_eta_max": 1.0, "max_constituents": 200},
        "preprocess": {"representations": [REP]}, "data": data,
        "samples": {"qcd": {"process": "qcd_dijet", "n_jets": 1000}, "top": {"process": "top_hadronic", "n_jets": 1000}},
    })


# ----------------------------------------------------------------- one measurement (child)
def child(spec: dict) -> dict:
    """Runs in a fresh process: one side, ``epochs`` whole epochs; returns its timings."""
    t_spawn = spec["t_spawn"]
    import numpy as np
    import torch

    from jetscan.storage.loader import JetStream

    if spec.get("zarr_reads"):  # the comparison side: every chunk read through zarr, as before shardread
        from jetscan.storage import shardread

        shardread.reader = lambda arr: None
    torch.set_num_threads(1)
    study = bench_study(spec["store"], cache_mb=spec["cache_mb"], workers=spec["workers"], prefetch=spec["prefetch"],
                        buffer=spec["buffer"], batch=spec["batch"], process=spec.get("process", True),
                        ahead=spec.get("ahead", 4))
    rate = spec["rate"]
    out = {"epochs": [], "rss_before_mb": _rss_mb()}
    if spec["mode"] in ("train", "memory"):
        torch.manual_seed(0)
        model = torch.nn.Linear(int(np.prod(spec["x_shape"])), 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def consume(x, y):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x.reshape(len(x), -1)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rate:
                wait = len(y) / rate - (time.perf_counter() - t0)
                if wait > 0:
                    time.sleep(wait)
    else:
        def consume(x, y):
            pass

    if spec["mode"] == "memory":  # the same jets, read into RAM at start-up
        load = study.model_copy(update={"data": study.data.model_copy(update={"decode_process": False})})
        stream = JetStream(load, list(SAMPLES), REP, split="train", shuffle=False, batch_size=8192)
        parts = list(stream.iter_numpy(epoch=0))
        x = np.concatenate([p["x"] for p in parts])
        y = np.concatenate([p["label"] for p in parts])
        del parts, stream
        batch = spec["batch"]

        def epoch_batches(e):
            order = np.random.default_rng(e).permutation(len(x))
            for s in range(0, len(x), batch):
                idx = order[s: s + batch]
                yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    else:
        stream = JetStream(study, list(SAMPLES), REP, split="train", shuffle=True)

        def epoch_batches(e):
            stream.set_epoch(e)
            for b in stream:
                yield b["x"], b["label"]

    t_ready = time.time()
    for e in range(spec["epochs"]):
        n, first = 0, None
        c0, t0 = time.process_time(), time.perf_counter()
        for xb, yb in epoch_batches(e):
            if first is None:
                first = time.perf_counter() - t0
            consume(xb, yb)
            n += len(yb)
        out["epochs"].append({"jets": n, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                              "first_batch_s": first})
    out["startup_s"] = t_ready - t_spawn
    out["wall_s"] = time.time() - t_spawn
    out["rss_peak_mb"] = _rss_mb()
    if spec["mode"] != "memory":
        out["memory"] = stream.memory()
        out["data_bytes"] = stream.n_jets_total * stream.row_bytes
        # the decode process's own peak (0 without one); its pages shared with this process count in both
        out["rss_decode_process_mb"] = out["memory"].get("process_peak_rss_bytes", 0) / 2**20
        stream.close()
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


# ------------------------------------------------------------------------ orchestration
def run_child(spec: dict, *, cold: bool) -> dict:
    from _common import drop_page_cache

    note = drop_page_cache() if cold else "kept"
    spec = {**spec, "t_spawn": time.time()}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec['mode']} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["page_cache"] = note
    return res


#: streamed / in-memory ratios of one round (wall: the in-memory side's time over the stream's)
RATIOS = {
    "cold": lambda r, m: r["cold_rate"] / m["cold_rate"],
    "warm": lambda r, m: r["warm_rate"] / m["warm_rate"],
    "all_epochs": lambda r, m: r["all_rate"] / m["all_rate"],
    "wall": lambda r, m: m["wall_s"] / r["wall_s"],
}


def rates(res: dict) -> dict:
    ep = res["epochs"]
    cold = ep[0]
    warm = ep[1:] or ep
    jets_warm = sum(e["jets"] for e in warm)
    return {
        "cold_rate": cold["jets"] / cold["seconds"],
        "warm_rate": jets_warm / sum(e["seconds"] for e in warm),
        "cold_first_batch_ms": 1e3 * cold["first_batch_s"],
        "warm_first_batch_ms": 1e3 * sum(e["first_batch_s"] for e in warm) / len(warm),
        "jets_per_cpu_s": sum(e["jets"] for e in ep) / max(1e-9, sum(e["cpu_seconds"] for e in ep)),
        "all_rate": sum(e["jets"] for e in ep) / sum(e["seconds"] for e in ep),
        "wall_rate": sum(e["jets"] for e in ep) / res["wall_s"],
        "startup_s": res["startup_s"],
        "wall_s": res["wall_s"],
        "loop_s": sum(e["seconds"] for e in ep),
    }


def decode_part(args, common: dict) -> dict:
    """Part 1: decode alone (in-process threads, so time.process_time counts every CPU-second of it)."""
    print(f"1. decode: no consumer, cache off, {args.jets} jets, decode threads in the process, a fresh process "
          "each, page cache dropped")
    runs = {"1": {"workers": 1}, str(args.workers): {"workers": args.workers},
            "1 zarr reads": {"workers": 1, "zarr_reads": True}}
    out = {}
    for name, side in runs.items():
        raw = run_child({**common, "mode": "decode", "cache_mb": 0, "process": False, **side}, cold=True)
        r = out[name] = {**rates(raw), "raw": raw}
        label = "1 worker, chunks read through zarr" if side.get("zarr_reads") else f"{side['workers']} worker(s)"
        print(f"   {label:34s} cold {r['cold_rate']:9.0f} jets/s, warm {r['warm_rate']:9.0f} jets/s, "
              f"{r['jets_per_cpu_s']:9.0f} jets per CPU-second (page cache {raw['page_cache']})")
    per_cpu = {name: r["jets_per_cpu_s"] for name, r in out.items()}
    print(f"ratio decode jets/s per core / 50k = {per_cpu['1'] / 50_000:.2f}  (target >= 1); "
          f"direct shard reads / zarr reads per CPU-second = {per_cpu['1'] / per_cpu['1 zarr reads']:.2f}")
    return out


def consumer_sides(args) -> dict:
    sides = {"in-memory": {"mode": "memory", "workers": 1, "cache_mb": 0}}
    # data.decode_process: auto, the default: with direct shard reads it decodes in threads of the consumer's process
    for w in sorted({1, args.workers}):
        sides[f"stream {w}w cache off"] = {"mode": "train", "workers": w, "cache_mb": 0, "ahead": args.ahead,
                                           "process": "auto"}
    if args.consumer_only:
        return sides
    sides[f"stream {args.workers}w cache {args.cache_mb}MB"] = {"mode": "train", "workers": args.workers,
                                                               "cache_mb": args.cache_mb, "ahead": args.ahead,
                                                               "process": "auto"}
    # the decode process (data.decode_process: true), and as auto made it before direct shard reads: every
    # chunk through zarr, batches made in the child
    sides["decode process 1w cache off"] = {"mode": "train", "workers": 1, "cache_mb": 0, "ahead": args.ahead,
                                            "process": True}
    sides["decode process 1w cache off, zarr reads"] = {"mode": "train", "workers": 1, "cache_mb": 0,
                                                        "ahead": args.ahead, "process": True, "zarr_reads": True}
    return sides


def consumer_part(args, common: dict) -> dict:
    """Part 2: the sides fed to a consumer of ``--rate`` jets/s, in interleaved rounds."""
    print(f"2. consumer at {args.rate:.0f} jets/s (Linear(1600, 2) + SGD, then waits), batch {args.batch}, "
          f"{args.epochs} epochs (epoch 0 cold), each side a fresh process after dropping the page cache")
    sides = consumer_sides(args)
    rounds = []  # the sides interleaved, round after round: the machine's drifts hit every side alike
    for k in range(args.repeats):
        res = {}
        for name, side in sides.items():
            raw = run_child({**common, **side}, cold=True)
            r = rates(raw)
            res[name] = {**r, "raw": raw}
            mem = raw.get("memory", {})
            print(f"   [{k + 1}/{args.repeats}] {name:26s} cold {r['cold_rate']:8.0f} warm {r['warm_rate']:8.0f} jets/s, "
                  f"first batch cold {r['cold_first_batch_ms']:6.1f} ms warm {r['warm_first_batch_ms']:6.1f} ms; "
                  f"loop {r['loop_s']:6.2f} s, wall {r['wall_s']:6.2f} s (start-up {r['startup_s']:5.2f} s), "
                  f"peak RSS {raw['rss_peak_mb']:6.0f} MB"
                  + (f", cache held {mem['cache_bytes'] / 2**20:.0f} MiB of {raw['data_bytes'] / 2**20:.0f} MiB"
                     if mem else ""))
        rounds.append(res)
    ratios = {}
    for name in list(sides)[1:]:
        per_round = {k: [ratio(rd[name], rd["in-memory"]) for rd in rounds] for k, ratio in RATIOS.items()}
        ratios[name] = {k: float(np.median(v)) for k, v in per_round.items()}
        ratios[name]["rounds"] = per_round
        spread = {k: f"{min(v):.3f}-{max(v):.3f}" for k, v in per_round.items()}
        print(f"ratio {name} / in-memory, median of {args.repeats} rounds (range): whole epochs cold "
              f"{ratios[name]['cold']:.3f} ({spread['cold']}), warm {ratios[name]['warm']:.3f} ({spread['warm']}), "
              f"all {ratios[name]['all_epochs']:.3f} ({spread['all_epochs']}) (target >= 0.95); wall incl. start-up "
              f"{ratios[name]['wall']:.3f} ({spread['wall']})")
    return {"sides": {name: [rd[name] for rd in rounds] for name in sides}, "ratios": ratios}


def memory_part(args, common: dict, small: str, big: str) -> dict:
    """Part 3: peak RSS of one pass over the small and the big store, as auto makes the stream."""
    print(f"3. memory: one pass, {args.workers} decode workers, cache_mb {args.cache_mb}, no consumer, fresh processes")
    mems = {}
    for n, store in ((args.jets, small), (args.big_jets, big)):
        raw = run_child({**common, "store": store, "epochs": 1, "mode": "decode", "workers": args.workers,
                         "cache_mb": args.cache_mb, "process": "auto"}, cold=True)
        mems[str(n)] = raw
        mem = raw["memory"]
        print(f"   {n:>9d} jets ({raw['data_bytes'] / 2**20:7.0f} MiB decoded): peak RSS {raw['rss_peak_mb']:6.0f} MB "
              f"+ decode process {raw['rss_decode_process_mb']:6.0f} MB "
              f"(after imports {raw['rss_before_mb']:5.0f} MB); accounted peak {mem['peak_bytes'] / 2**20:6.1f} MiB "
              f"(cache {mem['cache_bytes'] / 2**20:.1f}, bound {mem['limit_bytes'] / 2**20:.0f} MiB), "
              f"{raw['epochs'][0]['jets'] / raw['epochs'][0]['seconds']:8.0f} jets/s")
    both = {n: r["rss_peak_mb"] + r["rss_decode_process_mb"] for n, r in mems.items()}
    grow = both[str(args.big_jets)] / both[str(args.jets)]
    print(f"ratio peak RSS (consumer + decode process) {args.big_jets} / {args.jets} jets = {grow:.3f}  "
          "(bounded memory: ~1)")
    return {"runs": mems, "ratio_rss_big_over_small": grow}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--jets", type=int, default=100_000, help="jets in the streamed store (qcd + top)")
    ap.add_argument("--big-jets", type=int, default=1_000_000, help="jets in the store of the memory comparison")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per side (the first is cold)")
    ap.add_argument("--rate", type=float, default=50_000.0, help="the consumer's jets/s")
    ap.add_argument("--workers", type=int, default=2, help="decode workers of the N-worker side")
    ap.add_argument("--prefetch", type=int, default=4, help="data.prefetch_chunks")
    ap.add_argument("--cache-mb", type=int, default=256, help="data.cache_mb of the cached side (below the store)")
    ap.add_argument("--buffer", type=int, default=None, help="data.shuffle_buffer_jets (default: the study default)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ahead", type=int, default=4, help="data.batches_ahead (slots of the decode process)")
    ap.add_argument("--base-store", help="a store with qcd and top and heimel40 (default: preprocess.py's)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "jetscan-bench"))
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the consumer sides, interleaved")
    ap.add_argument("--consumer-only", action="store_true",
                    help="only part 2, the default sides (in-memory, auto with 1 and --workers decode workers)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.jets, args.big_jets, args.epochs, args.cache_mb, args.repeats = 20_000, 40_000, 2, 16, 1

    from _common import append_result, cpu_device, git_rev

    work = Path(args.work)
    base = args.base_store
    if base is None:
        import types

        sys.path.insert(0, str(HERE))
        from preprocess import prepare_store

        ns = types.SimpleNamespace(store=None, work=str(work), qcd=2000, top=1000, shard_jets=500, fresh=False,
                                   buffer=None)
        if args.quick:
            ns.qcd, ns.top, ns.shard_jets = 60, 40, 20
        base = prepare_store(ns, [REP])[0].store
    t0 = time.perf_counter()
    key = base_key(base)
    small = tiled_store(base, work / f"loader-tiled-{key}-{args.jets}.zarr", args.jets)
    big = tiled_store(base, work / f"loader-tiled-{key}-{args.big_jets}.zarr", args.big_jets)
    print(f"stores: {args.jets} jets ({store_bytes(small) / 2**20:.0f} MiB on disk), {args.big_jets} jets "
          f"({store_bytes(big) / 2**20:.0f} MiB), tiled from {base} ({time.perf_counter() - t0:.1f} s)")
    common = {"store": small, "epochs": args.epochs, "rate": args.rate, "prefetch": args.prefetch,
              "buffer": args.buffer, "batch": args.batch, "x_shape": [1, 40, 40]}
    result = {"bench": "loader", "git": git_rev(), "device": cpu_device(), "quick": args.quick,
              "args": {k: v for k, v in vars(args).items() if k not in ("child", "work", "base_store")}}

    if not args.consumer_only:
        result["decode"] = decode_part(args, common)
    result["consumer"] = consumer_part(args, common)
    if not args.consumer_only:
        result["memory"] = memory_part(args, common, small, big)
    append_result(result, quick=args.quick)


if __name__ == "__main__":
    main()
