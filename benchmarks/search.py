"""Hyper-parameter search throughput and harness overhead (``jetscan search``).

Two measurements on copies of one generated store, one search run (default: the dense
autoencoder, a grid over its bottleneck so that every trial is a distinct, equally sized run):

- **trials per hour, 1 vs N workers** on the same cores: one worker process (all cores as torch
  threads) against N worker processes (``cores // N`` torch threads each), both the same
  ``--trials`` grid points; and, with equal cores per worker, one worker with ``cores // N``
  threads, pinned to ``cores // N`` cores (so its decode process cannot spill onto the
  others), against the same N workers (how the harness scales with workers); wall time from the call to its return (worker start-up, imports,
  Optuna storage, training, evaluation, results written), and the span from the first trial's
  start to the last trial's end (without start-up). Issue target: ratio >= 1.8 for N = 2; use
  trials long against a worker's start-up (``--epochs``, ``--trials``), as in a real search.
  The N workers run pinned to their own cores (the default) and once more left to the OS
  scheduler (``pin_cores=False``); every side runs once per round (``--rounds``), the order
  alternating between rounds, and the ratios are taken within a round: median and range.
- **harness overhead**: one search trial (``search(..., trials=1)``, in-process) against the
  same work done bare, as ``jetscan train`` and ``jetscan evaluate`` do it (``train()`` then
  ``evaluation_for`` + ``summarise`` + ``write_run``, no report), in the same warm process;
  cold (first pair, after a warm-up run that imports everything) and repeated (the order of
  the two alternates between pairs).
  Overhead = (search - bare) / search of the wall time. Issue target <= 5%. Since two calls
  drift apart on a loaded machine, the script also times, inside the search call, the calls
  bare train + evaluate make too (train, evaluation_for, summarise, write_run): the rest of
  that call's wall time is the harness (Optuna storage and study, trial bookkeeping, checks).

    python benchmarks/search.py --store out/quickstart.zarr [--model dense_ae] [--epochs 3]
        [--trials 4] [--workers 2] [--repeat 2] [--rounds 1]

The store must hold a ``qcd`` sample (``out/quickstart.zarr`` after ``make demo``); it is
copied, never modified. Appends one JSON line to ``benchmarks/results.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import shutil
import tempfile
import time
from pathlib import Path

from _common import append_result, cpu_device, median_range, worker_rounds
from _common import store_study
from jetscan.core.study import Study
from jetscan.jobs.preprocess import preprocess


def make_study(src: dict, store: str, model: str, epochs: int, trials: int, threads: int) -> Study:
    data = dict(src)
    data["name"] = "bench-search"
    data["store"] = store
    data["preprocess"] = {"representations": ["heimel40"]}
    data["train"] = {
        "runs": {"base": {"model": model, "samples": ["qcd"], "epochs": epochs, "patience": epochs, "optimizer": "adam"}},
        "threads": threads,
    }
    # distinct, similar-cost trials: bottlenecks 4, 6, 8, ...
    data["search"] = {
        "grid": {"run": "base", "space": {"hyper.bottleneck": {"int": [4, 2 + 2 * trials], "step": 2}},
                 "sampler": "grid", "trials": trials, "keep_weights": "all"},
        "one": {"run": "base", "space": {"hyper.bottleneck": {"choices": [6]}}, "sampler": "grid", "trials": 1,
                "keep_weights": "all"},
    }
    return Study.from_dict(data)


def fresh_store(base: str, tmp: Path, tag: str) -> str:
    store = str(tmp / f"{tag}.zarr")
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base, store, ignore=shutil.ignore_patterns("_runs", "_results", "results", "_search"))
    return store


def bare(study: Study, run: str) -> float:
    """What jetscan train + jetscan evaluate do for one run (no report)."""
    from jetscan.jobs.evaluate import evaluation_for
    from jetscan.jobs.train import train
    from jetscan.storage import results

    t0 = time.perf_counter()
    train(study, run)
    evaluation = evaluation_for(study, run)
    results.write_run(study.store, evaluation, results.summarise(evaluation))
    return time.perf_counter() - t0


_WORK = {"s": 0.0}


def _timed(fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _WORK["s"] += time.perf_counter() - t0

    return wrapper


def timed_search(study: Study, cores: int) -> tuple[float, dict]:
    """One search trial; also records (in summary["work_s"]) the seconds spent inside the calls
    that bare train + evaluate make too (train, evaluation_for, summarise, write_run), measured
    within the same call: the rest of the wall time is the harness, free of load drift between calls."""
    import jetscan.jobs.evaluate as ev
    import jetscan.jobs.train as tr
    from jetscan.jobs.search import search
    from jetscan.storage import results

    originals = (tr.train, ev.evaluation_for, results.summarise, results.write_run)
    tr.train, ev.evaluation_for = _timed(originals[0]), _timed(originals[1])
    results.summarise, results.write_run = _timed(originals[2]), _timed(originals[3])
    _WORK["s"] = 0.0
    try:
        t0 = time.perf_counter()
        summary = search(study, "one", trials=1, workers=1, threads=cores)
        seconds = time.perf_counter() - t0
    finally:
        tr.train, ev.evaluation_for, results.summarise, results.write_run = originals
    summary["work_s"] = _WORK["s"]
    return seconds, summary


def throughput(src, base, tmp, args, key, r, n, threads, pin) -> dict:
    """One search of the grid on a fresh copy of the store: ``n`` worker processes of ``threads``
    torch threads each (pinned to their own cores with ``pin``)."""
    from jetscan.jobs.search import _load, default_storage, open_storage, search

    s = make_study(src, fresh_store(base, tmp, f"{key}-{r}"), args.model, args.epochs, args.trials, threads)
    t0 = time.perf_counter()
    summary = search(s, "grid", workers=n, threads=threads, spawn=True, pin_cores=pin)  # processes on every side
    seconds = time.perf_counter() - t0
    done = summary["counts"]["COMPLETE"]
    trials = [t for t in _load(s, "grid", open_storage(default_storage(s, "grid"), s.search["grid"])).get_trials()
              if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    out = {"workers": n, "threads": threads, "pinned": pin and n > 1, "seconds": seconds, "complete": done,
           "trials_per_hour": 3600.0 * done / seconds, "trial_span_s": span, "trials_per_hour_span": 3600.0 * done / span}
    print(f"round {r}, {key}: {n} worker(s), {threads} torch thread(s) each{', pinned' if out['pinned'] else ''}: {done} "
          f"trials in {seconds:.1f} s wall incl. worker start-up = {out['trials_per_hour']:.0f} trials/hour; first trial "
          f"start to last trial end {span:.1f} s = {out['trials_per_hour_span']:.0f} trials/hour", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, help="a generated store with a qcd sample (copied, never modified)")
    ap.add_argument("--model", default="dense_ae", choices=["dense_ae", "cnn_ae", "image_ae", "pca"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=4, help="trials per throughput measurement")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="overhead: pairs measured after the cold pair")
    ap.add_argument("--rounds", type=int, default=1, help="throughput: rounds of every side, alternating their order")
    args = ap.parse_args()

    from jetscan.jobs.search import trial_run_name

    cores = os.cpu_count() or 1
    src = store_study(args.store, "bench-search")
    tmp = Path(tempfile.mkdtemp(prefix="jetscan-search-bench-"))
    base = str(tmp / "base.zarr")
    shutil.copytree(args.store, base, ignore=shutil.ignore_patterns("_runs", "_results", "results", "_search"))
    preprocess(make_study(src, base, args.model, args.epochs, args.trials, cores), use_ray=False)

    # ---- harness overhead: one trial vs the same run trained and evaluated bare, same process
    warm = make_study(src, fresh_store(base, tmp, "warm"), args.model, args.epochs, args.trials, cores)
    bare(warm, "base")  # imports, first-touch caches: not measured
    pairs = []
    for i in range(1 + args.repeat):
        s = make_study(src, fresh_store(base, tmp, f"o{i}"), args.model, args.epochs, args.trials, cores)
        if i % 2:  # alternate the order, so drifting machine load does not favour one side
            search_s, summary = timed_search(s, cores)
            bare_s = bare(s, "base")
        else:
            bare_s = bare(s, "base")
            search_s, summary = timed_search(s, cores)
        assert summary["counts"]["COMPLETE"] == 1, summary["counts"]
        assert Path(s.store, "_results", trial_run_name(s, "one", {"hyper.bottleneck": 6}) + ".parquet").exists()
        harness = (search_s - summary["work_s"]) / search_s
        pairs.append({"bare_s": bare_s, "search_s": search_s, "overhead": (search_s - bare_s) / search_s,
                      "work_s": summary["work_s"], "harness_within_call": harness})
        label = "cold" if i == 0 else f"repeat {i}"
        print(f"overhead ({label}): bare train+evaluate {bare_s:.2f} s, one search trial {search_s:.2f} s "
              f"-> {100 * pairs[-1]['overhead']:.1f}% of the trial's wall time; within the search call: "
              f"{summary['work_s']:.2f} s train+evaluate, harness {search_s - summary['work_s']:.2f} s = {100 * harness:.1f}%")

    # ---- throughput: the same grid points with 1 and N workers. Two comparisons:
    #  "same cores":  1 worker with all cores as torch threads vs N workers with cores // N threads each
    #                 (what a user of this machine chooses between);
    #  "per worker":  1 worker with cores // N threads vs N workers with cores // N threads each
    #                 (each worker has equal cores: how the harness scales with workers).
    #  and the N workers once more left to the OS scheduler (--no-pin-cores), for what pinning gives.
    # Every side once per round, the order alternating between rounds; ratios within a round.
    rounds, per, cores = worker_rounds(
        args.workers, args.rounds, lambda key, r, n, threads, pin: throughput(src, base, tmp, args, key, r, n, threads, pin))

    def ratios(num: str, den: str, what: str) -> list[float]:
        return [x[num][what] / x[den][what] for x in rounds]

    ratio, ratio_span = ratios("Nw", "1w_all", "trials_per_hour"), ratios("Nw", "1w_all", "trials_per_hour_span")
    ratio_per, ratio_per_span = ratios("Nw", "1w_per", "trials_per_hour"), ratios("Nw", "1w_per", "trials_per_hour_span")
    unpinned_per = ratios("Nw_unpinned", "1w_per", "trials_per_hour")
    unpinned_per_span = ratios("Nw_unpinned", "1w_per", "trials_per_hour_span")
    repeated = [p["overhead"] for p in pairs[1:]] or [pairs[0]["overhead"]]
    load = os.getloadavg()[0]
    print(f"ratios over {args.rounds} round(s): median (range); {args.model}, {args.epochs} epochs, {args.trials} trials, "
          f"{cores} cores; wall time incl. worker start-up, trial span without it")
    print(f"ratio trials/hour {args.workers} workers / 1 worker with equal cores per worker ({per} thread(s) each) = "
          f"{median_range(ratio_per)} wall, {median_range(ratio_per_span)} trial span  (how the harness scales with workers; "
          f"target >= 1.8 for 2)")
    print(f"  the same, workers not pinned to cores (--no-pin-cores): {median_range(unpinned_per)} wall, {median_range(unpinned_per_span)} span")
    print(f"ratio trials/hour {args.workers} workers / 1 worker with all {cores} cores as threads = {median_range(ratio)} wall, "
          f"{median_range(ratio_span)} span")
    print(f"harness overhead = {100 * pairs[0]['overhead']:.1f}% cold, {100 * min(repeated):.1f}-{100 * max(repeated):.1f}% "
          f"repeated, of one trial's wall time, search vs bare calls (target <= 5%)")
    within = [p["harness_within_call"] for p in pairs]
    print(f"harness overhead within the search call = {100 * within[0]:.1f}% cold, "
          f"{100 * min(within[1:] or within):.1f}-{100 * max(within[1:] or within):.1f}% repeated (the same trial's "
          "wall time minus its train + evaluate calls)")
    if load > cores:
        print(f"note: load average {load:.1f} on {cores} cores: the machine is shared, timings are disturbed")
    append_result({
        "bench": "search", "device": cpu_device(), "model": args.model, "epochs": args.epochs, "trials": args.trials,
        "workers": args.workers, "rounds": args.rounds, "throughput": rounds,
        "ratio_trials_per_hour": statistics.median(ratio), "ratio_trial_span": statistics.median(ratio_span),
        "ratio_equal_cores_per_worker": statistics.median(ratio_per), "ratio_equal_cores_per_worker_span": statistics.median(ratio_per_span),
        "ratio_equal_cores_per_worker_rounds": ratio_per, "ratio_equal_cores_per_worker_span_rounds": ratio_per_span,
        "ratio_equal_cores_per_worker_unpinned": statistics.median(unpinned_per),
        "ratio_equal_cores_per_worker_unpinned_span": statistics.median(unpinned_per_span),
        "ratio_equal_cores_per_worker_unpinned_rounds": unpinned_per,
        "ratio_equal_cores_per_worker_unpinned_span_rounds": unpinned_per_span, "overhead": pairs,
        "overhead_cold": pairs[0]["overhead"], "overhead_repeated_max": max(repeated),
        "harness_within_call_cold": pairs[0]["harness_within_call"],
        "harness_within_call_repeated_max": max(p["harness_within_call"] for p in pairs[1:] or pairs),
    })
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
