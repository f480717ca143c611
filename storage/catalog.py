"""The shard catalog: one parquet file per committed shard, written atomically.

A shard commits in two steps: its rows go into the zarr arrays, then its catalog row is
written as ``<store>/_catalog/<sample>/shard-NNNNNN.parquet``. The row is written whole
or not at all (a temporary file renamed into place on local disks; a single object PUT on
object stores), so a killed writer leaves either a committed shard or none: readers and
the resume logic trust the catalog alone.

Columns: sample, shard, start, stop, n_jets, n_events, seed, settings_hash, seconds,
created_utc, host, jetscan, pythia8mc, fastjet, zarr.
"""

from __future__ import annotations

import io
import os
import uuid
from datetime import datetime, timezone

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa
import pyarrow.parquet as pq

from jetscan.core.errors import StorageError

__all__ = ["CATALOG_DIR", "CATALOG_SCHEMA", "commit_shard", "read_catalog", "committed_shards", "now_utc"]

CATALOG_DIR = "_catalog"

CATALOG_SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("shard", pa.int64()),
        ("start", pa.int64()),
        ("stop", pa.int64()),
        ("n_jets", pa.int64()),
        ("n_events", pa.int64()),
        ("seed", pa.int64()),
        ("settings_hash", pa.string()),
        ("seconds", pa.float64()),
        ("created_utc", pa.string()),
        ("host", pa.string()),
        ("jetscan", pa.string()),
        ("pythia8mc", pa.string()),
        ("fastjet", pa.string()),
        ("zarr", pa.string()),
    ]
)


def _fs(store: str):
    fs, path = fsspec.core.url_to_fs(store)
    return fs, path.rstrip("/")


def _shard_path(base: str, sample: str, shard: int) -> str:
    return f"{base}/{CATALOG_DIR}/{sample}/shard-{shard:06d}.parquet"


def commit_shard(store: str, row: dict) -> None:
    """Atomically record one committed shard (call only after its rows are written)."""
    missing = set(CATALOG_SCHEMA.names) - set(row)
    if missing:
        raise StorageError(f"catalog row lacks {sorted(missing)}")
    table = pa.Table.from_pylist([{k: row[k] for k in CATALOG_SCHEMA.names}], schema=CATALOG_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs, base = _fs(store)
    final = _shard_path(base, row["sample"], int(row["shard"]))
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # atomic on POSIX
    else:
        fs.pipe_file(final, buf.getvalue())  # one PUT: atomic on object stores


def read_catalog(store: str, sample: str | None = None) -> pa.Table:
    """All committed shards (of one sample, or all), sorted by sample and shard."""
    fs, base = _fs(store)
    pattern = f"{base}/{CATALOG_DIR}/{sample or '*'}/shard-*.parquet"
    files = sorted(fs.glob(pattern))
    if not files:
        return CATALOG_SCHEMA.empty_table()
    tables = []
    for path in files:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, schema=CATALOG_SCHEMA))
    return pa.concat_tables(tables).sort_by([("sample", "ascending"), ("shard", "ascending")])


def committed_shards(store: str, sample: str) -> set[int]:
    return set(read_catalog(store, sample).column("shard").to_pylist())


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
