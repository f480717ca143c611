"""Shard write and read throughput: a local disk store against a local S3 server (moto).

One real shard is generated first (Pythia8 QCD, 800-900 GeV jets, the full chain, in this
process); its arrays are then written as ``--shards`` shards into a fresh store through the
normal path (``layout.write_rows`` + ``catalog.commit_shard``: every array's zarr shard, then
the catalog row) and read back (``layout.read_rows`` of every array, after
``catalog.read_catalog``), once into a local directory and once into ``s3://`` served by
moto's ThreadedMotoServer on 127.0.0.1 in its own process. Printed: jets/s and stored MB/s
each way, cold (the first shard: client start-up, metadata) apart from warm (the median of
the rest), wall time including the store's creation, and the ratios S3 / local.

moto keeps objects in memory in one Python process, so its absolute numbers are not those of
AWS S3 or MinIO (whose per-request latency is higher, bandwidth per connection similar or
higher); the ratio shows what the object-store path costs on this machine.

    python benchmarks/storage.py [--jets 500] [--shards 8] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_result, cpu_device, git_rev  # noqa: E402


def real_shard(study):
    from jetscan.jobs.generate import ShardMaker, ShardSpec
    from jetscan.core.processes import pythia_seed

    spec = ShardSpec("qcd", 0, 0, study.samples["qcd"].n_jets, pythia_seed(study.seed, "qcd", 0))
    arrays, _ = ShardMaker(study).make_arrays(spec)
    return arrays


def run_side(store: str, study, arrays: dict, shards: int) -> dict:
    from jetscan.storage import blobs, catalog, layout

    n = len(arrays["jets/pt"])
    t_wall = time.perf_counter()
    root = layout.open_root(store, mode="w")
    group = layout.create_sample(root, "qcd", n_jets=n * shards, shard_jets=n,
                                 max_constituents=study.jet.max_constituents, attrs={"n_jets": n * shards, "shard_jets": n})
    writes = []
    for i in range(shards):
        t0 = time.perf_counter()
        layout.write_rows(group, i * n, arrays)
        catalog.commit_shard(store, {
            "sample": "qcd", "shard": i, "start": i * n, "stop": (i + 1) * n, "n_jets": n, "n_events": 0, "seed": 0,
            "settings_hash": "-", "seconds": 0.0, "created_utc": catalog.now_utc(), "host": "bench", "jetscan": "-",
            "pythia8mc": "-", "fastjet": "-", "zarr": "-",
        })
        writes.append(time.perf_counter() - t0)
    fs, base = blobs.store_fs(store)
    stored = sum(fs.du(f"{base}/qcd", total=True, maxdepth=None) for _ in [0])
    reads = []
    fields = list(arrays)
    root = layout.open_root(store)
    group = layout.open_sample(root, "qcd")
    for i in range(shards):
        t0 = time.perf_counter()
        rows = catalog.read_catalog(store, "qcd").to_pylist()[i]
        layout.read_rows(group, fields, rows["start"], rows["stop"])
        reads.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_wall
    per_shard_mb = stored / shards / 1e6
    warm_w, warm_r = statistics.median(writes[1:]), statistics.median(reads[1:])
    return {
        "write_cold_s": writes[0], "write_warm_s": warm_w, "read_cold_s": reads[0], "read_warm_s": warm_r,
        "write_jets_per_s": n / warm_w, "read_jets_per_s": n / warm_r,
        "write_mb_per_s": per_shard_mb / warm_w, "read_mb_per_s": per_shard_mb / warm_r,
        "stored_mb_per_shard": per_shard_mb, "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jets", type=int, default=500, help="jets per shard")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.jets, args.shards = 100, 3

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from jetscan.core.study import Study
    from jetscan.storage import blobs

    study = Study.from_dict({
        "name": "bench", "store": "/unused", "seed": 20260101, "sqrt_s_gev": 13000.0,
        "jet": {"r": 0.8, "pt_window_gev": [800.0, 900.0], "abs_eta_max": 1.0, "max_constituents": 200},
        "generation": {"shard_jets": args.jets}, "samples": {"qcd": {"process": "qcd_dijet", "n_jets": args.jets}},
    })
    t0 = time.perf_counter()
    arrays = real_shard(study)
    print(f"one real shard of {args.jets} QCD jets generated in {time.perf_counter() - t0:.1f} s")

    tmp = Path(tempfile.mkdtemp(prefix="jetscan-bench-storage-"))
    from jetscan.storage.s3local import start_s3_server

    moto, endpoint = start_s3_server()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    try:
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("bench")
        blobs.use_storage_options("s3://bench/x", {"client_kwargs": {"endpoint_url": endpoint}})
        local = run_side(str(tmp / "local.zarr"), study, arrays, args.shards)
        s3 = run_side("s3://bench/storage.zarr", study, arrays, args.shards)
    finally:
        moto.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.shards} shards x {args.jets} jets, {local['stored_mb_per_shard']:.2f} MB stored per shard "
          f"({len(arrays)} arrays), load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'':22}{'local disk':>14}{'S3 (moto)':>14}{'S3/local':>10}")
    ratios = {}
    for key, label in [("write_jets_per_s", "write jets/s (warm)"), ("write_mb_per_s", "write MB/s (warm)"),
                       ("read_jets_per_s", "read jets/s (warm)"), ("read_mb_per_s", "read MB/s (warm)")]:
        ratios[key] = s3[key] / local[key]
        fmt = ".2f" if "mb" in key else ".0f"
        print(f"{label:22}{local[key]:14{fmt}}{s3[key]:14{fmt}}{ratios[key]:10.2f}")
    for key, label in [("write_cold_s", "first write s (cold)"), ("read_cold_s", "first read s (cold)"),
                       ("wall_s", "wall s (all, incl. setup)")]:
        ratios[key] = s3[key] / local[key]
        print(f"{label:22}{local[key]:14.3f}{s3[key]:14.3f}{ratios[key]:10.2f}")
    append_result({
        "benchmark": "storage", "revision": git_rev(), "device": cpu_device(),
        "config": {"jets": args.jets, "shards": args.shards},
        "local": local, "s3_moto": s3, "ratio_s3_over_local": ratios,
    }, quick=args.quick)


if __name__ == "__main__":
    main()
