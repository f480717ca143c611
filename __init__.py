"""jetscan: distributed jet-substructure studies.

Subpackages load on first use, so ``import jetscan`` never starts Ray or imports torch:

- ``jetscan.core``: physics and ML as pure functions on arrays (no I/O)
- ``jetscan.storage``: zarr v3 store layout, shard catalog, remote access
- ``jetscan.jobs``: the pipeline stages and the ``jetscan`` command line
- ``jetscan.cluster``: runners (local, Ray)
- ``jetscan.connect(url, token=...)``: query a study's results from a path, ``s3://`` or a served URL
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jetscan")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = ["core", "storage", "jobs", "cluster", "connect", "__version__"]


def __getattr__(name: str):
    if name in ("core", "storage", "jobs", "cluster"):
        return importlib.import_module(f"jetscan.{name}")
    if name == "connect":  # jetscan.connect(url, token=...): results from a path, s3:// or a served URL
        return importlib.import_module("jetscan.storage.remote").connect
    raise AttributeError(f"module 'jetscan' has no attribute {name!r}")
