"""Direct reads of a store's sharded arrays on a local disk: the streaming loader's hot path.

Every jetscan array is one zarr sharding codec over inner chunks of up to 1000 jets, each
compressed (zstd, or blosc-zstd for the inputs) and crc32c-checksummed, with the shard
index at the end of the shard file (:mod:`jetscan.storage.layout`). Reading a 1000-jet
chunk through zarr costs two to three times the decompression itself: zarr runs every read
through its event loop, hands each step (index read, chunk read, each codec) to a thread
and back, and copies the decoded chunk into the output. Measured here on a heimel40 chunk
(6.4 MB decoded): zarr 14-18 ms of CPU, blosc alone 6.7 ms; a jet-level array (label,
mass) 2-4 ms through zarr for a few kB. On 2 cores that decides whether one decode worker
keeps up with a consumer of 50k jets/s (``benchmarks/loader.py``).

:func:`reader` returns a :class:`ShardReader` for an array whose layout it can read
exactly as zarr would, and None for anything else (another store than a local directory,
other codecs, sharding across more than the first axis), which then stays with zarr. The
reader uses the same codec libraries as zarr (numcodecs' Zstd and Blosc, the crc32c
package), checks every checksum, treats a missing shard file or an empty index entry as
the fill value, and decodes straight into the array it returns. A read that fails
(checksum, truncated file, decompression) raises :class:`ShardReadError`, on which the
caller reads the same rows through zarr, so errors and their messages stay zarr's.
"""

from __future__ import annotations

import os
from pathlib import Path

import crc32c as _crc32c
import numpy as np
from numcodecs import Blosc, Zstd
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.storage import LocalStore

__all__ = ["ShardReader", "ShardReadError", "read_direct", "reader"]

_EMPTY = 2**64 - 1  # an index entry (offset, nbytes) of a chunk that holds only the fill value


class ShardReadError(Exception):
    """A shard could not be read directly: read it through zarr instead."""


def reader(arr) -> "ShardReader | None":
    """A direct reader for the zarr array ``arr``, or None if its layout is not one it reads."""
    meta = arr.metadata
    store = arr.store
    if getattr(meta, "zarr_format", None) != 3 or not isinstance(store, LocalStore):
        return None
    if len(meta.codecs) != 1 or not isinstance(meta.codecs[0], ShardingCodec):
        return None
    sharding = meta.codecs[0]
    if sharding.index_location != ShardingCodecIndexLocation.end:
        return None
    if not _is_index_codecs(sharding.index_codecs):
        return None
    decompress = _decompressor(sharding.codecs)
    if decompress is None:
        return None
    shape = tuple(int(n) for n in meta.shape)
    shard_shape = tuple(int(n) for n in meta.chunk_grid.chunk_shape)
    inner_shape = tuple(int(n) for n in sharding.chunk_shape)
    # sharded and chunked along the first axis only, whole rows in every chunk
    if not shape or shard_shape[1:] != shape[1:] or inner_shape[1:] != shape[1:] or shard_shape[0] % inner_shape[0]:
        return None
    dtype = np.dtype(arr.dtype)
    if dtype.hasobject or dtype.itemsize == 0:
        return None
    return ShardReader(
        directory=Path(store.root) / arr.path if arr.path else Path(store.root),
        shape=shape,
        shard_rows=shard_shape[0],
        chunk_rows=inner_shape[0],
        dtype=dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype,
        fill_value=meta.fill_value,
        decompress=decompress,
        key=lambda shard: meta.encode_chunk_key((shard,) + (0,) * (len(shape) - 1)),
    )


def read_direct(direct: "ShardReader | None", rows: slice) -> np.ndarray | None:
    """``rows`` read by ``direct``, or None when there is no reader or it cannot read them
    (the caller then reads them through zarr, which raises the error if there is one)."""
    if direct is None:
        return None
    try:
        return direct.read(rows)
    except ShardReadError:
        return None


def _is_index_codecs(codecs) -> bool:
    return (
        len(codecs) == 2
        and isinstance(codecs[0], BytesCodec)
        and _little(codecs[0])
        and isinstance(codecs[1], Crc32cCodec)
    )


def _little(codec: BytesCodec) -> bool:
    return codec.endian is None or getattr(codec.endian, "value", codec.endian) == "little"


def _decompressor(codecs):
    """bytes (little-endian) -> zstd or blosc -> crc32c, as jetscan's layout writes; else None."""
    if len(codecs) != 3 or not isinstance(codecs[0], BytesCodec) or not _little(codecs[0]):
        return None
    if not isinstance(codecs[2], Crc32cCodec):
        return None
    if isinstance(codecs[1], ZstdCodec):
        return Zstd().decode
    if isinstance(codecs[1], BloscCodec):
        return Blosc().decode  # blosc's header says how it was compressed
    return None


class ShardReader:
    """Rows of one array read from its shard files (see the module docstring)."""

    def __init__(self, *, directory: Path, shape, shard_rows, chunk_rows, dtype, fill_value, decompress, key):
        self.directory = directory
        self.shape = shape
        self.shard_rows, self.chunk_rows = shard_rows, chunk_rows
        self.chunks_per_shard = shard_rows // chunk_rows
        self.dtype = dtype
        self.fill_value = fill_value
        self._decompress = decompress
        self._key = key

    def read(self, rows: slice) -> np.ndarray:
        """``arr[rows]`` (a slice with step 1) as a new array."""
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("ShardReader.read takes a slice with step 1")
        stop = max(start, stop)
        c0, c1 = start // self.chunk_rows, -(-stop // self.chunk_rows)
        if c1 - c0 == 1 and start == c0 * self.chunk_rows and stop - start == self.chunk_rows:
            return self._chunk(c0)  # one whole chunk: decoded in place, no copy
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        for c in range(c0, c1):
            lo, hi = max(start, c * self.chunk_rows), min(stop, (c + 1) * self.chunk_rows)
            chunk = self._chunk(c)
            out[lo - start : hi - start] = chunk[lo - c * self.chunk_rows : hi - c * self.chunk_rows]
        return out

    def _chunk(self, c: int) -> np.ndarray:
        """Inner chunk ``c`` of the array, whole (a chunk at the array's end is stored padded)."""
        out = np.empty((self.chunk_rows, *self.shape[1:]), self.dtype)
        shard, inner = divmod(c, self.chunks_per_shard)
        path = self.directory / self._key(shard)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            out[...] = self.fill_value  # no shard file: every chunk of it is the fill value
            return out
        except OSError as exc:
            raise ShardReadError(f"{path}: {exc}") from exc
        try:
            n_index = 16 * self.chunks_per_shard + 4
            size = os.fstat(fd).st_size
            if size < n_index:
                raise ShardReadError(f"{path}: {size} bytes, shorter than its index")
            index = os.pread(fd, n_index, size - n_index)
            if len(index) != n_index or _crc32c.crc32c(index[:-4]) != int.from_bytes(index[-4:], "little"):
                raise ShardReadError(f"{path}: shard index fails its checksum")
            offset, nbytes = (int(v) for v in np.frombuffer(index, "<u8", count=2, offset=16 * inner))
            if offset == _EMPTY and nbytes == _EMPTY:
                out[...] = self.fill_value
                return out
            if nbytes < 4 or offset + nbytes > size - n_index:
                raise ShardReadError(f"{path}: index entry {inner} ({offset}, {nbytes}) out of the file")
            raw = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        body = memoryview(raw)[:-4]
        if len(raw) != nbytes or _crc32c.crc32c(body) != int.from_bytes(raw[-4:], "little"):
            raise ShardReadError(f"{path}: chunk {inner} fails its checksum")
        try:
            self._decompress(body, out=out)
        except Exception as exc:  # noqa: BLE001 - zstd and blosc raise their own types
            raise ShardReadError(f"{path}: chunk {inner}: {exc}") from exc
        return out
