"""The report of a study's evaluation: paper-style plots per run, one HTML page, a CLI table.

- :func:`plot_run` draws one run (from :func:`jetscan.storage.results.read_run`) as PNGs:
  ROC curves (eps_S vs 1/eps_B, log y, AUC and its band in the legend), score distributions
  per sample, the background mass shape in score slices (inclusive vs the cuts rejecting
  50/80/95% of the background, JSD in the legend), mean mass in bins of the score, average
  input / reconstruction / |error| images when stored, and the training history when stored.
- :func:`write_report` plots every run of a study and writes ``index.html`` beside the PNGs:
  the metrics table and every run's plots, plain HTML with inline CSS, relative links only
  (no JavaScript, nothing fetched from the network), so the folder can be copied anywhere.
- :func:`metrics_table` renders the summary rows as a ``rich`` table for the CLI.

Plots are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``, no
pyplot figures, never a display; if pyplot is not imported yet the backend is set to Agg,
because mplhep imports pyplot) in mplhep's CMS style scaled down to small figures, inside a
style context so the caller's rcParams are left alone. matplotlib and mplhep are imported on
first use. No experiment label is drawn: these are jetscan plots, not CMS results.
"""

from __future__ import annotations

import html
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from jetscan.core.errors import StorageError
from jetscan.storage import results as res

__all__ = ["plot_run", "write_report", "metrics_table", "display_rows", "KEY_CONFIG_COLUMNS"]

#: config columns shown in the metrics table when any run has them
KEY_CONFIG_COLUMNS = (
    "representation",
    "bottleneck",
    "adv_lambda",
    "contamination_signal",
    "contamination_fraction",
    "n_train_jets",
)
DPI = 100
_STYLE_OVERRIDES = {
    "figure.figsize": (6.4, 5.0),
    "font.size": 13,
    "xtick.major.size": 6,
    "xtick.minor.size": 3,
    "ytick.major.size": 6,
    "ytick.minor.size": 3,
    "legend.fontsize": "x-small",
    "axes.titlesize": "small",
    # fixed margins instead of bbox="tight", which draws every figure twice
    "savefig.bbox": None,
    "figure.subplot.left": 0.15,
    "figure.subplot.right": 0.96,
    "figure.subplot.bottom": 0.13,
    "figure.subplot.top": 0.93,
}


# --------------------------------------------------------------------------------------
# plotting helpers


def mpl_parts():
    """matplotlib pieces and the style, imported on first use (Agg canvas, no pyplot)."""
    try:
        import matplotlib

        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")  # mplhep imports pyplot: make sure it never looks for a display
        import matplotlib.style
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("jetscan.jobs.report needs matplotlib: pip install matplotlib mplhep") from None
    try:
        import mplhep

        style = {**mplhep.style.CMS, **_STYLE_OVERRIDES}
    except ImportError:
        raise ImportError("jetscan.jobs.report needs mplhep: pip install mplhep") from None
    return matplotlib, Figure, FigureCanvasAgg, LogNorm, style


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))


def _save(fig, canvas_cls, path: Path) -> Path:
    canvas_cls(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _row_for(result: dict, signal: str) -> dict:
    for row in result.get("rows", []):
        if row.get("signal") == signal:
            return row
    return {}


def _score_label(kind: str) -> str:
    return "tagger output p(signal)" if kind == "tagger" else "anomaly score (reconstruction loss)"


def _score_bins(arrays: list[np.ndarray], n: int = 60) -> tuple[np.ndarray, bool]:
    """Common bins over all samples (0.05-99.95% quantiles); log-spaced for wide positive scores."""
    allv = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(1)
    if allv.size == 0:
        allv = np.zeros(1)
    lo, hi = np.quantile(allv, [0.0005, 0.9995])
    if lo > 0 and hi / lo > 1e3:
        return np.logspace(np.log10(lo), np.log10(hi), n + 1), True
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1), False


def _ordered(result: dict) -> list[str]:
    """Sample names: background, then signals, then any other stored sample."""
    names = [result["background"], *[s for s in result["signals"] if s != result["background"]]]
    return names + sorted(s for s in result.get("samples", {}) if s not in names)


def plot_roc(result, out, mpl) -> Path:
    _, Figure, Canvas, _, _ = mpl
    fig = Figure()
    ax = fig.add_subplot()
    for sig in result["signals"]:
        curve = result["roc"].get(sig)
        if curve is None:
            continue
        eb, es = np.asarray(curve["eps_b"]), np.asarray(curve["eps_s"])
        ok = eb > 0
        row = _row_for(result, sig)
        label = sig
        if _finite(row.get("auc")):
            label += f": AUC = {row['auc']:.3f}"
            if _finite(row.get("auc_std")):
                label += f" $\\pm$ {row['auc_std']:.3f}"
        ax.plot(es[ok], 1.0 / eb[ok], label=label)
    x = np.linspace(0.01, 1.0, 200)
    ax.plot(x, 1.0 / x, ls="--", color="grey", lw=1, label="random")
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel(r"signal efficiency $\epsilon_S$")
    ax.set_ylabel(r"background rejection $1/\epsilon_B$")
    ax.set_title(f"{result['run']}: {result['background']} vs signals")
    ax.legend(loc="upper right")
    return _save(fig, Canvas, out / "roc.png")


def _plot_scores(result, out, mpl) -> Path:
    _, Figure, Canvas, _, _ = mpl
    samples = result["samples"]
    names = _ordered(result)
    bins, logx = _score_bins([np.asarray(samples[n]["score"], dtype=np.float64) for n in names if n in samples])
    fig = Figure()
    ax = fig.add_subplot()
    for name in names:
        if name not in samples:
            continue
        s = np.asarray(samples[name]["score"], dtype=np.float64)
        h, _ = np.histogram(s, bins=bins, density=True)
        label = f"{name} (background)" if name == result["background"] else name
        ax.stairs(h, bins, label=label, lw=1.5)
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(_score_label(result["kind"]))
    ax.set_ylabel("normalised")
    ax.set_title(result["run"])
    ax.legend()
    return _save(fig, Canvas, out / "scores.png")


def plot_sculpting(result, out, mpl) -> Path:
    _, Figure, Canvas, _, _ = mpl
    mass = result["mass"]
    bins = np.asarray(mass["bins"])
    width = np.diff(bins)
    fig = Figure()
    ax = fig.add_subplot()

    def norm(h):
        h = np.asarray(h, dtype=np.float64)
        return h / h.sum() / width if h.sum() > 0 else h

    ax.stairs(norm(mass["inclusive"]), bins, label=f"all {result['background']}", lw=2, color="black")
    for key, sel in sorted(mass["selections"].items(), key=lambda kv: kv[1].get("rejection", 0)):
        rej = sel.get("rejection", float("nan"))
        keep = sel.get("keep_fraction", float("nan"))
        jsd = sel.get("jsd", float("nan"))
        label = f"reject {100 * rej:.0f}% (keep {100 * keep:.0f}%), JSD = {jsd:.2g}"
        ax.stairs(norm(sel["hist"]), bins, label=label, lw=1.5)
    ax.set_xlabel("jet mass [GeV]")
    ax.set_ylabel("normalised / GeV")
    ax.set_title(f"{result['run']}: {result['background']} mass in score slices")
    ax.legend()
    return _save(fig, Canvas, out / "mass_sculpting.png")


def _plot_mass_vs_score(result, out, mpl) -> Path:
    _, Figure, Canvas, _, _ = mpl
    fig = Figure()
    ax = fig.add_subplot()
    mvs = result["mass_vs_score"]
    names = [n for n in _ordered(result) if n in mvs]
    xs = np.concatenate([np.asarray(mvs[n]["mean_score"], dtype=np.float64) for n in names]) if names else np.zeros(0)
    xs = xs[np.isfinite(xs)]
    logx = bool(xs.size and (xs > 0).all() and xs.max() / xs.min() > 1e2)
    for name in names:
        x, y = np.asarray(mvs[name]["mean_score"]), np.asarray(mvs[name]["mean_mass"])
        ok = np.isfinite(x) & np.isfinite(y)
        label = f"{name} (background)" if name == result["background"] else name
        ax.plot(x[ok], y[ok], marker="o", ms=4, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(f"mean {_score_label(result['kind'])} in score decile")
    ax.set_ylabel("mean jet mass [GeV]")
    ax.set_title(result["run"])
    ax.legend()
    return _save(fig, Canvas, out / "mass_vs_score.png")


def _plot_images(result, out, mpl) -> list[Path]:
    _, Figure, Canvas, LogNorm, _ = mpl
    paths = []
    for name, imgs in (result.get("images") or {}).items():
        fig = Figure(figsize=(13.5, 4.4))
        axes = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.04, right=0.96, bottom=0.12, top=0.86, wspace=0.35)
        titles = {"input": "average input", "reconstruction": "average reconstruction", "error": "|input - reconstruction|"}
        for ax, key in zip(axes, ("input", "reconstruction", "error")):
            img = np.asarray(imgs.get(key, np.zeros((1, 1))), dtype=np.float64)
            vmax = float(np.nanmax(img)) if img.size else 0.0
            if vmax > 0:
                norm = LogNorm(vmin=vmax * 1e-4, vmax=vmax)
                shown = np.where(img > 0, img, np.nan)
            else:
                norm, shown = None, img
            im = ax.imshow(shown, origin="lower", norm=norm, cmap="viridis", interpolation="nearest")
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            cb.ax.minorticks_off()
            ax.set_title(titles[key])
            ax.set_xlabel("pixel")
        fig.suptitle(f"{result['run']}: {name}", fontsize="small")
        paths.append(_save(fig, Canvas, out / f"images_{safe_name(name)}.png"))
    return paths


def _plot_history(result, out, mpl) -> Path | None:
    from matplotlib.ticker import MaxNLocator

    _, Figure, Canvas, _, _ = mpl
    hist = result.get("history") or {}
    curves = {k: np.asarray(v, dtype=np.float64) for k, v in hist.items()
              if k not in ("epoch", "seconds") and np.size(v)}  # losses only: the epochs' wall times are not a loss
    if not curves:
        return None
    fig = Figure()
    ax = fig.add_subplot()
    ys = []
    for key, y in sorted(curves.items()):
        x = np.asarray(hist["epoch"], dtype=np.float64) if "epoch" in hist and len(hist["epoch"]) == len(y) else np.arange(1, len(y) + 1)
        ok = np.isfinite(y)
        ys.append(y[ok])
        ax.plot(x[ok], y[ok], marker="o", ms=3, label=key)
    ys = np.concatenate(ys)
    if ys.size and (ys > 0).all() and ys.max() / ys.min() > 10:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{result['run']}: training history")
    ax.legend()
    return _save(fig, Canvas, out / "history.png")


def plot_run(result: dict, out_dir) -> list[Path]:
    """Draw one run's plots as PNGs into ``out_dir`` (created); returns their paths.

    Files: ``roc.png``, ``scores.png``, ``mass_sculpting.png``, ``mass_vs_score.png``,
    ``images_<sample>.png`` per sample with stored images, ``history.png`` if a history was stored.
    """
    mpl = mpl_parts()
    matplotlib, _, _, _, style = mpl
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.style.context(style):
        paths = [
            plot_roc(result, out, mpl),
            _plot_scores(result, out, mpl),
            plot_sculpting(result, out, mpl),
            _plot_mass_vs_score(result, out, mpl),
        ]
        paths += _plot_images(result, out, mpl)
        h = _plot_history(result, out, mpl)
        if h is not None:
            paths.append(h)
    return paths


# --------------------------------------------------------------------------------------
# the metrics table


def _num(v) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _pm(v, s, fmt: Callable[[float], str]) -> str:
    v, s = _num(v), _num(s)
    if v is None or math.isnan(v):
        return "–"
    text = fmt(v)
    if s is not None and math.isfinite(s):
        text += f" ± {fmt(s)}"
    return text


def _fmt_rejection(x: float) -> str:
    if math.isinf(x):
        return "∞"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _fmt_plain(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.3g}"
    return str(v)


def display_rows(table: pa.Table) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of strings) of the metrics table, sorted by signal, then AUC
    (best first), then run. Used by both the HTML report and :func:`metrics_table`."""
    records = table.to_pylist()
    cols = set(table.column_names)
    config_cols = [c for c in KEY_CONFIG_COLUMNS if c in cols and any(r.get(c) is not None for r in records)]

    def key(r):
        auc = _num(r.get("auc"))
        return (str(r.get("signal")), -(auc if auc is not None and not math.isnan(auc) else -1.0), str(r.get("run")))

    headers = [
        "run",
        "model",
        "signal",
        "AUC",
        "1/εB @ εS=0.3",
        "E10",
        "E100",
        "accuracy",
        "JSD 50% rej.",
        "JSD 80% rej.",
        "JSD 95% rej.",
        *config_cols,
    ]
    rows = []
    for r in sorted(records, key=key):
        rows.append(
            [
                str(r.get("run")),
                str(r.get("model") or r.get("kind") or "–"),
                str(r.get("signal")),
                _pm(r.get("auc"), r.get("auc_std"), lambda x: f"{x:.4f}"),
                _pm(r.get("inv_eb_at_0p3"), r.get("inv_eb_at_0p3_std"), _fmt_rejection),
                _pm(r.get("e10"), r.get("e10_std"), lambda x: f"{x:.3f}"),
                _pm(r.get("e100"), r.get("e100_std"), lambda x: f"{x:.3f}"),
                _pm(r.get("accuracy"), None, lambda x: f"{x:.4f}"),
                *[_pm(r.get(f"jsd_{k}"), None, lambda x: f"{x:.3g}") for k in res.REJECTIONS],
                *[_fmt_plain(r.get(c)) for c in config_cols],
            ]
        )
    return headers, rows


def metrics_table(table: pa.Table, title: str | None = "evaluation results") -> Any:
    """The summary rows (from :func:`jetscan.storage.results.read_results`) as a ``rich.table.Table``."""
    from rich.table import Table

    headers, rows = display_rows(table)
    out = Table(title=title, show_lines=False, header_style="bold")
    numeric_from = 3
    for i, h in enumerate(headers):
        out.add_column(h, justify="right" if i >= numeric_from else "left", no_wrap=i < 3)
    for row in rows:
        out.add_row(*row)
    return out


# --------------------------------------------------------------------------------------
# the HTML report

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
.plots { display: flex; flex-wrap: wrap; gap: 0.5em; }
.plots img { max-width: 480px; height: auto; border: 1px solid #eee; }
.plots img.wide { max-width: 960px; }
.meta { color: #666; font-size: 0.85em; }
details { margin: 0.5em 0; }
"""


def fmt_cell(v) -> str:
    """A table cell: floats to 4 significant digits, NaN and None empty."""
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{v:.4g}"
    return str(v)


def html_table(headers: list[str], rows: list[list[str]], left: int = 3) -> str:
    e = html.escape
    head = "".join(f'<th class="l">{e(h)}</th>' if i < left else f"<th>{e(h)}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(f'<td class="l">{e(c)}</td>' if i < left else f"<td>{e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def write_report(store: str, study_name: str, out_dir) -> Path:
    """Plot every evaluated run of ``study_name`` in ``store`` and write ``<out_dir>/index.html``.

    PNGs go to ``<out_dir>/runs/<run>/`` and are linked relatively. Raises a StorageError if
    the store is missing or holds no results for the study.
    """
    table = res.read_results(store)
    if table.num_rows == 0:
        raise StorageError(f"store {str(store)!r} holds no evaluation results: run the evaluate stage first")
    studies = sorted(set(table.column("study").to_pylist()))
    mask = [s == study_name for s in table.column("study").to_pylist()]
    table = table.filter(pa.array(mask))
    if table.num_rows == 0:
        raise StorageError(
            f"store {str(store)!r} has no results of study {study_name!r}; it has results of: {', '.join(studies)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = sorted(set(table.column("run").to_pylist()))

    e = html.escape
    headers, rows = display_rows(table)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>jetscan report: {e(study_name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>jetscan evaluation report: {e(study_name)}</h1>",
        f'<p class="meta">store {e(str(store))} · {len(runs)} run(s) · written '
        f"{e(datetime.now(timezone.utc).isoformat(timespec='seconds'))}</p>",
        "<h2>Metrics</h2>",
        '<p class="meta">AUC, 1/ε<sub>B</sub> at ε<sub>S</sub> = 0.3, E10 / E100 (ε<sub>S</sub> at ε<sub>B</sub> = 10% / 1%) '
        "on the whole test set ± the spread over 10 independent test subsamples. JSD: Jensen-Shannon divergence "
        "between the background mass shape after a score cut rejecting 50/80/95% of the background and the "
        "inclusive shape (0 = no sculpting, ln 2 = disjoint). Accuracy for taggers only (p(signal) &gt; 0.5).</p>",
        html_table(headers, rows),
    ]
    searches = sorted(out.glob("search-*/index.html"))  # written by jetscan search into the same folder
    if searches:
        parts.append("<h2>Searches</h2><ul>" + "".join(
            f'<li><a href="{quote(p.relative_to(out).as_posix())}">{e(p.parent.name.removeprefix("search-"))}</a></li>'
            for p in searches) + "</ul>")
    scans = sorted(out.glob("scan-*/index.html"))  # written by jetscan scan into the same folder
    if scans:
        parts.append("<h2>Scans</h2><ul>" + "".join(
            f'<li><a href="{quote(p.relative_to(out).as_posix())}">{e(p.parent.name.removeprefix("scan-"))}</a></li>'
            for p in scans) + "</ul>")
    for run in runs:
        result = res.read_run(store, run)
        pngs = plot_run(result, out / "runs" / safe_name(run))
        config_rows = [[str(k), _fmt_plain(v) if isinstance(v, float) else str(v)] for k, v in sorted(result["config"].items())]
        parts.append(f'<h2 id="{e(safe_name(run))}">{e(run)} <span class="meta">({e(result["kind"])}, '
                     f'background {e(result["background"])}, signals {e(", ".join(result["signals"]))})</span></h2>')
        if config_rows:
            parts.append("<details><summary>config</summary>" + html_table(["key", "value"], config_rows, left=2) + "</details>")
        imgs = []
        for p in pngs:
            rel = p.relative_to(out).as_posix()
            cls = ' class="wide"' if p.name.startswith("images_") else ""
            imgs.append(f'<a href="{quote(rel)}"><img src="{quote(rel)}" alt="{e(run)}: {e(p.stem)}"{cls}></a>')
        parts.append('<div class="plots">' + "\n".join(imgs) + "</div>")
    parts.append("</body></html>")
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    tmp.replace(index)
    return index
