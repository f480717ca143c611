"""The scan's tidy table from stored cell rows (no Pythia, no training: parquet rows written here)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from jetscan.jobs.scan import AXIS_COLUMNS, aggregate_table

METRICS = ["n_background", "n_signal", "auc", "auc_std", "inv_eb_at_0p3", "inv_eb_at_0p3_std", "e10", "e10_std",
           "e100", "e100_std", "jsd_50", "jsd_80", "jsd_95", "fpr_at_cut", "best_val_loss"]


def _cell_rows(store, cell: str, test_variant: str, background: str, signals: list[str]) -> None:
    rows = [{**{c: None for c in AXIS_COLUMNS}, "scan": "s", "cell": cell, "training": "t", "model": "pca",
             "fraction": 0.0, "repeat": 0, "train_variant": "nominal", "test_variant": test_variant, "run": cell,
             "signal": sig, "background": background, **{m: 0.5 for m in METRICS}} for sig in signals]
    (store / "_results").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(store / "_results" / f"{cell}.parquet")


def test_signal_names_holding_the_variant_separator_keep_their_name(tmp_path):
    store = tmp_path / "s.zarr"
    _cell_rows(store, "nom", "nominal", "qcd", ["top__had", "w__lep__x"])
    _cell_rows(store, "var", "x", "qcd__x", ["top__had__x", "w__lep__x__x"])
    table = aggregate_table(SimpleNamespace(store=str(store), storage_options={}), ["nom", "var"], [])
    got = sorted(zip(table["cell"], table["signal"], table["signal_variant"]))
    assert got == [("nom", "top__had", "top__had"), ("nom", "w__lep__x", "w__lep__x"),
                   ("var", "top__had", "top__had__x"), ("var", "w__lep__x", "w__lep__x__x")]
