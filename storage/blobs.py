"""Small files beside the zarr hierarchy (catalog rows, checkpoints), written atomically.

A blob is written whole or not at all: a temporary file renamed into place on local disks
(POSIX rename is atomic), a single object PUT on object stores. Readers never see a torn file.
"""

from __future__ import annotations

import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["store_fs", "use_storage_options", "write_atomic", "read_blob", "exists", "glob"]


def store_fs(store: str):
    """(filesystem, root path) of a store URL or local path."""
    _check_protocol(store)
    fs, path = fsspec.core.url_to_fs(store)
    return fs, path.rstrip("/")


def use_storage_options(store: str, storage_options: dict | None) -> None:
    """Make ``storage_options`` (the study's, e.g. ``{"client_kwargs": {"endpoint_url": ...}}``)
    the defaults of every fsspec filesystem of the store's protocol in this process.

    Every storage function takes the store as a plain string (it travels to Ray workers and
    into error messages), so the options go to fsspec's own per-protocol configuration
    (``fsspec.config.conf``) instead of through every call. Credentials never pass here: they
    come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``...) and are never written into a
    store. A local path ignores the options.
    """
    _check_protocol(store)
    if "://" not in str(store):
        return
    import fsspec.config

    protocol = str(store).split("://", 1)[0]
    cls = fsspec.get_filesystem_class(protocol)
    protos = {protocol, *(cls.protocol if isinstance(cls.protocol, (tuple, list)) else [cls.protocol])}
    for proto in protos:
        if storage_options:
            fsspec.config.conf[proto] = dict(storage_options)
            _APPLIED[proto] = dict(storage_options)
        elif proto in _APPLIED:  # a study without options: drop what an earlier study set here
            if fsspec.config.conf.get(proto) == _APPLIED.pop(proto):
                fsspec.config.conf.pop(proto, None)


# what use_storage_options put into fsspec.config.conf (so a later study without options undoes
# it, leaving any configuration the user keeps in fsspec's own config files alone)
_APPLIED: dict[str, dict] = {}


def _check_protocol(store: str) -> None:
    """A StorageError naming the package to install when the store's protocol has no driver."""
    if "://" not in str(store):
        return
    protocol = str(store).split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        from jetscan.core.errors import StorageError

        package = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        fix = f"pip install {package}" if package else "install the fsspec driver for it"
        raise StorageError(f"store {store!r}: no filesystem for {protocol}:// is installed ({exc}); {fix}") from None
    except ValueError:
        from jetscan.core.errors import StorageError

        raise StorageError(f"store {store!r}: {protocol}:// is not a storage protocol fsspec knows") from None


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
