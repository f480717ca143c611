"""The results ledger: a reproduction table's result rows and costs, kept beside the table.

``jetscan reproduce PRESET`` writes ``<out>/<PRESET>.json`` next to ``<out>/<PRESET>.md``. The
table needs the store that holds the runs' results, and a preset at paper size costs more
than one machine session (heimel-top: about 2.4 h on 2 cores), so stores get lost between the
sessions that build a table run by run, and a table made on a cluster may be regenerated on
a laptop without the store. The ledger is what carries a run's place in the table without
its store: for every run whose results a store held when the table was written, its summary
rows (as :func:`jetscan.storage.results.summarise` made them), the training cost from its
checkpoint, and where and when it was made. A later ``jetscan reproduce`` without that run in
its store uses the entry **only if its key matches** the run's current key (a hash of the
run's settings and of every sample's generation settings): a changed run, sample or split
makes the entry stale and the run is made again. The table marks carried rows as such.

Layout::

    {"format": 1, "preset": "heimel-top",
     "runs": {"<run>": {"key": "<hash>", "rows": [...], "cost": {...} | null, "notes": {"<signal>": "..."},
                        "made_utc": "2026-12-02T15:00:00+00:00", "revision": "abc1234" | "abc1234-dirty",
                        "store": "heimel-top.zarr", "source": "store" | "<how a bootstrapped entry was read>"}}}

``made_utc`` is when the run was evaluated; ``revision`` the checkout that wrote the entry
(the run's code, unless an earlier invocation on the same store made it).

The file is written whole and atomically (a temporary file renamed into place), with sorted
keys and one value per line, so its diff in a commit shows what changed. Non-finite floats
are written as JSON's ``NaN`` / ``Infinity`` extensions, which :mod:`json` reads back.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from jetscan.core.errors import ConfigError
from jetscan.storage.catalog import now_utc

__all__ = ["FORMAT", "empty", "read", "write", "matching_entry", "same_rows", "record", "code_revision"]

FORMAT = 1
_REPO = Path(__file__).resolve().parent.parent


def empty(preset: str) -> dict:
    return {"format": FORMAT, "preset": preset, "runs": {}}


def read(path: str | Path, preset: str) -> dict:
    """The ledger at ``path`` (an empty one if there is no file). A file that is not a
    ledger of ``preset`` is one clear error naming it and the fix; nothing is overwritten."""
    path = Path(path)
    if not path.is_file():
        return empty(preset)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable results ledger ({e}); restore it from git "
                          f"(git checkout -- {path}) or move it away to start a new one") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("runs"), dict):
        raise ConfigError(f"{path}: not a results ledger of format {FORMAT}; restore it from git or move it away")
    if data.get("preset") != preset:
        raise ConfigError(f"{path}: the ledger of preset {data.get('preset')!r}, not {preset!r}; "
                          f"write this preset's table to another folder (--out)")
    return data


def _plain(v: Any) -> Any:
    """JSON-ready: numpy scalars to Python, anything else to its text."""
    if hasattr(v, "item"):
        try:
            return v.item()
        except (TypeError, ValueError):
            pass
    return str(v)


def write(path: str | Path, ledger: dict) -> Path:
    """Write ``ledger`` to ``path`` atomically; returns the path."""
    from jetscan.storage import blobs

    path = Path(path)
    text = json.dumps(ledger, indent=1, sort_keys=True, default=_plain) + "\n"
    blobs.write_atomic(str(path.parent), path.name, text.encode())
    return path


def matching_entry(ledger: dict, run: str, key: str) -> dict | None:
    """The run's entry if it was made with the settings ``key`` stands for, else None."""
    entry = ledger["runs"].get(run)
    if entry is None or entry.get("key") != key or not entry.get("rows"):
        return None
    return entry


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Whether two lists of rows write the same JSON (NaN equals NaN here)."""
    def text(rows):
        return json.dumps(rows, sort_keys=True, default=_plain)

    return text(a) == text(b)


def record(ledger: dict, run: str, key: str, rows: list[dict], *, cost: dict | None, notes: dict | None,
           store: str, source: str = "store", made_utc: str | None = None, revision: str | None = None) -> None:
    """Put (or replace) the run's entry."""
    ledger["runs"][run] = {
        "key": key,
        "rows": [dict(r) for r in rows],
        "cost": cost,
        "notes": notes or {},
        "made_utc": made_utc or now_utc(),
        "revision": revision or code_revision(),
        "store": store,
        "source": source,
    }


def code_revision() -> str:
    """The checkout's short commit, ``-dirty`` when tracked files outside ``docs/results``
    differ from it (the ledger and tables themselves change as they are written), or
    ``unknown`` outside a git checkout."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=_REPO, check=False)

    try:
        head = git("rev-parse", "--short", "HEAD")
        status = git("status", "--porcelain=v1", "--untracked-files=no", "--", ".", ":(exclude)docs/results")
    except OSError:
        return "unknown"
    if head.returncode != 0 or status.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
