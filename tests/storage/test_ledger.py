"""The results ledger beside a reproduction table (jetscan.storage.ledger): what it keeps, that a
stale entry is never used, and that a damaged or foreign file is one clear error that loses nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jetscan.core.errors import ConfigError
from jetscan.storage import ledger


def _rows():
    return [{"run": "a", "signal": "top", "auc": np.float64(0.9), "auc_std": float("nan"), "n_signal": np.int64(100),
             "e100": float("inf")}]


def test_round_trip_keeps_values_nan_and_inf(tmp_path):
    led = ledger.empty("heimel-top")
    ledger.record(led, "a", "k1", _rows(), cost={"run": "a", "seconds": 3.0}, notes={"top": "n"}, store="s.zarr")
    path = ledger.write(tmp_path / "heimel-top.json", led)
    back = ledger.read(path, "heimel-top")
    entry = ledger.matching_entry(back, "a", "k1")
    row = entry["rows"][0]
    assert row["auc"] == 0.9 and row["n_signal"] == 100 and math.isnan(row["auc_std"]) and row["e100"] == math.inf
    assert entry["cost"] == {"run": "a", "seconds": 3.0} and entry["notes"] == {"top": "n"}
    assert entry["store"] == "s.zarr" and entry["source"] == "store" and entry["made_utc"].startswith("20")
    assert ledger.same_rows(entry["rows"], _rows())
    assert not ledger.same_rows(entry["rows"], [{**_rows()[0], "auc": 0.91}])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))  # written whole, nothing left
    (tmp_path / "table.md").write_text("x")  # the ledger gets a plain file's permissions, as the table beside it
    assert path.stat().st_mode == (tmp_path / "table.md").stat().st_mode


def test_an_entry_made_with_other_settings_is_not_used(tmp_path):
    led = ledger.empty("p")
    ledger.record(led, "a", "k1", _rows(), cost=None, notes=None, store="s.zarr")
    assert ledger.matching_entry(led, "a", "k2") is None
    assert ledger.matching_entry(led, "b", "k1") is None
    assert ledger.matching_entry(ledger.read(tmp_path / "none.json", "p"), "a", "k1") is None  # no file: empty


def test_damaged_or_foreign_ledger_is_one_clear_error_and_is_kept(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"p\.json: not a readable results ledger.*git checkout -- "):
        ledger.read(bad, "p")
    assert bad.read_text() == "{not json"
    other = ledger.write(tmp_path / "q.json", ledger.empty("farina"))
    with pytest.raises(ConfigError, match=r"ledger of preset 'farina', not 'heimel-top'.*--out"):
        ledger.read(other, "heimel-top")
    (tmp_path / "r.json").write_text('{"format": 99, "runs": {}}')
    with pytest.raises(ConfigError, match="not a results ledger of format 1"):
        ledger.read(tmp_path / "r.json", "p")


def test_revision_names_the_commit():
    rev = ledger.code_revision()
    assert rev == "unknown" or len(rev.removesuffix("-dirty")) >= 7
