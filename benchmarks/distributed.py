"""Data-parallel training throughput: 1 vs N local workers on the same study.

Trains one run (default: the Macaluso-Shih CNN tagger with its paper batch of 128) for a
fixed number of epochs, once in a single process and once with N workers through
``jetscan.cluster.launch.launch_local`` (Horovod with gloo, or torch DDP), on copies of
the same preprocessed store, and prints samples/s and two ratios N/1, clearly labelled:

- **training loop**: the seconds the training loop itself reports (``summary.seconds`` in the
  run's checkpoint: epochs of forward, backward, all-reduce and optimizer steps);
- **wall time including start-up**: from launching to the launcher's return (``horovodrun`` or
  ``torchrun``, Python interpreters and imports, rendezvous, opening the store, the loop,
  writing the checkpoint): what a user waits for. On a short run start-up can outweigh the
  loop, and the wall ratio is then below 1 even when the loop scales.

Issue target >= 1.7 for N = 2. Each worker gets ``cores // N`` torch threads, so the
comparison spends the same cores. Appends one JSON line to ``benchmarks/results.jsonl``
(``ratio_train_loop`` and ``ratio_wall_with_startup``).

    python benchmarks/distributed.py --store out/quickstart.zarr [--model macaluso_shih] [--np 2]
        [--backend horovod] [--epochs 1]

The store must hold samples ``qcd`` and ``top`` (``out/quickstart.zarr`` after ``make demo``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import append_result, cpu_device, store_study
from jetscan.cluster.launch import launch_local
from jetscan.core.study import Study
from jetscan.jobs.preprocess import preprocess
from jetscan.jobs.train import load_trained

HERE = Path(__file__).parent
REPRESENTATION = {"macaluso_shih": "ms37x4", "deeptop_minimal": "heimel40_max", "cnn_ae": "heimel40"}


def study_file(src: Study, store: str, model: str, epochs: int, threads: int, virtual_ranks: int, path: Path) -> Path:
    data = src.model_dump(mode="json")
    data["store"] = store
    rep = REPRESENTATION[model]
    data["preprocess"] = {"representations": sorted({rep, *data["preprocess"]["representations"]})}
    data["data"]["virtual_ranks"] = virtual_ranks
    samples = ["qcd"] if model.endswith("_ae") else ["qcd", "top"]
    data["train"] = {
        "runs": {"bench": {"model": model, "samples": samples, "representation": rep, "epochs": epochs, "patience": epochs}},
        "threads": threads,
    }
    path.write_text(Study.from_dict(data).to_yaml())
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, help="a generated store with samples qcd and top (copied, never modified)")
    ap.add_argument("--model", default="macaluso_shih", choices=sorted(REPRESENTATION))
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--backend", default="horovod", choices=["horovod", "ddp"])
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()

    cores = os.cpu_count() or 1
    src = Study.from_dict(store_study(args.store, "bench-distributed"))
    tmp = Path(tempfile.mkdtemp(prefix="jetscan-dist-"))
    results = {}
    for n in (1, args.np):
        store = str(tmp / f"w{n}.zarr")
        shutil.copytree(args.store, store, ignore=shutil.ignore_patterns("_runs", "_results", "results"))
        path = study_file(src, store, args.model, args.epochs, max(1, cores // n), args.np, tmp / f"w{n}.yaml")
        study = Study.from_yaml(path)
        preprocess(study, use_ray=False)
        t0 = time.perf_counter()
        launch_local(str(path), ["bench"], n, args.backend)
        seconds = time.perf_counter() - t0
        _, _, ckpt = load_trained(study, "bench")
        jets = ckpt["summary"]["train_jets"] * ckpt["summary"]["epochs_run"]
        results[n] = {"seconds": seconds, "train_seconds": ckpt["summary"]["seconds"], "jets": jets}
        print(f"{n} worker(s): {jets} jets; training loop {ckpt['summary']['seconds']:.1f} s "
              f"({jets / ckpt['summary']['seconds']:.1f} samples/s); wall time incl. start-up {seconds:.1f} s "
              f"({jets / seconds:.1f} samples/s)")
    loop = results[1]["train_seconds"] / results[args.np]["train_seconds"]
    wall = results[1]["seconds"] / results[args.np]["seconds"]
    same = "equal jets on both sides" if results[1]["jets"] == results[args.np]["jets"] else "UNEQUAL jets: compare samples/s"
    what = f"({args.model}, {args.backend}, {cores} cores; {same})"
    print(f"ratio {args.np} workers / 1 worker, training loop only       = {loop:.2f}  {what}  (target >= 1.7 for 2)")
    print(f"ratio {args.np} workers / 1 worker, wall time incl. start-up = {wall:.2f}  (what a user waits for: "
          f"launcher, interpreters, imports, rendezvous, data loading, checkpoint)")
    append_result({
        "bench": "distributed", "device": cpu_device(),
        "model": args.model, "backend": args.backend, "np": args.np, "results": results,
        "ratio_train_loop": loop, "ratio_wall_with_startup": wall,
    })


if __name__ == "__main__":
    main()
