"""The evaluation report: PNG plots per run, the HTML page and the CLI table."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from jetscan.core.errors import StorageError
from jetscan.storage import results as res

pytest.importorskip("matplotlib")
pytest.importorskip("mplhep")

_spec = importlib.util.spec_from_file_location("_results_tests", Path(__file__).parents[1] / "storage" / "test_results.py")
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
make_evaluation = _helpers.make_evaluation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("report") / "store.zarr")
    ae = make_evaluation("cnn_ae", n=3000, gluino_shift=3.0)
    tagger = make_evaluation(
        "ms_tagger", n=3000, kind="tagger", history=False, images=False,
        config={"model": "macaluso_shih", "representation": "ms37x4", "lr": 0.3},
    )
    for ev in (ae, tagger):
        res.write_run(path, ev, res.summarise(ev))
    return path


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    from jetscan.jobs.report import write_report

    out = tmp_path_factory.mktemp("html")
    return write_report(store, "quickstart", out)


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2000


def test_plot_run_writes_small_pngs(store, tmp_path):
    from jetscan.jobs.report import plot_run

    paths = plot_run(res.read_run(store, "ms_tagger"), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["mass_sculpting.png", "mass_vs_score.png", "roc.png", "scores.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots" and _is_png(p)
        assert p.stat().st_size < 300_000


def test_report_embeds_every_png_and_the_metrics(report, store):
    from jetscan.jobs.report import display_rows

    out = report.parent
    assert report.name == "index.html"
    text = report.read_text(encoding="utf-8")
    pngs = sorted(out.rglob("*.png"))
    names = {p.relative_to(out).as_posix() for p in pngs}
    assert {"runs/cnn_ae/roc.png", "runs/cnn_ae/images_qcd.png", "runs/cnn_ae/images_top.png",
            "runs/cnn_ae/history.png", "runs/ms_tagger/roc.png"} <= names
    assert "runs/ms_tagger/history.png" not in names
    for p in pngs:
        assert _is_png(p)
        assert f'src="{p.relative_to(out).as_posix()}"' in text
    # every src is relative and nothing is fetched from the network; no scripts
    srcs = re.findall(r'src="([^"]+)"', text)
    assert len(srcs) == len(pngs)
    assert not any(s.startswith(("http:", "https:", "/", "file:")) for s in srcs)
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    # the metrics: every row's formatted numbers are in the page
    table = res.read_results(store)
    headers, rows = display_rows(table)
    assert len(rows) == 3
    for h in ("AUC", "E10", "E100", "accuracy", "JSD 95% rej.", "bottleneck", "representation"):
        assert h in headers
    for row in rows:
        for cell in row:
            assert cell in text
    auc = {(r["run"], r["signal"]): r["auc"] for r in table.to_pylist()}
    assert f"{auc[('cnn_ae', 'top')]:.4f}" in text


def test_metrics_table_for_the_cli(store):
    from rich.console import Console
    from rich.table import Table

    from jetscan.jobs.report import metrics_table

    table = res.read_results(store)
    rich_table = metrics_table(table)
    assert isinstance(rich_table, Table) and rich_table.row_count == 3
    console = Console(record=True, width=260)
    console.print(rich_table)
    printed = console.export_text()
    for r in table.to_pylist():
        assert r["run"] in printed and f"{r['auc']:.4f}" in printed
    # sorted by signal, then AUC (best first)
    lines = [ln for ln in printed.splitlines() if "cnn_ae" in ln or "ms_tagger" in ln]
    assert "gluino" in lines[0]
    aucs = [float(m) for m in re.findall(r"(0\.\d{4}) ±", "\n".join(lines[1:]))]
    assert aucs == sorted(aucs, reverse=True)


def test_report_errors(store, tmp_path):
    from jetscan.jobs.report import write_report

    with pytest.raises(StorageError, match=r"no results of study 'other'.*quickstart"):
        write_report(store, "other", tmp_path / "a")
    with pytest.raises(StorageError, match="no jetscan store"):
        write_report(str(tmp_path / "missing.zarr"), "quickstart", tmp_path / "b")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StorageError, match="no evaluation results"):
        write_report(str(tmp_path / "empty.zarr"), "quickstart", tmp_path / "c")

