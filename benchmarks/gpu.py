"""GPU training throughput and utilisation: 1 GPU and all GPUs of the node, through ``jetscan train``.

For the Macaluso-Shih CNN tagger (``macaluso_shih`` on ``ms37x4``, 37x37x4 images, QCD + top),
Heimel et al.'s image autoencoder (``image_ae`` on ``heimel40``, QCD) and Farina et al.'s dense
autoencoder (``dense_ae`` on ``heimel40``, QCD), each at its paper batch size
(``ModelInfo.batch_size``, 128 for all three; Macaluso & Shih 1803.00107, Heimel et al.
1808.08979, Farina et al. 1808.08992), the script trains the run with the real engine:

- **1 GPU**: ``torchrun --nproc_per_node 1`` through :func:`jetscan.cluster.launch.launch_local`;
- **all GPUs**: ``torchrun --nproc_per_node <GPUs of the node>`` (backend ddp: NCCL, one GPU per
  worker from :mod:`jetscan.cluster.devices`, ``DistributedDataParallel``).

Every worker reads its own part of the training split from the zarr store (``JetStream``), as
``jetscan train`` does. By default each GPU takes the paper batch (``lr_scaling: linear``: the
global batch and the learning rate grow with the GPUs, Goyal et al. 2017); ``--global-batch``
keeps the paper batch as the global batch instead (each of N GPUs then takes 1/N of it).

Printed per (model, GPUs): samples/s of the training loop (jets x epochs / the engine's loop
seconds, which include each epoch's validation pass and rank 0's checkpoint), the loop seconds,
the wall seconds of the whole launch including start-up (torchrun, imports, CUDA and NCCL
initialisation, opening the store), the mean GPU utilisation over the busy span (from the first
to the last sample with a GPU busy) and over the whole launch, and the N-GPU / 1-GPU ratio.
Utilisation is sampled every ``--util-period`` s in a thread of this process: with
``torch.cuda.utilization`` (NVML, when ``pynvml`` imports) or else ``nvidia-smi
--query-gpu=utilization.gpu``; the output says which.

Jets: the store ``benchmarks/preprocess.py`` generates (same ``--work``, ``--qcd``, ``--top``;
made here if missing), or ``--store PATH`` of an existing store with samples qcd and top
(copied, never modified); ms37x4 and heimel40 are preprocessed into the copy. A small store is
cycled for ``--epochs`` epochs (the loader's decoded-chunk cache then serves most reads).

Without CUDA it says so and exits 0; ``--device cpu --quick`` runs the same path on the CPU
(1 and 2 gloo workers, a tiny store) as a smoke test whose numbers mean nothing. Appends one
JSON line to ``benchmarks/results.jsonl`` (not for ``--quick``).

    python benchmarks/gpu.py [--models macaluso_shih,image_ae,dense_ae] [--epochs 5] [--gpus N]
                             [--store out/quickstart.zarr] [--global-batch] [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from _common import append_result, cpu_device
from jetscan.cluster.launch import launch_local
from jetscan.core.models import build_model
from jetscan.core.study import Study
from jetscan.jobs.train import load_trained

HERE = Path(__file__).resolve().parent

_spec = importlib.util.spec_from_file_location("jetscan_bench_preprocess", HERE / "preprocess.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # the store helpers (prepare_store)

#: model -> (representation, training samples)
MODELS = {
    "macaluso_shih": ("ms37x4", ["qcd", "top"]),
    "image_ae": ("heimel40", ["qcd"]),
    "dense_ae": ("heimel40", ["qcd"]),
}


# ------------------------------------------------------------------------ utilisation
class UtilSampler(threading.Thread):
    """GPU utilisation (%) of ``gpus`` (torch indices) every ``period`` s until :meth:`stop`."""

    def __init__(self, gpus: list[int], period: float = 0.2):
        super().__init__(daemon=True)
        self.gpus, self.period = gpus, period
        self.samples: list[tuple[float, list[float]]] = []
        self._stop = threading.Event()
        self.method = self._pick()

    def _pick(self) -> str:
        try:
            import pynvml  # noqa: F401  (torch.cuda.utilization reads NVML through it)

            torch.cuda.utilization(self.gpus[0])
            return "torch.cuda.utilization (NVML via pynvml)"
        except Exception:  # noqa: BLE001 - no pynvml, or NVML refuses: fall back to nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",")] if visible else [str(g) for g in self.gpus]
            self._smi = ["nvidia-smi", f"--id={','.join(ids[g] for g in self.gpus)}",
                         "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return "nvidia-smi --query-gpu=utilization.gpu"
        return "none (no pynvml, no nvidia-smi)"

    def _read(self) -> list[float] | None:
        if self.method.startswith("torch"):
            return [float(torch.cuda.utilization(g)) for g in self.gpus]
        if self.method.startswith("nvidia-smi"):
            out = subprocess.run(self._smi, capture_output=True, text=True, timeout=10, check=False)
            values = [float(v) for v in out.stdout.split() if v.strip().replace(".", "", 1).isdigit()]
            return values if len(values) == len(self.gpus) else None
        return None

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                values = self._read()
            except Exception:  # noqa: BLE001 - a failed read is a missing sample
                values = None
            if values is not None:
                self.samples.append((time.perf_counter(), values))
            self._stop.wait(self.period)

    def stop(self) -> dict:
        self._stop.set()
        self.join(timeout=15)
        if not self.samples:
            return {"util_method": self.method}
        means = [sum(v) / len(v) for _, v in self.samples]  # mean over the GPUs at each sample
        busy = [i for i, m in enumerate(means) if m > 0]
        span = means[busy[0] : busy[-1] + 1] if busy else []
        return {
            "util_method": self.method,
            "util_whole_pct": sum(means) / len(means),
            "util_busy_pct": sum(span) / len(span) if span else 0.0,
            "util_busy_s": (self.samples[busy[-1]][0] - self.samples[busy[0]][0]) if busy else 0.0,
            "util_samples": len(means),
        }


# --------------------------------------------------------------------------- the runs
def study_file(src: Study, store: str, model: str, args, np_: int, path: Path) -> Path:
    """A study on ``store`` with one run ``bench`` of ``model`` (and a validation split)."""
    rep, samples = MODELS[model]
    data = src.model_dump(mode="json")
    data["store"] = store
    data["name"] = "bench-gpu"
    data["data"]["splits"] = {"train": 0.8, "val": 0.1, "test": 0.1}
    run = {"model": model, "samples": samples, "representation": rep, "epochs": args.epochs, "patience": args.epochs,
           **({"hyper": args.hyper[model]} if model in args.hyper else {})}
    if args.batch:
        run["batch_size"] = args.batch
    if np_ > 1 and not args.global_batch:
        run["lr_scaling"] = "linear"  # batch_size per GPU: the global batch and lr grow with N
    data["train"] = {"runs": {"bench": run}, "device": args.device, "amp": args.amp,
                     **({"threads": args.threads} if args.threads else {})}
    path.write_text(Study.from_dict(data).to_yaml())
    return path


def one_launch(src: Study, tmp: Path, model: str, np_: int, args) -> dict:
    store = tmp / f"{model}-w{np_}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(src.store, store, ignore=shutil.ignore_patterns("_runs", "_results", "results"))
    path = study_file(src, str(store), model, args, np_, tmp / f"{model}-w{np_}.yaml")
    study = Study.from_yaml(path)
    sampler = UtilSampler(list(range(np_)), args.util_period) if args.device == "cuda" else None
    if sampler is not None:
        sampler.start()
    t0 = time.perf_counter()
    launch_local(str(path), ["bench"], np_, "ddp", timeout=args.timeout)
    wall = time.perf_counter() - t0
    util = sampler.stop() if sampler is not None else {}
    ckpt = load_trained(study, "bench")[2]
    s = ckpt["summary"]
    jets = s["train_jets"] * s["epochs_run"]
    return {"gpus" if args.device == "cuda" else "workers": np_, "jets": jets, "epochs": s["epochs_run"],
            "global_batch": s["global_batch"], "loop_s": s["seconds"], "wall_s": wall,
            "samples_per_s": jets / s["seconds"], "samples_per_s_wall": jets / wall, **util}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if visible), cuda, or cpu (with --quick: a smoke test)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--gpus", type=int, default=0, help="workers of the multi-GPU run (default: every visible GPU)")
    ap.add_argument("--batch", type=int, default=0, help="batch per GPU (default: the paper's, ModelInfo.batch_size)")
    ap.add_argument("--global-batch", action="store_true", help="the batch is the global batch (no lr_scaling)")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0: the study default)")
    ap.add_argument("--util-period", type=float, default=0.2)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per launch")
    ap.add_argument("--qcd", type=int, default=2000)
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--shard-jets", type=int, default=500)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "jetscan-bench"),
                    help="where the generated store is kept (shared with preprocess.py and train.py)")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--store", help="an existing store with samples qcd and top (copied, never modified)")
    ap.add_argument("--buffer", type=int, default=None, help="shuffle_buffer_jets (default: the study default)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    cuda = torch.cuda.is_available()
    if args.device == "auto":
        args.device = "cuda" if cuda else "none"
    if args.device in ("none", "cuda") and not cuda:
        print(f"benchmarks/gpu.py: no CUDA device is visible to torch {torch.__version__} (CUDA build: "
              f"{torch.version.cuda or 'none'}), so there is no GPU to measure on this machine; run it on a GPU node, "
              "or `python benchmarks/gpu.py --device cpu --quick` for a smoke test of the same path on the CPU")
        sys.exit(0)
    if args.device not in ("cuda", "cpu"):
        raise SystemExit(f"--device: auto, cuda or cpu (got {args.device!r})")
    n_all = args.gpus or (torch.cuda.device_count() if args.device == "cuda" else 2)
    args.hyper = {}
    if args.quick:  # tiny: 100 jets, batch 4, a narrow image AE, 1 epoch; the numbers mean nothing
        args.qcd, args.top, args.shard_jets, args.epochs = 60, 40, 20, 1
        args.batch = args.batch or 4
        args.threads = args.threads or 1

    study, source = bench.prepare_store(args, sorted({MODELS[m][0] for m in args.models}))
    if args.device == "cuda":
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        device = f"{' + '.join(names)} x{torch.cuda.device_count()} ({mem:.0f} GiB) (cuda)"
        print(f"device: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 autocast "
              f"{'on' if args.amp else 'off'}; jets from {source}")
    else:
        device = cpu_device()
        print(f"device: {device}, torch {torch.__version__} (CPU smoke test: the numbers mean nothing); jets from {source}")
    counts = [1] if n_all == 1 else [1, n_all]
    tmp = Path(tempfile.mkdtemp(prefix="jetscan-gpu-"))
    result = {"bench": "gpu", "device": device, "quick": args.quick, "epochs": args.epochs, "amp": args.amp,
              "per_gpu_batch": not args.global_batch, "results": {}}
    unit = "GPU" if args.device == "cuda" else "worker"
    try:
        for model in args.models:
            info = build_model(model, **args.hyper.get(model, {}))[1]
            batch = args.batch or info.batch_size
            rows = {}
            for n in counts:
                r = one_launch(study, tmp, model, n, args)
                rows[n] = r
                util = (f", GPU util {r['util_busy_pct']:5.1f}% busy span / {r['util_whole_pct']:5.1f}% whole"
                        if "util_busy_pct" in r else "")
                print(f"  {model:14s} {MODELS[model][0]:8s} {n} {unit}(s), global batch {r['global_batch']:5d}: "
                      f"{r['samples_per_s']:9.1f} samples/s in the loop ({r['loop_s']:6.1f} s), "
                      f"{r['samples_per_s_wall']:9.1f} with start-up ({r['wall_s']:6.1f} s wall){util}")
            out = {"representation": MODELS[model][0], "paper_batch": info.batch_size, "batch": batch,
                   "runs": {str(n): r for n, r in rows.items()}}
            if len(counts) > 1:
                ratio = rows[n_all]["samples_per_s"] / rows[1]["samples_per_s"]
                wall = rows[1]["wall_s"] / rows[n_all]["wall_s"]
                print(f"  ratio {n_all}/1 {unit}s {model}: loop {ratio:.2f} (efficiency {ratio / n_all:.2f}), "
                      f"wall time 1/{n_all} {wall:.2f}")
                out.update(ratio_loop=ratio, ratio_wall=wall)
            result["results"][model] = out
        if args.device == "cuda":
            print(f"utilisation from {next(iter(next(iter(result['results'].values()))['runs'].values())).get('util_method')}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    append_result(result, quick=args.quick)


if __name__ == "__main__":
    main()
