"""Store integrity: read every chunk of every committed shard and check the catalog against it.

A jetscan store protects its bytes twice: every inner chunk is zstd-compressed (a flipped
byte usually breaks decompression) and carries a crc32c checksum (which catches the rest),
and every zarr shard file has a checksummed index. :func:`verify` reads each committed
shard of each array chunk by chunk, so a damaged file is named down to the chunk, and checks
what the catalog claims against the arrays:

- every committed shard has a file per array (a lost object reads silently as fill values,
  so a missing file is a problem in itself);
- the catalog row's ``start``/``stop``/``n_jets`` are the shard's rows in the layout;
- the rows hold jets (``jets/pt > 0``) and the constituents agree with
  ``jets/n_constituents`` (non-padding count = min(n_constituents, max_constituents));
- an inputs shard is committed only where its jets are.

Repair lives in :mod:`jetscan.jobs.verify`: it drops the damaged shards from the catalog
(:func:`drop_shards`) and makes exactly those shards again through the normal generate and
preprocess paths. Seeds derive from (master seed, sample, shard index), so a repaired shard
is bit-identical to the one that was lost.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import zarr

from jetscan.core.errors import StorageError
from jetscan.storage import blobs, catalog, layout

__all__ = ["Problem", "Report", "verify", "drop_shards", "locate_damage", "damage_message"]


@dataclass(frozen=True)
class Problem:
    """One damaged (or inconsistent) shard of one array."""

    sample: str
    table: str  # "jets" (the generated arrays) or "inputs/<representation>"
    shard: int
    kind: str  # "corrupt" | "missing" | "inconsistent"
    detail: str
    array: str | None = None  # e.g. "constituents/pt"
    chunk: int | None = None  # inner chunk index along the jets axis
    path: str | None = None  # the file (object) key inside the store

    def __str__(self) -> str:
        where = f"{self.sample}/{self.array}" if self.array else f"{self.sample} ({self.table})"
        chunk = f", chunk {self.chunk}" if self.chunk is not None else ""
        path = f" [{self.path}]" if self.path else ""
        return f"{self.kind}: {where}, shard {self.shard}{chunk}{path}: {self.detail}"


@dataclass
class Report:
    store: str
    problems: list[Problem] = field(default_factory=list)
    shards_checked: int = 0
    chunks_read: int = 0
    not_generated: dict[str, list[int]] = field(default_factory=dict)  # shards with no catalog row yet

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_shards(self, table: str | None = None) -> dict[str, set[int]]:
        """{sample: shard indices} with a problem (of one table, or of any)."""
        out: dict[str, set[int]] = {}
        for p in self.problems:
            if table is None or p.table == table:
                out.setdefault(p.sample, set()).add(p.shard)
        return out


def _chunk_key(arr: zarr.Array, shard: int) -> str:
    """The store-relative key of the zarr shard file holding jet shard ``shard`` of ``arr``."""
    coords = (shard,) + (0,) * (arr.ndim - 1)
    return f"{arr.path}/{arr.metadata.chunk_key_encoding.encode_chunk_key(coords)}"


def _inner_chunk_jets(arr: zarr.Array) -> int:
    return int(arr.chunks[0])


def locate_damage(arr: zarr.Array, start: int, stop: int) -> list[tuple[int, str]]:
    """(inner chunk index, error) of every chunk of rows [start, stop) that cannot be read."""
    step = _inner_chunk_jets(arr)
    bad = []
    for a in range(start - start % step, stop, step):
        try:
            arr[max(a, start) : min(a + step, stop)]
        except Exception as exc:  # noqa: BLE001 - zstd, crc32c and index errors differ by codec
            bad.append((a // step, _one_line(exc)))
    return bad


def damage_message(store: str, sample: str, array: str, shard: int, chunks: list[tuple[int, str]], path: str) -> str:
    """The one error a reader raises on a damaged chunk: store, array, chunk, shard, and the fix."""
    which = ", ".join(str(c) for c, _ in chunks) or "?"
    why = chunks[0][1] if chunks else "unreadable"
    return (
        f"store {store!r} is damaged: array {sample}/{array}, chunk {which} of shard {shard} "
        f"(file {path}) cannot be read ({why}). Re-running will fail the same way: run "
        f"'jetscan verify {store} --repair --study STUDY.yaml' to regenerate the shard "
        "(bit-identical: its seed derives from the master seed, sample and shard)"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def _table_arrays(group: zarr.Group, table: str) -> list[str]:
    if table == "jets":
        return [*layout.JET_FIELDS, *layout.CONSTITUENT_FIELDS]
    return [table]


def _input_tables(store: str, sample: str, group: zarr.Group) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = group.get("inputs")
        names = sorted(inputs.array_keys()) if inputs is not None else []
    return [f"inputs/{n}" for n in names]


def verify(store: str) -> Report:
    """Read every chunk of every committed shard of ``store`` and check its catalog (see the
    module docstring). Returns a :class:`Report`; raises StorageError only if ``store`` is not
    a jetscan store at all."""
    root = layout.open_root(store)
    fs, base = blobs.store_fs(store)
    report = Report(store=store)
    samples = dict(root.attrs.get("samples", {}))
    for sample in samples:
        try:
            group = layout.open_sample(root, sample)
        except StorageError as exc:
            report.problems.append(Problem(sample, "jets", -1, "missing", str(exc)))
            continue
        n_jets, shard_jets = int(group.attrs["n_jets"]), int(group.attrs["shard_jets"])
        ranges = layout.shard_ranges(n_jets, shard_jets)
        jets_done: set[int] = set()
        for table in ["jets", *_input_tables(store, sample, group)]:
            rows = catalog.read_catalog(store, sample, table=table).to_pylist()
            committed = {int(r["shard"]): r for r in rows}
            if table == "jets":
                jets_done = set(committed)
                missing = sorted(set(range(len(ranges))) - jets_done)
                if missing:
                    report.not_generated[sample] = missing
            for shard, row in sorted(committed.items()):
                report.shards_checked += 1
                report.problems.extend(_check_row(sample, table, shard, row, ranges, jets_done))
                if shard >= len(ranges):
                    continue
                start, stop = ranges[shard]
                read = {}
                for name in _table_arrays(group, table):
                    arr = group[name]
                    key = _chunk_key(arr, shard)
                    if not fs.exists(f"{base}/{key}"):
                        if _may_be_all_fill(group, name, arr):
                            continue  # zarr writes no file for a shard that is all fill value
                        report.problems.append(
                            Problem(sample, table, shard, "missing", "the shard's file is gone", name, None, key)
                        )
                        continue
                    bad = locate_damage(arr, start, stop)
                    report.chunks_read += -(-(stop - start) // _inner_chunk_jets(arr))
                    for chunk, why in bad:
                        report.problems.append(Problem(sample, table, shard, "corrupt", why, name, chunk, key))
                    if not bad and name in ("jets/pt", "jets/n_constituents", "constituents/kind"):
                        read[name] = arr[start:stop]
                report.problems.extend(_check_rows(sample, shard, read))
    return report


def _may_be_all_fill(group: zarr.Group, name: str, arr: zarr.Array) -> bool:
    """Whether a committed shard of ``name`` may legitimately have no file: zarr skips chunks
    equal to the fill value, which happens for ``truth/label`` of a background sample (0)."""
    if name != "truth/label":
        return False
    from jetscan.core.processes import PROCESSES

    process = PROCESSES.get(group.attrs.get("process", ""))
    return process is not None and int(process.is_signal) == int(arr.fill_value)


def _check_row(sample, table, shard, row, ranges, jets_done) -> list[Problem]:
    if shard >= len(ranges):
        return [Problem(sample, table, shard, "inconsistent", f"catalog lists shard {shard} but the sample has {len(ranges)}")]
    start, stop = ranges[shard]
    got = (int(row["start"]), int(row["stop"]), int(row["n_jets"]))
    out = []
    if got != (start, stop, stop - start):
        out.append(
            Problem(sample, table, shard, "inconsistent",
                    f"catalog row says rows {got[0]}-{got[1]} ({got[2]} jets), the layout {start}-{stop} ({stop - start})")
        )
    if table != "jets" and shard not in jets_done:
        out.append(Problem(sample, table, shard, "inconsistent", "inputs committed for a shard whose jets are not"))
    return out


def _check_rows(sample: str, shard: int, read: dict[str, np.ndarray]) -> list[Problem]:
    out = []
    pt = read.get("jets/pt")
    if pt is not None and not (pt > 0).all():
        out.append(Problem(sample, "jets", shard, "inconsistent", f"{int((pt <= 0).sum())} committed jets have no pT", "jets/pt"))
    n, kind = read.get("jets/n_constituents"), read.get("constituents/kind")
    if n is not None and kind is not None:
        filled = (kind >= 0).sum(axis=1)
        wrong = filled != np.minimum(n, kind.shape[1])
        if wrong.any():
            out.append(
                Problem(sample, "jets", shard, "inconsistent",
                        f"{int(wrong.sum())} jets' constituents disagree with jets/n_constituents", "constituents/kind")
            )
    return out


def drop_shards(store: str, problems: list[Problem]) -> None:
    """Make the damaged shards invisible (catalog rows first, then their damaged files), so
    the normal generate / preprocess planning makes them again."""
    fs, base = blobs.store_fs(store)
    seen = set()
    for p in problems:
        if p.shard < 0:
            continue
        rel = f"{catalog.CATALOG_DIR}/{p.sample}{'' if p.table == 'jets' else '/' + p.table}/shard-{p.shard:06d}.parquet"
        if rel not in seen and fs.exists(f"{base}/{rel}"):
            fs.rm(f"{base}/{rel}")
        seen.add(rel)
    for p in problems:
        if p.path and p.kind == "corrupt" and fs.exists(f"{base}/{p.path}"):
            fs.rm(f"{base}/{p.path}")
