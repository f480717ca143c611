"""The zarr v3 layout of a jetscan store.

A store is a directory (local path or fsspec URL such as ``s3://bucket/study.zarr``)
holding one zarr v3 hierarchy plus the shard catalog (:mod:`jetscan.storage.catalog`)::

    <store>/zarr.json                     root group; attrs: jetscan version, study name
    <store>/<sample>/zarr.json            one group per sample; attrs: settings + hash,
                                          process, n_jets, shard_jets
    <store>/<sample>/jets/{pt,eta,phi,mass,sd_mass,tau1,tau2,tau3}   float32 (n_jets,), GeV
    <store>/<sample>/jets/n_constituents  int32 (n_jets,)
    <store>/<sample>/truth/label          int8  (n_jets,)  1 for signal processes, 0 else
    <store>/<sample>/truth/matched        bool  (n_jets,)  truth match (always true for QCD)
    <store>/<sample>/constituents/{pt,eta,phi,e}  float32 (n_jets, max_constituents)
    <store>/<sample>/constituents/kind    int8 (n_jets, max_constituents):
                                          0 track, 1 neutral tower, 2 muon, -1 padding
    <store>/_catalog/<sample>/shard-NNNNNN.parquet   one row per committed shard
    <store>/<sample>/inputs/<representation>  float32 (n_jets, *shape): network inputs made by
                                          ``jetscan preprocess`` (images, LoLa 4-vectors,
                                          jet features); attrs: settings + hash, shape
    <store>/_catalog/<sample>/inputs/<representation>/shard-NNNNNN.parquet

Constituents are **pT-ordered and zero padded** to a fixed maximum: fixed-shape chunks
are what a training loader reads fastest, and the zeros cost almost nothing after zstd.
``jets/n_constituents`` holds the true count (it may exceed the padded width).

Every array is sharded (zarr's sharding codec): one zarr shard = one jetscan shard of
``shard_jets`` jets, split into inner chunks of up to 1000 jets, each zstd-compressed
and crc32c-checksummed. A generation shard therefore writes one file per array.

Rows are meaningful only once the catalog lists their shard: a crashed writer can leave
bytes in a zarr shard but never a catalog row, and readers go through the catalog.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import Buffer
from zarr.core.sync import sync

from jetscan.core.errors import StorageError
from jetscan.storage import shardread

__all__ = [
    "JET_FIELDS",
    "CONSTITUENT_FIELDS",
    "open_root",
    "create_sample",
    "create_inputs",
    "open_sample",
    "write_rows",
    "read_rows",
    "chunk_jets_for",
    "shard_ranges",
]

JET_FIELDS: dict[str, str] = {
    "jets/pt": "float32",
    "jets/eta": "float32",
    "jets/phi": "float32",
    "jets/mass": "float32",
    "jets/sd_mass": "float32",
    "jets/tau1": "float32",
    "jets/tau2": "float32",
    "jets/tau3": "float32",
    "jets/n_constituents": "int32",
    "truth/label": "int8",
    "truth/matched": "bool",
}
CONSTITUENT_FIELDS: dict[str, str] = {
    "constituents/pt": "float32",
    "constituents/eta": "float32",
    "constituents/phi": "float32",
    "constituents/e": "float32",
    "constituents/kind": "int8",
}


def chunk_jets_for(shard_jets: int) -> int:
    """Inner chunk length: up to 1000 jets, dividing the shard exactly."""
    c = math.gcd(shard_jets, 1000)
    return c if c >= 100 else shard_jets


def shard_ranges(n_jets: int, shard_jets: int) -> list[tuple[int, int]]:
    """[start, stop) jet ranges of every shard of a sample (the last may be shorter)."""
    return [(s, min(s + shard_jets, n_jets)) for s in range(0, n_jets, shard_jets)]


def _compressors():
    return [ZstdCodec(level=5), Crc32cCodec()]


def open_root(store: str, *, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """Open the store's root group. ``mode='r'`` raises a StorageError if it is not a store."""
    try:
        return zarr.open_group(store, mode=mode, zarr_format=3, storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError if hasattr(zarr, "errors") else KeyError):
        raise StorageError(
            f"no jetscan store at {store!r}: run 'jetscan generate STUDY.yaml' first, or check the path"
        ) from None


def create_sample(
    root: zarr.Group,
    name: str,
    *,
    n_jets: int,
    shard_jets: int,
    max_constituents: int,
    attrs: dict[str, Any],
) -> zarr.Group:
    """Create a sample group and all its (empty) arrays.

    Arrays of these names stored before are replaced whole (their chunks removed). The
    arrays' metadata is made in memory and written as one concurrent batch: on object stores
    one listing of the sample and one PUT per ``zarr.json``, not zarr's existence checks and
    listings for every array one after the other."""
    group = root.require_group(name)
    objects = _sample_metadata(n_jets=n_jets, shard_jets=shard_jets, max_constituents=max_constituents)
    sync(_replace_arrays(group.store, group.path, objects, [*JET_FIELDS, *CONSTITUENT_FIELDS]))
    group.attrs.update(attrs)
    return group


def _sample_metadata(*, n_jets: int, shard_jets: int, max_constituents: int) -> dict[str, Buffer]:
    """The ``zarr.json`` of every array of a sample and of the groups between, made in an
    in-memory store: {key relative to the sample group: its bytes as a zarr Buffer}."""
    objects: dict[str, Buffer] = {}
    group = zarr.open_group(zarr.storage.MemoryStore(objects), mode="w", zarr_format=3)
    chunk = chunk_jets_for(shard_jets)
    for path, dtype in JET_FIELDS.items():
        group.create_array(
            path,
            shape=(n_jets,),
            dtype=dtype,
            chunks=(chunk,),
            shards=(shard_jets,),
            compressors=_compressors(),
            fill_value=0,
            dimension_names=["jet"],
        )
    for path, dtype in CONSTITUENT_FIELDS.items():
        group.create_array(
            path,
            shape=(n_jets, max_constituents),
            dtype=dtype,
            chunks=(chunk, max_constituents),
            shards=(shard_jets, max_constituents),
            compressors=_compressors(),
            fill_value=-1 if path.endswith("kind") else 0,
            dimension_names=["jet", "constituent"],
        )
    objects.pop("zarr.json")  # the sample group itself: require_group's, with its attrs
    return objects


async def _replace_arrays(store, prefix: str, objects: dict[str, Buffer], arrays: list[str]) -> None:
    """Write ``objects`` below ``prefix`` of ``store``: each array in ``arrays`` replaced whole
    (anything stored under its path before is removed first), a group's ``zarr.json`` written
    only where none is stored (as zarr's ``create_array`` makes missing parent groups)."""
    at = f"{prefix}/"
    stored = {key[len(at) :] async for key in store.list_prefix(prefix) if key.startswith(at)}
    old = [a for a in arrays if any(key.startswith(f"{a}/") for key in stored)]
    await asyncio.gather(*[store.delete_dir(f"{at}{a}") for a in old])
    array_keys = {f"{a}/zarr.json" for a in arrays}
    await asyncio.gather(
        *[store.set(f"{at}{key}", buf) for key, buf in objects.items() if key in array_keys or key not in stored]
    )


def create_inputs(
    group: zarr.Group, name: str, *, shape: tuple[int, ...], shard_jets: int, attrs: dict[str, Any]
) -> zarr.Array:
    """Create ``inputs/<name>`` of a sample: float32 (n_jets, *shape), sharded like the jets.

    Jet images are sparse (10-70 of 1600 pixels lit): zstd over byte-shuffled float32
    squeezes the zeros to a few bytes, so stored bytes scale with lit pixels, not pixels.
    """
    n_jets = group["jets/pt"].shape[0]
    chunk = chunk_jets_for(shard_jets)
    arr = group.create_array(
        f"inputs/{name}",
        shape=(n_jets, *shape),
        dtype="float32",
        chunks=(chunk, *shape),
        shards=(shard_jets, *shape),
        filters=[],
        compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=4), Crc32cCodec()],
        fill_value=0,
        dimension_names=["jet", *[f"axis{i}" for i in range(1, len(shape) + 1)]],
        overwrite=True,
    )
    arr.attrs.update(attrs)
    return arr


def open_sample(root: zarr.Group, name: str) -> zarr.Group:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about the non-zarr _catalog folder
        try:
            group = root[name]
        except KeyError:
            have = sorted(k for k in root.group_keys() if not k.startswith("_"))
            raise StorageError(
                f"store {_store_location(root)!r} has no sample {name!r} (its samples: {', '.join(have) or 'none'}); "
                f"generate it with 'jetscan generate STUDY.yaml --sample {name}', or check the name"
            ) from None
    if not isinstance(group, zarr.Group):
        raise StorageError(f"{name!r} in the store {_store_location(root)!r} is not a sample group")
    return group


def _store_location(group: zarr.Group) -> str:
    """The path (or URL) of the store holding ``group``, as a user would write it."""
    local_root = getattr(group.store, "root", None)  # a LocalStore: its directory
    return str(local_root) if local_root is not None else str(group.store_path)


def write_rows(group: zarr.Group, start: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one shard's rows [start, start + n) of every array of a sample."""
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1:
        raise StorageError(f"arrays of one shard differ in length: {sorted(lengths)}")
    expected = set(JET_FIELDS) | set(CONSTITUENT_FIELDS)
    if set(arrays) != expected:
        raise StorageError(f"shard arrays {sorted(arrays)} do not match the layout {sorted(expected)}")
    (n,) = lengths
    sync(_write_rows(group, slice(start, start + n), arrays))


async def _write_rows(group: zarr.Group, rows: slice, arrays: dict[str, np.ndarray]) -> None:
    """Every array's rows written concurrently (on object stores each array's metadata read and
    shard write are round trips; one after the other they add up); the first error is raised
    once all writes have ended."""

    async def one(path: str, values: np.ndarray) -> None:
        at = f"{group.path}/{path}"
        arr = await zarr.api.asynchronous.open_array(store=group.store, path=at, mode="r+", zarr_format=3)
        await arr.setitem(rows, values)

    outcomes = await asyncio.gather(*[one(p, v) for p, v in arrays.items()], return_exceptions=True)
    errors = [e for e in outcomes if isinstance(e, BaseException)]
    if errors:
        raise errors[0]


def read_rows(group: zarr.Group, fields: list[str], start: int, stop: int) -> dict[str, np.ndarray]:
    """Read rows [start, stop) of the given arrays (no catalog check: see the catalog).

    A chunk that fails its checksum (or decompression) raises one StorageError naming the
    store, the array, the chunk and the shard, and pointing to ``jetscan verify --repair``.
    Arrays on a local disk are read straight from their shard files (:mod:`jetscan.storage.shardread`,
    the same values in about half of zarr's CPU time); what that cannot read goes through zarr."""
    out = {}
    for f in fields:
        arr = group[f]
        got = shardread.read_direct(shardread.reader(arr), slice(start, stop))
        if got is not None:
            out[f] = got
            continue  # else zarr reads it, or raises the error explained below
        try:
            out[f] = arr[start:stop]
        except Exception as exc:  # noqa: BLE001 - zstd, crc32c and shard-index errors differ
            from jetscan.storage import integrity

            shard = start // int(arr.shards[0] if arr.shards else arr.chunks[0])
            chunks = integrity.locate_damage(arr, start, stop) or [(start // int(arr.chunks[0]), integrity._one_line(exc))]
            sample = group.path.split("/")[0]
            raise StorageError(
                integrity.damage_message(
                    _store_location(group), sample, f, shard, chunks, integrity._chunk_key(arr, shard)
                )
            ) from None
    return out
