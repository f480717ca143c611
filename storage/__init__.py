"""Storage: the zarr v3 store layout and the shard catalog."""

from jetscan.storage.catalog import commit_shard, committed_shards, read_catalog
from jetscan.storage.layout import (
    CONSTITUENT_FIELDS,
    JET_FIELDS,
    create_sample,
    open_root,
    open_sample,
    read_rows,
    shard_ranges,
    write_rows,
)

__all__ = [
    "CONSTITUENT_FIELDS",
    "JET_FIELDS",
    "commit_shard",
    "committed_shards",
    "create_sample",
    "open_root",
    "open_sample",
    "read_catalog",
    "read_rows",
    "shard_ranges",
    "write_rows",
]
