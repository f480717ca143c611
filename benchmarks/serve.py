"""`jetscan serve` under load on loopback, and zarr chunk reads over HTTP against local disk.

1. **load**: the service runs as its own process (``jetscan serve STORE --port 0 --token-file F
   --max-concurrency C``, exactly as a user starts it); ``--clients`` concurrent aiohttp clients
   (one asyncio process) send requests for ``--seconds``: a mix of zarr chunk reads (whole
   files and byte ranges of the store's array chunks, including sample shards), group
   ``zarr.json`` reads (consolidated metadata built per request), metrics-table queries with a
   filter (Arrow IPC), ROC curves and sample tables. Prints requests/s, p50/p99 latency per
   kind and overall, the error count (any non-2xx answer or connection error; the target is
   zero), and the service's RSS (psutil) before and after the load.
2. **HTTP vs disk**: every array of the store read whole by zarr, once over HTTP
   (``zarr.open_group("http://...")``) and once from the local folder, in this process; cold
   (first pass) and warm (second pass; the page cache is warm for both after the first), as MB/s
   of decoded bytes and the ratio HTTP / local.

The store is ``--store PATH`` (an evaluated study store, e.g. ``out/quickstart.zarr`` after
``make demo``), or a small real one built once into ``--work`` (200 QCD + 100 top jets,
heimel40 images, two PCA runs evaluated; about 30 s). Appends one JSON line to
``benchmarks/results.jsonl`` (not with ``--quick``).

    python benchmarks/serve.py [--store out/quickstart.zarr] [--clients 50] [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_result, cpu_device  # noqa: E402

TOKEN = "bench-token-" + "x" * 20


def build_store(work: Path) -> Path:
    """A small real evaluated study in ``work`` (reused when it is already there)."""
    store = work / "serve-bench.zarr"
    if (store / "_results" / "pca_b8.parquet").exists():
        return store
    from jetscan.core.study import Study
    from jetscan.jobs.evaluate import evaluate
    from jetscan.jobs.generate import generate
    from jetscan.jobs.preprocess import preprocess
    from jetscan.jobs.train import train

    study = Study.from_dict(
        {
            "name": "serve_bench",
            "store": str(store),
            "seed": 20260103,
            "sqrt_s_gev": 13000.0,
            "jet": {"r": 0.8, "pt_window_gev": [800.0, 900.0], "abs_eta_max": 1.0, "max_constituents": 120},
            "generation": {"shard_jets": 100, "batch_events": 100},
            "preprocess": {"representations": ["heimel40"]},
            "data": {"batch_size": 32, "shuffle_buffer_jets": 100, "splits": {"train": 0.5, "val": 0.25, "test": 0.25}},
            "samples": {"qcd": {"process": "qcd_dijet", "n_jets": 200}, "top": {"process": "top_hadronic", "n_jets": 100}},
            "train": {
                "runs": {
                    "pca_b4": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 4}},
                    "pca_b8": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 8}},
                },
                "threads": 1,
            },
        }
    )
    generate(study, use_ray=False)
    preprocess(study, use_ray=False)
    for run in study.train.runs:
        train(study, run, restart=True)
    evaluate(study)
    return store


def start_service(store: Path, work: Path, max_concurrency: int):
    token_file = work / "token"
    token_file.write_text(TOKEN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jetscan.jobs.cli", "serve", str(store), "--port", "0", "--token-file", str(token_file),
         "--max-concurrency", str(max_concurrency)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        raise SystemExit(f"jetscan serve did not start: {line}{proc.stdout.read()}")
    url = line.strip().rsplit(" at ", 1)[1]
    import requests

    requests.get(url + "/zarr.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).raise_for_status()
    return proc, url, time.perf_counter() - t0


def chunk_files(store: Path) -> list[str]:
    """Relative paths of every chunk file of the zarr hierarchy (not metadata, not _catalog)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(store):
        rel = os.path.relpath(dirpath, store)
        if rel.split(os.sep)[0].startswith("_"):
            dirnames[:] = []
            continue
        if f"{os.sep}c" in f"{os.sep}{rel}" or rel.startswith("c"):
            out += [os.path.join(rel, f).replace(os.sep, "/") for f in filenames]
    return sorted(p for p in out if "/c/" in f"/{p}")


def group_paths(store: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(store):
        rel = os.path.relpath(dirpath, store)
        if rel.split(os.sep)[0].startswith("_"):
            dirnames[:] = []
            continue
        if "zarr.json" in filenames and json.load(open(os.path.join(dirpath, "zarr.json"))).get("node_type") == "group":
            out.append("zarr.json" if rel == "." else f"{rel.replace(os.sep, '/')}/zarr.json")
    return out


async def load(url: str, store: Path, clients: int, seconds: float, seed: int = 0) -> dict:
    import aiohttp

    server, name = url.split("/stores/")
    chunks = chunk_files(store)
    sizes = {c: os.path.getsize(store / c) for c in chunks}
    groups = group_paths(store)
    from jetscan.storage.remote import connect

    runs = connect(str(store)).run_names()
    queries = ["signal == 'top'", "bottleneck >= 4 and auc > 0.5", "run in ['pca_b4'] or e100 >= 0", ""]
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def pick():
        r = rng.random()
        if r < 0.45:
            c = rng.choice(chunks)
            return "chunk", f"{url}/{c}", {}, None
        if r < 0.6:
            c = rng.choice(chunks)
            n = sizes[c]
            a = rng.randrange(0, max(1, n - 1))
            return "range", f"{url}/{c}", {}, f"bytes={a}-{min(n - 1, a + 4095)}"
        if r < 0.7:
            return "zarr.json", f"{url}/{rng.choice(groups)}", {}, None
        if r < 0.9:
            return "query", f"{server}/api/stores/{name}/results", {"query": rng.choice(queries), "format": "arrow"}, None
        if r < 0.95 and runs:
            return "roc", f"{server}/api/stores/{name}/runs/{rng.choice(runs)}/roc", {"signal": "top", "max_points": 200}, None
        return "samples", f"{server}/api/stores/{name}/samples", {}, None

    latencies: dict[str, list[float]] = {}
    errors: list[str] = []
    nbytes = 0
    stop_at = time.perf_counter() + seconds

    async def client(session):
        nonlocal nbytes
        while time.perf_counter() < stop_at:
            kind, target, params, rng_header = pick()
            h = dict(headers)
            if rng_header:
                h["Range"] = rng_header
            t0 = time.perf_counter()
            try:
                async with session.get(target, params=params, headers=h) as r:
                    body = await r.read()
                    ok = r.status in (200, 206)
                    if not ok:
                        errors.append(f"{kind} {r.status} {body[:200]!r}")
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors.append(f"{kind} {type(exc).__name__}: {exc}")
                continue
            latencies.setdefault(kind, []).append(time.perf_counter() - t0)
            nbytes += len(body)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*[client(session) for _ in range(clients)])
        elapsed = time.perf_counter() - t0
    all_lat = np.concatenate([np.asarray(v) for v in latencies.values()]) if latencies else np.zeros(1)
    per_kind = {
        k: {"n": len(v), "p50_ms": 1000 * float(np.percentile(v, 50)), "p99_ms": 1000 * float(np.percentile(v, 99))}
        for k, v in sorted(latencies.items())
    }
    return {
        "requests": int(len(all_lat)),
        "seconds": elapsed,
        "requests_per_s": len(all_lat) / elapsed,
        "p50_ms": 1000 * float(np.percentile(all_lat, 50)),
        "p99_ms": 1000 * float(np.percentile(all_lat, 99)),
        "errors": len(errors),
        "error_examples": errors[:5],
        "mb_per_s": nbytes / elapsed / 1e6,
        "per_kind": per_kind,
    }


def read_all(group) -> int:
    import zarr

    total = 0
    for _, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            total += node[...].nbytes
    return total


def http_vs_disk(url: str, store: Path) -> dict:
    import warnings

    import zarr

    options = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    out = {}
    for label, open_group in (
        ("http", lambda: zarr.open_group(url, mode="r", storage_options=options)),
        ("local", lambda: zarr.open_group(str(store), mode="r")),
    ):
        for temp in ("cold", "warm"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                n = read_all(open_group())
                dt = time.perf_counter() - t0
            out[f"{label}_{temp}_s"] = dt
            out[f"{label}_{temp}_mb_per_s"] = n / dt / 1e6
            out["decoded_mb"] = n / 1e6
    for temp in ("cold", "warm"):
        out[f"ratio_{temp}"] = out[f"http_{temp}_mb_per_s"] / out[f"local_{temp}_mb_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, help="an evaluated study store (default: build a small one in --work)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "jetscan-bench")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-concurrency", type=int, default=64, help="the service's bound (>= clients: no 503 by design)")
    ap.add_argument("--quick", action="store_true", help="5 clients for 3 s: a smoke test, nothing appended")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.seconds = 5, 3.0
    import psutil

    args.work.mkdir(parents=True, exist_ok=True)
    store = (args.store or build_store(args.work)).resolve()
    proc, url, startup_s = start_service(store, args.work, args.max_concurrency)
    try:
        service = psutil.Process(proc.pid)
        rss_before = service.memory_info().rss
        print(f"service {url} started in {startup_s:.2f} s (process start to first answer); RSS {rss_before / 2**20:.1f} MiB")
        stats = asyncio.run(load(url, store, args.clients, args.seconds))
        rss_after = service.memory_info().rss
        print(
            f"load: {args.clients} clients x {stats['seconds']:.1f} s: {stats['requests']} requests, "
            f"{stats['requests_per_s']:.0f} req/s, p50 {stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms, "
            f"{stats['mb_per_s']:.1f} MB/s, errors {stats['errors']} (target 0)"
        )
        for kind, k in stats["per_kind"].items():
            print(f"  {kind:10s} n={k['n']:6d}  p50 {k['p50_ms']:7.1f} ms  p99 {k['p99_ms']:7.1f} ms")
        for e in stats["error_examples"]:
            print(f"  error: {e}")
        print(f"service RSS before {rss_before / 2**20:.1f} MiB, after {rss_after / 2**20:.1f} MiB")
        ratio = http_vs_disk(url, store)
        print(
            f"every array read by zarr ({ratio['decoded_mb']:.1f} MB decoded): HTTP {ratio['http_cold_mb_per_s']:.1f} / "
            f"{ratio['http_warm_mb_per_s']:.1f} MB/s (cold/warm), local {ratio['local_cold_mb_per_s']:.1f} / "
            f"{ratio['local_warm_mb_per_s']:.1f} MB/s; HTTP/local {ratio['ratio_cold']:.2f} cold, {ratio['ratio_warm']:.2f} warm"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    load1 = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load1:.1f} on {os.cpu_count()} cores")
    append_result(
        {
            "bench": "serve",
            "device": cpu_device(),
            "store": str(store),
            "clients": args.clients,
            "seconds": args.seconds,
            "max_concurrency": args.max_concurrency,
            "startup_s": startup_s,
            "rss_before_mib": rss_before / 2**20,
            "rss_after_mib": rss_after / 2**20,
            "loadavg_1min_end": load1,
            **{k: v for k, v in stats.items() if k != "error_examples"},
            "http_vs_disk": ratio,
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
