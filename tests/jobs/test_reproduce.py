"""jetscan reproduce: the seed-paper presets validate, their reference rows are the papers' numbers,
and a shrunken copy of each preset runs end to end through the command and writes its table."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from jetscan.core.errors import ConfigError
from jetscan.core.reference import REFERENCE
from jetscan.core.study import Study
from jetscan.jobs.reproduce import PRESETS_DIR, load_preset, presets, shrink_study_data

SEED_PHYSICS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "seed-physics.md"
ALL = ["heimel-top", "farina", "heimel-scalar", "heimel-dark", "macaluso-shih", "macaluso-shih-100k"]
METRICS = {"auc", "inv_eb_at_0p3", "e10", "e100", "accuracy"}


def test_every_preset_has_a_study_file_and_reference_rows():
    assert sorted(presets()) == sorted(ALL) == sorted(REFERENCE)


@pytest.mark.parametrize("preset", ALL)
def test_preset_validates_and_its_rows_name_its_runs(preset):
    study = Study.from_yaml(PRESETS_DIR / f"{preset}.yaml")
    assert study.name == preset
    for row in REFERENCE[preset]:
        for run in row["runs"]:
            assert run in study.train.runs, (preset, run)
        assert row["signal"] in study.samples and study.sample(row["signal"]).is_signal
        assert row["metric"] in METRICS
        kind = {study.run(r).model for r in row["runs"]}
        assert len(kind) == 1  # repeats of one model are averaged, never two models
    # every run a reference row needs, and no run nobody compares
    assert {r for row in REFERENCE[preset] for r in row["runs"]} == set(study.train.runs)


@pytest.mark.parametrize("preset", ALL)
def test_shrunken_copy_validates_with_scaled_sizes(preset, tmp_path):
    full = Study.from_yaml(PRESETS_DIR / f"{preset}.yaml")
    small, name = load_preset(preset, shrink=0.001, store=str(tmp_path / "s.zarr"))
    assert name == preset and small.store == str(tmp_path / "s.zarr")
    for s, cfg in full.samples.items():
        assert small.sample(s).n_jets == max(50, round(cfg.n_jets * 0.001))
    for r, cfg in full.train.runs.items():
        assert small.run(r).epochs == max(1, round(cfg.epochs * 0.001))
        if cfg.adversary:
            assert 2 <= small.run(r).adversary.mass_bins <= cfg.adversary.mass_bins
    assert not small.search and not small.scan
    data = shrink_study_data(full.model_dump(mode="json"), 0.5)
    assert data["store"].endswith("-shrink0.5.zarr")  # a shrunken run never writes into the full store


def test_bad_shrink_and_unknown_preset_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"--shrink: a factor in \(0, 1\]"):
        load_preset("farina", shrink=2.0)
    with pytest.raises(ConfigError, match="no preset 'nope'; presets: heimel-top"):
        load_preset("nope")


@pytest.mark.skipif(not SEED_PHYSICS.is_file(), reason=f"{SEED_PHYSICS} is not in this checkout's parent")
def test_reference_values_are_transcribed_from_seed_physics():
    """Every published number of a reference row appears in seed-physics.md (none invented)."""
    text = SEED_PHYSICS.read_text()
    for preset, rows in REFERENCE.items():
        for row in rows:
            v = row["value"]
            if row.get("range"):
                lo, hi = row["range"]
                forms = [f"{lo:.2f}-{hi:.2f}"]
            else:
                forms = [f"{v:g}", f"{v:.2f}", f"{v * 100:.1f}%", f"{v:.3f}"]
            assert any(re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", text) for f in forms), (preset, row["id"], v)


# --------------------------------------------------------------------------------------
# shrunken presets end to end (real Pythia, FastJet, training and evaluation)

#: preset -> (shrink: 50-60 jets per sample, the runs to make: the cheapest models that cover each code path)
SMOKE = {
    "heimel-top": (2.5e-4, None),  # every run: image and LoLa AEs, adversary, 3 % contamination
    "farina": (2.5e-4, ["pca", *[f"dense_ae_{i}" for i in range(1, 6)]]),  # repeats averaged; gluinos
    "heimel-scalar": (3.7e-4, None),
    "heimel-dark": (3.7e-4, None),  # the adversary's 50 mass bins shrink with the sample
    "macaluso-shih": (2.5e-5, None),
    "macaluso-shih-100k": (3e-4, None),
}


@pytest.mark.slow
@pytest.mark.pythia
@pytest.mark.parametrize("preset", list(SMOKE))
def test_shrunken_preset_runs_end_to_end(preset, tmp_path, ray_local):
    from typer.testing import CliRunner

    from jetscan.jobs.cli import app

    shrink, runs = SMOKE[preset]
    out = tmp_path / "results"
    args = ["reproduce", preset, "--shrink", str(shrink), "--workers", "2", "--out", str(out),
            "--store", str(tmp_path / f"{preset}.zarr")]
    for r in runs or []:
        args += ["--run", r]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = (out / f"{preset}.md").read_text()
    assert f"SHRUNK by --shrink {shrink:g}" in table
    comparison = table.split("## Samples")[0]  # the comparison table comes first
    rows = [line for line in comparison.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    expected = [r for r in REFERENCE[preset] if runs is None or set(r["runs"]) <= set(runs)]
    compared = rows
    assert len(compared) == len(expected)
    for line, ref in zip(compared, expected):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == ", ".join(ref["runs"]) and cells[3] == ref["signal"]
        ours = float(cells[7])
        assert math.isfinite(ours) and 0.0 <= ours <= (math.inf if ref["metric"] == "inv_eb_at_0p3" else 1.0)
        assert cells[10] in ("agrees", "differs", "no band")
        assert cells[11].startswith("test ")  # our sample sizes
    # the sample table holds the generated jets
    for sample, cfg in load_preset(preset, shrink=shrink)[0].samples.items():
        assert re.search(rf"\| {sample} \| {cfg.process} \| {cfg.n_jets} \|", table), sample
    pngs = list(out.glob(f"{preset}-*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert all(f"]({p.name})" in table for p in pngs)
    if preset == "macaluso-shih":  # a second call reuses everything: no training, no evaluation
        store = tmp_path / f"{preset}.zarr"
        done = {p: p.stat().st_mtime_ns for p in [*store.glob("_runs/*/checkpoint.pt"), *store.glob("_results/*.parquet")]}
        assert len(done) == 2
        again = CliRunner().invoke(app, args, catch_exceptions=False)
        assert again.exit_code == 0, again.output
        assert {p: p.stat().st_mtime_ns for p in done} == done
        assert (out / f"{preset}.md").read_text().split("## Samples")[0].split("\n")[6:] == comparison.split("\n")[6:]


def _ours(run, signal, value, std, n=(100, 100)):
    return {"run": run, "signal": signal, "auc": value, "auc_std": std, "n_signal": n[0], "n_background": n[1],
            "n_train_jets": 500}


def test_compare_band_pull_verdict():
    from jetscan.jobs.reproduce import compare

    ref = {"id": "x", "runs": ("a",), "signal": "top", "metric": "auc", "value": 0.89, "range": None}
    one = compare(ref, {"a": [_ours("a", "top", 0.85, 0.01), _ours("a", "gluino", 0.5, 0.01)]})
    assert one["ours"] == 0.85 and one["band"] == 0.01
    assert one["pull"] == pytest.approx(-4.0) and one["verdict"] == "differs"
    assert one["our_size"] == "test 100 top + 100 bkg; train 500"
    near = compare(ref, {"a": [_ours("a", "top", 0.875, 0.01)]})
    assert near["pull"] == pytest.approx(-1.5) and near["verdict"] == "agrees"
    # repeated trainings: the mean, the mean band in quadrature with the spread of the runs
    rep = {**ref, "runs": ("a", "b")}
    two = compare(rep, {"a": [_ours("a", "top", 0.80, 0.03)], "b": [_ours("b", "top", 0.84, 0.04)]})
    assert two["ours"] == pytest.approx(0.82)
    assert two["band"] == pytest.approx(math.hypot(math.sqrt((0.03**2 + 0.04**2) / 2), np.std([0.80, 0.84], ddof=1)))
    assert two["our_size"].endswith("2 trainings")
    # a published range: inside it the difference is 0; outside, measured from the nearer edge
    rng = {**ref, "value": 0.785, "range": (0.78, 0.79)}
    assert compare(rng, {"a": [_ours("a", "top", 0.783, 0.01)]})["pull"] == 0.0
    assert compare(rng, {"a": [_ours("a", "top", 0.75, 0.01)]})["pull"] == pytest.approx(-3.0)
    # no results for a run; no band (NaN std)
    assert compare(ref, {})["verdict"] == "not run"
    assert compare(ref, {"a": [_ours("a", "top", 0.8, float("nan"))]})["verdict"] == "no band"
