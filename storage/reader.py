"""Reading committed jets back: only rows whose shard the catalog lists are returned."""

from __future__ import annotations

import numpy as np

from jetscan.core.errors import StorageError
from jetscan.storage import catalog, layout

__all__ = ["read_jets", "committed_ranges"]


def committed_ranges(store: str, sample: str) -> list[tuple[int, int]]:
    """[start, stop) row ranges of the committed shards of one sample, in order."""
    table = catalog.read_catalog(store, sample)
    return list(zip(table.column("start").to_pylist(), table.column("stop").to_pylist()))


def read_jets(store: str, sample: str, fields: list[str]) -> dict[str, np.ndarray]:
    """The given arrays (e.g. ``jets/mass``, ``constituents/pt``) over all committed rows."""
    root = layout.open_root(store)
    group = layout.open_sample(root, sample)
    known = set(layout.JET_FIELDS) | set(layout.CONSTITUENT_FIELDS)
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise StorageError(f"unknown field(s) {unknown}; fields are: {', '.join(sorted(known))}")
    ranges = committed_ranges(store, sample)
    out = {}
    for f in fields:
        parts = [group[f][a:b] for a, b in ranges]
        out[f] = np.concatenate(parts) if parts else np.zeros((0,) + group[f].shape[1:], group[f].dtype)
    return out
