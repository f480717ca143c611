"""The machine's own ceiling for "N workers on equal cores": N independent processes vs one.

The search and scan targets (issues 10 and 11: >= 1.8x with 2 workers on equal cores) assume
that two cores do twice the work of one. On a virtual machine two vCPUs may share a physical
core's pipelines, caches or memory bandwidth, and then no harness can reach 2x. This script
measures that ceiling with no harness at all: the same single-threaded work, pinned to one
core, run alone on each core in turn and then once on every core at the same time.

Work kinds (each a fixed number of steps, timed after one untimed warm-up of the same steps):

- ``image_ae``: Adam steps of Heimel et al.'s image autoencoder (40x40, bottleneck 20) on a
  minibatch of 128 random unit-sum images, one torch thread: the cost of a search or scan trial.
- ``dense_ae``: the same for Farina et al.'s dense autoencoder (bottleneck 6).
- ``python``: a pure-Python integer loop (no memory traffic): the cores' own speed.
- ``roc_band``: the scan aggregation's per-cell work (``jetscan.jobs.scan._band_of_stored``:
  :func:`jetscan.jobs.scan.roc_band_numpy` on two 100k-score zarr arrays read from disk, the
  store of ``benchmarks/scan.py --part agg``, ``_common.score_store``); each process its own
  run of cells, 50 by default (2 workers x 50 = that benchmark's 100 cells). Warm: the
  untimed warm-up reads the same cells.

Throughput ratio = N x (mean time alone) / (the slowest of the N concurrent times), so 2.0
means two cores do exactly twice one core's work. Rounds alternate the order of the alone and
together measurements; the median and range over rounds are printed.

    python benchmarks/cores.py [--rounds 3] [--kinds image_ae dense_ae python roc_band] [--quick]

Appends one JSON line to ``benchmarks/results.jsonl`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import append_result, cpu_device, score_store

_CHILD = r"""
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
kind, steps = sys.argv[2], int(sys.argv[3])
if kind == "roc_band":
    from jetscan.jobs.scan import _band_of_stored
    store, first = os.environ["JETSCAN_CORES_STORE"], int(sys.argv[4]) * steps
    def work():
        for c in range(first, first + steps):
            _band_of_stored(f"{store}/c{c}/bkg", f"{store}/c{c}/sig", 50, seed=c)
elif kind == "python":
    def work():
        s = 0
        for i in range(steps * 20_000):
            s += i * i
else:
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from jetscan.core.models import build_model
    net, info = build_model(kind, bottleneck=20 if kind == "image_ae" else 6)
    x = torch.rand(128, *info.input_shape)
    x = x / x.flatten(1).sum(1).reshape(-1, *[1] * len(info.input_shape))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    def work():
        for _ in range(steps):
            opt.zero_grad()
            net.loss(x, net(x)).mean().backward()
            opt.step()
work()
t = time.perf_counter()
work()
print(time.perf_counter() - t)
"""


def _run(cores: list[int], kind: str, steps: int, index: int | None = None) -> list[float]:
    """Time ``kind`` on each of ``cores`` at once; process i works on share ``index`` (default i)."""
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(c), kind, str(steps), str(i if index is None else index)],
                              stdout=subprocess.PIPE, text=True)
             for i, c in enumerate(cores)]
    out = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a {kind} worker failed (exit codes {[p.returncode for p in procs]})")
    return [float(s) for s in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=["image_ae", "dense_ae", "python", "roc_band"],
                    choices=["image_ae", "dense_ae", "python", "roc_band"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    steps = {"image_ae": 60, "dense_ae": 400, "python": 4000, "roc_band": 50}
    if args.quick:
        steps = {k: max(2, v // 20) for k, v in steps.items()}
    tmp = tempfile.mkdtemp(prefix="bench-cores-")
    try:
        if "roc_band" in args.kinds:
            os.environ["JETSCAN_CORES_STORE"] = score_store(Path(tmp) / "scores.zarr", len(cores) * steps["roc_band"], 100_000)
        results = _measure(args, cores, steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{len(cores)} independent single-threaded processes against one (ceiling for 'workers on equal cores'):")
    for kind, res in results.items():
        print(f"  {kind:9s} median {res['ratio_median']:.2f}  (range {res['ratio_min']:.2f}-{res['ratio_max']:.2f}, "
              f"{args.rounds} rounds)")
    append_result({"benchmark": "cores", "device": cpu_device(), "cores": len(cores), "rounds": args.rounds,
                   "results": results}, quick=args.quick)


def _measure(args, cores: list[int], steps: dict) -> dict:
    results = {}
    for kind in args.kinds:
        ratios, alone_s, together_s = [], [], []
        for r in range(args.rounds):
            if r % 2 == 0:
                alone = [_run([c], kind, steps[kind], i)[0] for i, c in enumerate(cores)]
                together = _run(cores, kind, steps[kind])
            else:
                together = _run(cores, kind, steps[kind])
                alone = [_run([c], kind, steps[kind], i)[0] for i, c in enumerate(cores)]
            ratio = len(cores) * statistics.mean(alone) / max(together)
            ratios.append(ratio)
            alone_s.append(alone)
            together_s.append(together)
            print(f"{kind} round {r}: alone {', '.join(f'{t:.2f}' for t in alone)} s; together "
                  f"{', '.join(f'{t:.2f}' for t in together)} s -> {len(cores)} cores / 1 = {ratio:.2f}")
        results[kind] = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "ratios": ratios, "alone_s": alone_s, "together_s": together_s, "steps": steps[kind]}
    return results


if __name__ == "__main__":
    main()
