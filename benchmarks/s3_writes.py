"""Writing zarr metadata and small arrays to an object store: zarr's one-array-at-a-time way
against building in memory and writing each object once, in one concurrent batch.

Three writes of the pipeline, each done the old way and the new way on the same data, into
``s3://`` served by moto on 127.0.0.1 (its own process, :mod:`jetscan.storage.s3local`), and
into a local folder, where the new way must not be slower:

- ``write_run`` (the evaluate stage): one run's results, ~31 small arrays (2 samples of
  ``--jets`` test jets, one signal, history, images) and the run group's consolidated
  metadata. Old: ``group.create_array(..., overwrite=True)`` per array, then
  ``zarr.consolidate_metadata`` on the store (the code before this benchmark's commit, copied
  here as :func:`old_write_run`). New: :func:`jetscan.storage.results.write_run`.
- ``create_sample`` (the generate stage's plan): a sample group's 16 empty sharded arrays.
  Old: ``create_array(..., overwrite=True)`` per array (:func:`old_create_sample`). New:
  :func:`jetscan.storage.layout.create_sample`.
- ``write_rows`` (one generation shard into those arrays). Old: one array after the other
  (:func:`old_write_rows`). New: :func:`jetscan.storage.layout.write_rows` (concurrently; the
  request count is the same).

Cold: the first write into a fresh store (a new run; the first sample), after the S3 clients
were started by a throwaway write (their start-up is left out). Warm: the median, with min and
max, over ``--rounds`` repeats (re-evaluating the run, which replaces it; another new sample;
the next shard), old and new alternating which goes first. Printed: seconds old / new, the
ratio old / new, and the S3 requests each way (counted in this process's S3 client, as each
request is a round trip to the store). The old and new stores are compared object by object
at the end (they must be identical).

moto keeps objects in memory in one Python process: its per-request latency (a few ms to tens
of ms on a busy machine) is lower than AWS S3's (tens of ms), so the ratios here understate
what dropping requests saves on a real object store.

    python benchmarks/s3_writes.py [--jets 20000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_result, cpu_device, git_rev  # noqa: E402

BUCKET = "bench"


# --------------------------------------------------------------------------------------
# the old way (the code before this change)


def old_write_run(store: str, evaluation: dict, rows: list[dict]) -> None:
    """``results.write_run`` as it was: zarr creates every array in the store in turn."""
    import zarr

    from jetscan.storage import blobs
    from jetscan.storage import results as res

    samples = res._check_evaluation(evaluation)
    run = evaluation["run"]
    parquet_bytes = res._check_rows(run, rows)
    images = res._check_images(evaluation.get("images"))
    history = res._history_arrays(evaluation.get("history"))
    arrays = res._run_arrays(samples, evaluation["background"], list(evaluation["signals"]), images, history)
    attrs = res._run_attrs(evaluation, samples, rows, bool(history), bool(images))
    root = res._open_root(store, "a")
    fs, base = blobs.store_fs(store)
    parquet = res._parquet_path(base, run)
    if fs.exists(parquet):
        fs.rm(parquet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = root.require_group(res.RESULTS_GROUP).create_group(run, overwrite=True)
        for path, data, dtype, array_attrs in arrays:
            arr = res._array(group, path, data, dtype)
            if array_attrs:
                arr.attrs.update(array_attrs)
        group.attrs.update(attrs)
        zarr.consolidate_metadata(str(store), path=f"{res.RESULTS_GROUP}/{run}", zarr_format=3)
    blobs.write_atomic(store, f"{res.RESULTS_DIR}/{run}.parquet", parquet_bytes)


def old_create_sample(root, name: str, *, n_jets: int, shard_jets: int, max_constituents: int, attrs: dict):
    """``layout.create_sample`` as it was: one ``create_array(..., overwrite=True)`` per array."""
    from jetscan.storage import layout

    group = root.require_group(name)
    chunk = layout.chunk_jets_for(shard_jets)
    fields = [(p, dt, (n_jets,), (chunk,), (shard_jets,), 0, ["jet"]) for p, dt in layout.JET_FIELDS.items()]
    fields += [
        (p, dt, (n_jets, max_constituents), (chunk, max_constituents), (shard_jets, max_constituents),
         -1 if p.endswith("kind") else 0, ["jet", "constituent"])
        for p, dt in layout.CONSTITUENT_FIELDS.items()
    ]
    for path, dtype, shape, chunks, shards, fill, dims in fields:
        group.create_array(path, shape=shape, dtype=dtype, chunks=chunks, shards=shards, compressors=layout._compressors(),
                           fill_value=fill, dimension_names=dims, overwrite=True)
    group.attrs.update(attrs)
    return group


def old_write_rows(group, start: int, arrays: dict) -> None:
    """``layout.write_rows`` as it was: one array after the other."""
    n = len(next(iter(arrays.values())))
    for path, values in arrays.items():
        group[path][start : start + n] = values


# --------------------------------------------------------------------------------------
# data


def evaluation(n_jets: int, seed: int) -> dict:
    """A PCA-like run of 2 samples (QCD background, top signal) with history and images: 31 arrays."""
    rng = np.random.default_rng(seed)
    mass_b = rng.exponential(60.0, n_jets).astype(np.float32)
    return {
        "run": "pca_b8", "study": "bench", "kind": "pca", "background": "qcd", "signals": ["top"],
        "config": {"model": "pca", "representation": "heimel40", "bottleneck": 8, "seed": seed},
        "samples": {
            "qcd": {"score": rng.normal(0.0, 1.0, n_jets), "mass": mass_b, "label": np.zeros(n_jets, np.int64)},
            "top": {"score": rng.normal(1.5, 1.0, n_jets), "mass": rng.normal(175.0, 20.0, n_jets).astype(np.float32),
                    "label": np.ones(n_jets, np.int64)},
        },
        "history": {"epoch": [1.0], "train_loss": [0.5], "val_loss": [0.6]},
        "images": {s: {"input": rng.random((40, 40), dtype=np.float32), "reconstruction": rng.random((40, 40), dtype=np.float32)}
                   for s in ("qcd", "top")},
    }


def shard_rows(shard_jets: int, max_constituents: int, seed: int) -> dict:
    from jetscan.storage import layout

    rng = np.random.default_rng(seed)
    rows = {p: (rng.random(shard_jets) * 500).astype(dt) for p, dt in layout.JET_FIELDS.items()}
    rows.update({p: (rng.random((shard_jets, max_constituents)) * 3).astype(dt) for p, dt in layout.CONSTITUENT_FIELDS.items()})
    return rows


# --------------------------------------------------------------------------------------
# measuring


class Requests:
    """Counts every S3 request this process's clients make (aiobotocore, under s3fs)."""

    def __init__(self):
        from aiobotocore.client import AioBaseClient

        self.n = 0
        real = AioBaseClient._make_api_call

        async def counted(client, operation_name, api_params):
            self.n += 1
            return await real(client, operation_name, api_params)

        AioBaseClient._make_api_call = counted


@contextlib.contextmanager
def timed(into: list, requests: Requests, counts: list):
    n0, t0 = requests.n, time.perf_counter()
    yield
    into.append(time.perf_counter() - t0)
    counts.append(requests.n - n0)


def rounds_of(fn_old, fn_new, rounds: int, requests: Requests) -> dict:
    """Cold (the first call of each) and warm (the rest) seconds and request counts, old and new
    alternating which goes first. ``fn_*(i)`` does the i-th write."""
    times = {"old": [], "new": []}
    counts = {"old": [], "new": []}
    for i in range(rounds + 1):
        order = [("old", fn_old), ("new", fn_new)] if i % 2 == 0 else [("new", fn_new), ("old", fn_old)]
        for side, fn in order:
            with timed(times[side], requests, counts[side]):
                fn(i)
    out = {}
    for side in ("old", "new"):
        warm = times[side][1:]
        out[side] = {"cold_s": times[side][0], "warm_s": statistics.median(warm), "warm_min_s": min(warm),
                     "warm_max_s": max(warm), "requests_cold": counts[side][0], "requests_warm": counts[side][-1]}
    out["ratio_cold"] = out["old"]["cold_s"] / out["new"]["cold_s"]
    out["ratio_warm"] = out["old"]["warm_s"] / out["new"]["warm_s"]
    return out


def same_objects(fs, a: str, b: str) -> bool:
    fs.invalidate_cache()
    objs = [{k[len(p) + 1 :]: fs.cat_file(k) for k in fs.find(p)} for p in (a, b)]
    return objs[0] == objs[1]


# --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jets", type=int, default=20000, help="test jets per sample of the evaluated run")
    ap.add_argument("--rounds", type=int, default=5, help="warm repeats of each write")
    ap.add_argument("--shard-jets", type=int, default=500)
    ap.add_argument("--max-constituents", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.jets, args.rounds, args.shard_jets, args.max_constituents = 2000, 2, 100, 20

    from jetscan.storage import blobs, layout
    from jetscan.storage import results as res
    from jetscan.storage.s3local import start_s3_server

    ev = evaluation(args.jets, seed=1)
    rows = res.summarise(ev)
    shard = shard_rows(args.shard_jets, args.max_constituents, seed=2)
    sizes = {"shard_jets": args.shard_jets, "max_constituents": args.max_constituents}
    n_shards = args.rounds + 1

    tmp = Path(tempfile.mkdtemp(prefix="jetscan-bench-s3-writes-"))
    moto, endpoint = start_s3_server()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    requests = Requests()
    results = {}
    try:
        import fsspec
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        blobs.use_storage_options(f"s3://{BUCKET}/x", {"client_kwargs": {"endpoint_url": endpoint}})
        res.write_run(f"s3://{BUCKET}/warmup.zarr", ev, rows)  # start the S3 clients (zarr's and fsspec's)

        s3 = {side: f"s3://{BUCKET}/{side}.zarr" for side in ("old", "new")}
        local = {side: str(tmp / f"{side}.zarr") for side in ("old", "new")}
        results["write_run_s3"] = rounds_of(lambda i: old_write_run(s3["old"], ev, rows),
                                            lambda i: res.write_run(s3["new"], ev, rows), args.rounds, requests)
        results["write_run_local"] = rounds_of(lambda i: old_write_run(local["old"], ev, rows),
                                               lambda i: res.write_run(local["new"], ev, rows), args.rounds, requests)

        make = {"old": old_create_sample, "new": layout.create_sample}
        write = {"old": old_write_rows, "new": layout.write_rows}
        for where, stores in (("s3", s3), ("local", local)):
            roots = {side: layout.open_root(stores[side], mode="a") for side in ("old", "new")}

            def sample(side, roots=roots):
                return lambda i: make[side](roots[side], f"s{i}", n_jets=n_shards * args.shard_jets, attrs={"i": i}, **sizes)

            def rows_of(side, roots=roots):
                group = layout.open_sample(roots[side], "s0")
                return lambda i: write[side](group, i * args.shard_jets, shard)

            results[f"create_sample_{where}"] = rounds_of(sample("old"), sample("new"), args.rounds, requests)
            results[f"write_rows_{where}"] = rounds_of(rows_of("old"), rows_of("new"), args.rounds, requests)
        identical = same_objects(fs, f"{BUCKET}/old.zarr", f"{BUCKET}/new.zarr")
        identical_local = same_objects(fsspec.filesystem("file"), local["old"], local["new"])
    finally:
        moto.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    n_arrays = len(res._run_arrays(res._check_evaluation(ev), "qcd", ["top"], res._check_images(ev["images"]),
                                   res._history_arrays(ev["history"])))
    print(f"\nwrite_run: {n_arrays} arrays, 2 x {args.jets} jets; create_sample: 16 arrays; write_rows: one shard of "
          f"{args.shard_jets} jets x {args.max_constituents} constituents; {args.rounds} warm rounds; "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'':26}{'old s':>9}{'new s':>9}{'old/new':>9}{'requests old':>14}{'new':>6}")
    for key, label in [("write_run_s3", "write_run S3"), ("create_sample_s3", "create_sample S3"),
                       ("write_rows_s3", "write_rows S3"), ("write_run_local", "write_run local"),
                       ("create_sample_local", "create_sample local"), ("write_rows_local", "write_rows local")]:
        r = results[key]
        for phase in ("cold", "warm"):
            old, new = r["old"][f"{phase}_s"], r["new"][f"{phase}_s"]
            spread = ""
            if phase == "warm":
                spread = (f"   (old {r['old']['warm_min_s']:.3f}-{r['old']['warm_max_s']:.3f}, "
                          f"new {r['new']['warm_min_s']:.3f}-{r['new']['warm_max_s']:.3f})")
            req = f"{r['old'][f'requests_{phase}']:14d}{r['new'][f'requests_{phase}']:6d}" if "s3" in key else ""
            print(f"{label + ' ' + phase:26}{old:9.3f}{new:9.3f}{old / new:9.2f}{req:20}{spread}")
    print(f"old and new stores hold identical objects: S3 {'yes' if identical else 'NO'}, "
          f"local {'yes' if identical_local else 'NO'}")
    append_result({
        "benchmark": "s3_writes", "revision": git_rev(), "device": cpu_device(),
        "config": {"jets": args.jets, "rounds": args.rounds, "shard_jets": args.shard_jets,
                   "max_constituents": args.max_constituents, "run_arrays": n_arrays},
        "results": results, "identical_objects": {"s3": identical, "local": identical_local},
    }, quick=args.quick)
    if not (identical and identical_local):
        sys.exit("the old and new ways stored different objects")


if __name__ == "__main__":
    main()
