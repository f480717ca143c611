"""Training throughput: the zarr-streamed loader against in-memory tensors, per model and device.

For ``cnn_ae`` (Farina, Nakai & Shih's CNN autoencoder, on heimel40 images, QCD jets) and
``macaluso_shih`` (Macaluso & Shih's CNN tagger, on ms37x4 images, QCD + top jets), one run
prints training samples/s of the same model step as ``jetscan train`` (``jobs/train.py``:
``zero_grad``; under ``torch.autocast(bfloat16)`` on CUDA (and on the CPU with ``--cpu-amp``,
as ``train.amp_cpu`` does), batch to device, forward, per-jet
loss, mean; backward; the paper's optimizer step, Adam for cnn_ae and AdaDelta for
macaluso_shih; ``float(loss)``, which also synchronises a GPU every step), batch 128, fed

- **streamed**: ``JetStream(study, samples, rep).iter_numpy(epoch)`` (stored inputs, shuffle
  on, the study's default 20,000-jet shuffle buffer, 4 chunks prefetched by background
  threads), ``torch.from_numpy`` per batch, epochs cycled as needed, as ``jobs/train.py`` does;
- **in memory**: the same jets held as numpy arrays in host memory, a shuffled index order per
  epoch, ``torch.from_numpy(x[idx])`` per batch (then ``.to(device)`` inside the step, as above);

``--warmup`` untimed steps, then ``--steps`` timed steps per (model, feed). Prints samples/s,
first-batch latency (iterator start to first batch ready), the first (cold) step's time,
p50/p95 step times, the ratio streamed / in-memory (aim >= 0.95), with ``--cpu-amp both`` the
ratio bfloat16 / float32 on the CPU (the same jets in the same order, warm), and on CUDA the GPU name and
``torch.cuda.max_memory_allocated``. CPU runs use torch's default threads (``--threads`` to
change); the loader's reading threads share the cores. These models are slow on CPU
(macaluso_shih ~40-130 jets/s in float32 on 2 cores): keep ``--steps`` small there.

Jets: the store ``benchmarks/preprocess.py`` generates (same ``--work``, ``--qcd``, ``--top``;
made here if missing), or ``--store PATH`` of an existing store with samples qcd and top
(copied, never modified); heimel40 and ms37x4 are preprocessed into it. Appends one JSON line
to ``benchmarks/results.jsonl``.

    python benchmarks/train.py [--device cpu|cuda|cpu,cuda] [--steps N] [--warmup N] [--cpu-amp off|on|both]
                               [--models cnn_ae,macaluso_shih] [--store out/quickstart.zarr] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import append_result
from jetscan.core.models import build_model, make_optimizer
from jetscan.core.study import settings_hash
from jetscan.storage.loader import JetStream

HERE = Path(__file__).resolve().parent

_spec = importlib.util.spec_from_file_location("jetscan_bench_preprocess", HERE / "preprocess.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # the store helpers (prepare_store, git_rev)

#: model -> (representation, training samples)
MODELS = {
    "cnn_ae": ("heimel40", ["qcd"]),
    "macaluso_shih": ("ms37x4", ["qcd", "top"]),
}


def batches_streamed(stream: JetStream):
    epoch = 0
    while True:
        for b in stream.iter_numpy(epoch=epoch):
            yield torch.from_numpy(b["x"]), torch.from_numpy(b["label"])
        epoch += 1


def batches_memory(x: np.ndarray, y: np.ndarray, batch: int):
    epoch = 0
    while True:
        order = np.random.default_rng(epoch).permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        epoch += 1


def make_step(name: str, device: torch.device, amp: bool, hyper: dict | None = None):
    """One training step; ``amp``: bfloat16 autocast (``train.amp`` on CUDA, ``train.amp_cpu`` on the CPU)."""
    torch.manual_seed(0)
    module, info = build_model(name, **(hyper or {}))
    module = module.to(device).train()
    optimizer, _ = make_optimizer(module, info)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            x = xb.to(device, non_blocking=True)
            x = x.reshape(len(x), *info.input_shape)
            if info.kind == "tagger":
                loss = module.loss(module(x), yb.to(device)).mean()
            else:
                loss = module.loss(x, module(x)).mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step, info


def timed(batches, step, warmup: int, steps: int) -> dict:
    t0 = time.perf_counter()
    xb, yb = next(batches)
    first = time.perf_counter() - t0
    first_step = float("nan")
    for k in range(warmup):
        if k:
            xb, yb = next(batches)
        t1 = time.perf_counter()
        step(xb, yb)
        if not k:  # cold: the kernels' first call (oneDNN builds its bfloat16 primitives here)
            first_step = time.perf_counter() - t1
    times, n = [], 0
    prev = time.perf_counter()
    for k in range(steps):
        if k or warmup:
            xb, yb = next(batches)
        step(xb, yb)
        now = time.perf_counter()
        times.append(now - prev)
        prev = now
        n += len(xb)
    t = np.asarray(times)
    return {
        "rate": n / t.sum(),
        "first_batch_ms": 1e3 * first,
        "first_step_ms": 1e3 * first_step,
        "p50_ms": 1e3 * float(np.percentile(t, 50)),
        "p95_ms": 1e3 * float(np.percentile(t, 95)),
        "steps": steps,
        "jets": n,
    }


def run_device(args, study, device: torch.device) -> dict:
    out = {}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"device: {torch.cuda.get_device_name(device)} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, bf16 autocast {'on' if args.amp else 'off'}")
    else:
        print(f"device: cpu, {bench.cpu_device()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    precisions = [args.amp] if device.type == "cuda" else {"off": [False], "on": [True], "both": [False, True]}[args.cpu_amp]
    for name in args.models:
        rep, samples = MODELS[name]
        stream = JetStream(study, samples, rep, split="train", shuffle=True, batch_size=args.batch)
        xs, ys = [], []
        for b in stream.iter_numpy(epoch=10_000):  # the same jets, in memory (untimed)
            xs.append(b["x"])
            ys.append(b["label"])
        x, y = np.concatenate(xs), np.concatenate(ys)
        for amp in precisions:
            key = name if not amp or device.type == "cuda" else f"{name}/bfloat16"  # CUDA: amp is the default
            out[key] = _run_model(args, device, name, rep, stream, x, y, amp)
        if len(precisions) == 2:  # the same jets and feeds, float32 then bfloat16 autocast
            for feed in ("memory", "streamed"):
                ratio = out[f"{name}/bfloat16"][feed]["rate"] / out[name][feed]["rate"]
                out[f"{name}/bfloat16"][f"ratio_bfloat16_over_float32_{feed}"] = ratio
                print(f"  ratio bfloat16/float32 {name} on cpu, {feed} = {ratio:.3f}  (train.amp_cpu; same jets, "
                      f"same order, warm: after {args.warmup} untimed steps)")
    return out


def _run_model(args, device, name: str, rep: str, stream, x: np.ndarray, y: np.ndarray, amp: bool) -> dict:
    res = {"autocast": "bfloat16" if amp else "float32"}
    for feed in ("memory", "streamed"):
        step, info = make_step(name, device, amp, args.hyper.get(name))
        batches = batches_memory(x, y, args.batch) if feed == "memory" else batches_streamed(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        r = timed(batches, step, args.warmup, args.steps)
        if device.type == "cuda":
            r["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        res[feed] = r
        mem = f", max mem {r['max_memory_allocated_mib']:.0f} MiB" if "max_memory_allocated_mib" in r else ""
        print(f"  {name:14s} {rep:9s} {res['autocast']:8s} {feed:8s} {r['rate']:9.1f} samples/s  first batch "
              f"{r['first_batch_ms']:8.1f} ms, first step {r['first_step_ms']:8.1f} ms (cold), step p50 {r['p50_ms']:8.1f} ms, "
              f"p95 {r['p95_ms']:8.1f} ms ({r['steps']} steps x {args.batch}){mem}")
    ratio = res["streamed"]["rate"] / res["memory"]["rate"]
    print(f"  ratio streamed/in-memory {name} ({res['autocast']}) on {device.type} = {ratio:.3f}  (aim >= 0.95; "
          f"{len(x)} jets, {info.n_params:,} parameters)")
    res["ratio_streamed_over_memory"] = ratio
    res["jets"] = int(len(x))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, auto (cuda if visible, else cpu), or a list: cpu,cuda")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per model and feed (default: 20 cpu, 300 cuda)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 cpu, 20 cuda)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    ap.add_argument("--cpu-amp", choices=("off", "on", "both"), default="off",
                    help="bf16 autocast on the CPU (train.amp_cpu): off, on, or both (prints the ratio bfloat16/float32)")
    ap.add_argument("--qcd", type=int, default=2000)
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--shard-jets", type=int, default=500)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "jetscan-bench"),
                    help="where the generated store is kept (shared with preprocess.py)")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--store", help="an existing store with samples qcd and top (copied, never modified)")
    ap.add_argument("--buffer", type=int, default=None, help="shuffle_buffer_jets (default: the study default)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs (a few s of CPU)")
    args = ap.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    devices = []
    for d in args.device.split(","):
        d = d.strip()
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        if d == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch")
        if d not in ("cpu", "cuda"):
            raise SystemExit(f"--device: cpu, cuda or auto (got {d!r})")
        devices.append(torch.device(d))
    args.hyper = {}
    if args.quick:  # tiny: 100 jets, batch 4, a narrow cnn_ae; the numbers mean nothing
        args.qcd, args.top, args.shard_jets, args.batch = 60, 40, 20, 4
        args.hyper = {"cnn_ae": {"filters": 16}}
        args.threads = args.threads or 1
        args.steps = 2 if args.steps is None else args.steps
        args.warmup = 1 if args.warmup is None else args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)

    study, source = bench.prepare_store(args, ["heimel40", "ms37x4"])
    print(f"jets from {source}")
    result = {
        "bench": "train",
        "git": bench.git_rev(),
        "config_hash": settings_hash({
            "jets": {s: settings_hash(study.generation_settings(s)) for s in bench.SAMPLES},
            "args": {k: v for k, v in vars(args).items() if k not in ("work", "store", "fresh", "device", "hyper")},
        }),
        "quick": args.quick,
        "batch": args.batch,
        "results": {},
    }
    devices_text = []
    for device in devices:
        cuda = device.type == "cuda"
        steps, warmup = args.steps, args.warmup
        args.steps = (300 if cuda else 20) if steps is None else steps
        args.warmup = (20 if cuda else 2) if warmup is None else warmup
        result["results"][device.type] = {"steps": args.steps, "warmup": args.warmup, **run_device(args, study, device)}
        args.steps, args.warmup = steps, warmup
        devices_text.append(torch.cuda.get_device_name(device) + " (cuda)" if cuda
                            else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads (cpu)")
    result["device"] = "; ".join(devices_text)
    append_result(result, quick=args.quick)


if __name__ == "__main__":
    main()
