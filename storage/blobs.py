"""Small files beside the zarr hierarchy (catalog rows, checkpoints), written atomically.

A blob is written whole or not at all: a temporary file renamed into place on local disks
(POSIX rename is atomic), a single object PUT on object stores. Readers never see a torn file.
"""

from __future__ import annotations

import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["store_fs", "write_atomic", "read_blob", "exists", "glob"]


def store_fs(store: str):
    """(filesystem, root path) of a store URL or local path."""
    fs, path = fsspec.core.url_to_fs(store)
    return fs, path.rstrip("/")


def write_atomic(store: str, relpath: str, data: bytes) -> str:
    """Write ``data`` to ``<store>/<relpath>`` atomically; returns the full path."""
    fs, base = store_fs(store)
    final = f"{base}/{relpath}"
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    else:
        fs.pipe_file(final, data)
    return final


def read_blob(store: str, relpath: str) -> bytes:
    fs, base = store_fs(store)
    with fs.open(f"{base}/{relpath}", "rb") as f:
        return f.read()


def exists(store: str, relpath: str) -> bool:
    fs, base = store_fs(store)
    return fs.exists(f"{base}/{relpath}")


def glob(store: str, pattern: str) -> list[str]:
    """Paths relative to the store matching ``pattern`` (sorted)."""
    fs, base = store_fs(store)
    return sorted(p[len(base) + 1 :] if p.startswith(base) else p for p in fs.glob(f"{base}/{pattern}"))
