"""The shard catalog: one parquet file per committed shard, written atomically.

A shard commits in two steps: its rows go into the zarr arrays, then its catalog row is
written as ``<store>/_catalog/<sample>/shard-NNNNNN.parquet``. The row is written whole
or not at all (a temporary file renamed into place on local disks; a single object PUT on
object stores), so a killed writer leaves either a committed shard or none: readers and
the resume logic trust the catalog alone.

Columns: sample, shard, start, stop, n_jets, n_events, seed, settings_hash, seconds,
created_utc, host, jetscan, pythia8mc, fastjet, zarr.

Derived arrays (``jetscan preprocess``) keep their own catalog per representation,
``<store>/_catalog/<sample>/inputs/<representation>/shard-NNNNNN.parquet`` with
``INPUTS_SCHEMA``; pass ``table="inputs/<representation>"``.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from jetscan.core.errors import StorageError
from jetscan.storage import blobs

__all__ = ["CATALOG_DIR", "CATALOG_SCHEMA", "INPUTS_SCHEMA", "commit_shard", "read_catalog", "committed_shards", "now_utc"]

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


INPUTS_SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("representation", pa.string()),
        ("shard", pa.int64()),
        ("start", pa.int64()),
        ("stop", pa.int64()),
        ("n_jets", pa.int64()),
        ("nbytes_stored", pa.int64()),
        ("settings_hash", pa.string()),
        ("seconds", pa.float64()),
        ("created_utc", pa.string()),
        ("host", pa.string()),
        ("jetscan", pa.string()),
    ]
)


def _schema(table: str) -> pa.Schema:
    return CATALOG_SCHEMA if table == "jets" else INPUTS_SCHEMA


def _dir(table: str) -> str:
    return "" if table == "jets" else f"/{table}"


def commit_shard(store: str, row: dict, *, table: str = "jets") -> None:
    """Atomically record one committed shard (call only after its rows are written)."""
    schema = _schema(table)
    missing = set(schema.names) - set(row)
    if missing:
        raise StorageError(f"catalog row lacks {sorted(missing)}")
    arrow = pa.Table.from_pylist([{k: row[k] for k in schema.names}], schema=schema)
    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    rel = f"{CATALOG_DIR}/{row['sample']}{_dir(table)}/shard-{int(row['shard']):06d}.parquet"
    blobs.write_atomic(store, rel, buf.getvalue())


def read_catalog(store: str, sample: str | None = None, *, table: str = "jets") -> pa.Table:
    """All committed shards (of one sample, or all), sorted by sample and shard."""
    schema = _schema(table)
    fs, base = blobs.store_fs(store)
    pattern = f"{base}/{CATALOG_DIR}/{sample or '*'}{_dir(table)}/shard-*.parquet"
    files = sorted(fs.glob(pattern))
    if not files:
        return schema.empty_table()
    tables = []
    for path in files:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, schema=schema))
    return pa.concat_tables(tables).sort_by([("sample", "ascending"), ("shard", "ascending")])


def committed_shards(store: str, sample: str, *, table: str = "jets") -> set[int]:
    return set(read_catalog(store, sample, table=table).column("shard").to_pylist())


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
