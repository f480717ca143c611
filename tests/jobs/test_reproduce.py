"""jetscan reproduce: the seed-paper presets validate, their reference rows are the papers' numbers,
and a shrunken copy of each preset runs end to end through the command and writes its table."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from jetscan.cluster.devices import cpu_has_bf16
from jetscan.core.errors import ConfigError
from jetscan.core.reference import REFERENCE, SIZE_SCAN
from jetscan.core.study import Study
from jetscan.jobs.reproduce import BUMP_METRICS, PRESETS_DIR, load_preset, presets, shrink_study_data

SEED_PHYSICS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "seed-physics.md"
ALL = ["heimel-top", "farina", "heimel-scalar", "heimel-dark", "macaluso-shih", "macaluso-shih-100k"]
METRICS = {"auc", "inv_eb_at_0p3", "e10", "e100", "accuracy", "s_over_b_before", "s_over_b_after"}


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
    # every run a reference row or the training-size scan needs, and no run nobody compares
    scan = SIZE_SCAN.get(preset, {}).get("runs", ())
    assert all(r in study.train.runs for r in scan)
    assert {r for row in REFERENCE[preset] for r in row["runs"]} | set(scan) == set(study.train.runs)


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
                forms = [f"{v:g}", f"{v:.2f}", f"{v * 100:.1f}%", f"{v:.3f}", f"{v * 100:g}%"]
            assert any(re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", text) for f in forms), (preset, row["id"], v)


# --------------------------------------------------------------------------------------
# shrunken presets end to end (real Pythia, FastJet, training and evaluation)

#: preset -> (shrink: 50-60 jets per sample, the runs to make: the cheapest models that cover each code path)
SMOKE = {
    "heimel-top": (2.5e-4, None),  # every run: image and LoLa AEs, adversary, 3 % contamination
    # repeats averaged; gluinos; the bump-hunt run (its own 1e-3 gluino contamination)
    "farina": (2.5e-4, ["pca", *[f"dense_ae_{i}" for i in range(1, 6)], "dense_ae_bump", "cnn_ae_20k"]),
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
    amp_cpu = load_preset(preset, shrink=shrink)[0].train.amp_cpu  # macaluso-shih-100k: bfloat16 training steps
    if amp_cpu and not cpu_has_bf16():
        pytest.skip(f"{preset} sets train.amp_cpu, which this CPU (no bfloat16 units) refuses")
    out = tmp_path / "results"
    args = ["reproduce", preset, "--shrink", str(shrink), "--workers", "2", "--out", str(out),
            "--store", str(tmp_path / f"{preset}.zarr")]
    for r in runs or []:
        args += ["--run", r]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if preset.startswith("macaluso-shih"):  # a line per finished epoch (a full-size run takes hours)
        assert re.search(rf"{preset}: tagger epoch 1/1: train loss [\d.e+-]+, val loss [\d.e+-]+ \(\d+ s\)", result.output)
    assert f"table: {out / f'{preset}.md'} (" in result.output  # one line, however long (a log file is not 80 columns)
    table = (out / f"{preset}.md").read_text()
    assert f"SHRUNK by --shrink {shrink:g}" in table
    comparison = table.split("## Samples")[0]  # the comparison table comes first
    rows = [line for line in comparison.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    # every reference row has its line; those of runs not asked for (and not made before) say so
    assert len(rows) == len(REFERENCE[preset])
    compared = []
    for line, ref in zip(rows, REFERENCE[preset]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == ", ".join(ref["runs"]) and cells[3] == ref["signal"]
        if runs is not None and not set(ref["runs"]) <= set(runs):
            assert cells[10] == "not run" and cells[7] == "-", cells
            continue
        compared.append(line)
    for line, ref in zip(compared, [r for r in REFERENCE[preset] if runs is None or set(r["runs"]) <= set(runs)]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        if ref["metric"] in BUMP_METRICS:  # ~25 test QCD jets + 1 gluino: the table says what it could do, and why
            assert re.search(r"test 'data': all \d+ test qcd \+ 1 of the \d+ test gluino jets", cells[12]), cells[12]
            assert "no bump hunt" in cells[12] or "window" in cells[12], cells[12]
            assert re.match(r"test 1 gluino \+ \d+ bkg; train \d+", cells[11]), cells[11]
            assert cells[7] == "-" or float(cells[7]) >= 0.0
            continue
        ours = float(cells[7])
        assert math.isfinite(ours) and 0.0 <= ours <= (math.inf if ref["metric"] == "inv_eb_at_0p3" else 1.0)
        assert cells[10] in ("agrees", "differs", "no band")
        assert cells[11].startswith("test ")  # our sample sizes
        if ref["metric"] == "auc":  # the jet mass alone on the same stored test jets, as scikit-learn scores it
            got = re.search(r"the jet mass alone as the score, same test jets: AUC ([\d.]+)", cells[12])
            assert got, cells[12]
            assert float(got.group(1)) == pytest.approx(_mass_auc(tmp_path / f"{preset}.zarr", ref["runs"][0], ref["signal"]), abs=6e-4)
    # the sample table holds the generated jets
    for sample, cfg in load_preset(preset, shrink=shrink)[0].samples.items():
        assert re.search(rf"\| {sample} \| {cfg.process} \| {cfg.n_jets} \|", table), sample
    pngs = list(out.glob(f"{preset}-*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert all(f"]({p.name})" in table for p in pngs)
    # the cost sections: every sample's generation and every trained run, from what the store recorded
    trained = runs or [r for ref in REFERENCE[preset] for r in ref["runs"]]
    mark = r" \(bfloat16\)" if amp_cpu else ""  # the runs trained under bfloat16 autocast say so, and the note explains it
    for run in dict.fromkeys(trained):
        assert re.search(rf"\| {run}{mark} \| \d+ \| ([\d.e+-]+|-) \| \d+ \| \d+ \| \d+ \| 1 \|", table), run
    assert ("Runs marked (bfloat16) took their training steps under bfloat16 autocast" in table) == amp_cpu
    for sample in load_preset(preset, shrink=shrink)[0].samples:
        assert re.search(rf"\| {sample} \| \d+ \| \d+ \| \d+ \| \d+\.\d \|", table), sample
    if preset == "farina":  # the loss-vs-mass figure: the mean QCD test mass in ten equal-population loss bins
        from jetscan.storage import results

        section = table.split("## Loss and jet mass")[1].split("\n## ")[0]
        for run in ("pca", "dense_ae_1"):
            stored = results.read_run(str(tmp_path / f"{preset}.zarr"), run)
            qcd, edges = stored["samples"]["qcd"], np.quantile(stored["samples"]["qcd"]["score"], np.linspace(0, 1, 11))
            inside = [(qcd["score"] >= lo) & ((qcd["score"] < hi) | (i == 9)) for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]
            means = [float(np.mean(qcd["mass"][m])) if m.any() else math.nan for m in inside]
            line = next(x for x in section.splitlines() if x.startswith(f"| {run} |"))
            got = [float(c) if c.strip() != "-" else math.nan for c in line.strip(" |").split("|")[1:]]
            assert got == pytest.approx(means, rel=5e-3, nan_ok=True), line
        assert "No results in this store for cnn_ae_1" in section and "| cnn_ae_20k |" in section
        # cnn_ae_20k's max_train_jets (20000, shrunk to 10): its rows and its cost line give that training size
        subset_rows = [line for line in rows if "| cnn_ae_20k |" in line]
        assert len(subset_rows) == 4 and all("; train 10 |" in line for line in subset_rows), subset_rows
        assert re.search(r"\| cnn_ae_20k \| \d+ \| [\d.e+-]+ \| \d+ \| \d+ \| 10 \| 1 \|", table)
        assert (out / "farina-mass-vs-loss.png").stat().st_size > 1000 and "(farina-mass-vs-loss.png)" in table
        # the training-size section: cnn_ae_20k (shrunk to 10 jets) is there; the smaller subsets were not asked for
        sizes = table.split("## Training size")[1].split("\n## ")[0]
        assert re.search(r"\| cnn_ae_20k \| 10 \| \d+ \| \d+ \| [\d.e+-]+ ± ", sizes), sizes
        assert "No results for cnn_ae_5k, cnn_ae_10k (not run yet)." in sizes
    if preset == "macaluso-shih":  # a second call reuses everything: no training, no evaluation
        store = tmp_path / f"{preset}.zarr"
        done = {p: p.stat().st_mtime_ns for p in [*store.glob("_runs/*/checkpoint.pt"), *store.glob("_results/*.parquet")]}
        assert len(done) == 2
        again = CliRunner().invoke(app, args, catch_exceptions=False)
        assert again.exit_code == 0, again.output
        assert {p: p.stat().st_mtime_ns for p in done} == done
        assert (out / f"{preset}.md").read_text().split("## Samples")[0].split("\n")[6:] == comparison.split("\n")[6:]
        # a call on another store (the first one lost, as between machines) carries both runs from the
        # ledger beside the table: nothing trained, the same numbers, and the table says where they come from
        other = tmp_path / "other.zarr"
        third = CliRunner().invoke(app, [*args[:-1], str(other)], catch_exceptions=False)
        assert third.exit_code == 0, third.output
        assert not list(other.glob("_runs/*/checkpoint.pt")) and not list(other.glob("_results/*.parquet"))
        carried = (out / f"{preset}.md").read_text().split("## Samples")[0]
        lines = [x for x in carried.splitlines() if x.startswith("| ") and not x.startswith("| figure")]
        assert [x.split("|")[8:10] for x in lines] == [x.split("|")[8:10] for x in rows]  # ours and band
        assert all("carried from the ledger" in x for x in lines)
        # the mass baseline is read from the regenerated samples' test split: the same jets, the same AUC
        note = r"the jet mass alone as the score, same test jets: AUC [\d.]+"
        assert [re.findall(note, x) for x in lines] == [re.findall(note, x) for x in rows]
        assert sum(len(re.findall(note, x)) for x in lines) == sum(r["metric"] == "auc" for r in REFERENCE[preset]) > 0
        assert "(carried)" in (out / f"{preset}.md").read_text()
        assert {p.name for p in out.glob("*.json")} == {f"{preset}-shrink{shrink:g}.json"}  # never the full-size ledger


@pytest.mark.slow
@pytest.mark.pythia
def test_a_stop_request_ends_the_call_after_the_epoch_and_the_next_call_resumes(tmp_path, monkeypatch):
    """A preset's run trains for hours over several calls: JETSCAN_STOP_SIGNALS's signal ends the call
    after the epoch in progress (checkpoint written, no table, exit 75), and the next call goes on from it."""
    import torch
    import yaml
    from typer.testing import CliRunner

    from jetscan.cluster import preempt
    from jetscan.jobs.cli import app
    from jetscan.jobs.reproduce import preset_path, reproduce
    from jetscan.jobs.train import checkpoint_path

    data = shrink_study_data(Study.from_yaml(preset_path("macaluso-shih-100k")).model_dump(mode="json"), 3e-4)
    data["train"]["runs"]["tagger"].update(epochs=2, patience=2)
    data["train"]["amp_cpu"] = False  # any CPU
    data["store"] = str(tmp_path / "ms.zarr")
    study_file = tmp_path / "ms-stop.yaml"
    study_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "results"
    monkeypatch.setattr(preempt, "from_env", lambda environ=None: (lambda: True))  # as if the signal had arrived
    first = CliRunner().invoke(app, ["reproduce", str(study_file), "--no-ray", "--out", str(out)], catch_exceptions=False)
    assert first.exit_code == preempt.PREEMPTED_EXIT, first.output
    assert "ms-stop: tagger epoch 1/2: " in first.output
    assert "ms-stop: tagger stopped on request after epoch 1 (checkpoint written); the next call resumes it" in first.output
    assert "epoch 2/2" not in first.output and not (out / "ms-stop.md").exists()
    checkpoint = tmp_path / "ms.zarr" / checkpoint_path("tagger")
    assert len(torch.load(checkpoint, weights_only=False)["history"]["epoch"]) == 1
    lines: list[str] = []
    second = reproduce(study_file, out_dir=out, use_ray=False, echo=lines.append)
    assert "preempted" not in second and (out / "ms-stop.md").is_file()
    assert [x.split(":")[1].strip() for x in lines if ": tagger epoch " in x] == ["tagger epoch 2/2"]
    assert len(torch.load(checkpoint, weights_only=False)["history"]["epoch"]) == 2


def _mass_auc(store: Path, run: str, signal: str) -> float:
    from sklearn.metrics import roc_auc_score

    from jetscan.storage import results

    stored = results.read_run(str(store), run)
    b, s = stored["samples"][stored["background"]]["mass"], stored["samples"][signal]["mass"]
    return float(roc_auc_score(np.r_[np.zeros(len(b)), np.ones(len(s))], np.r_[b, s]))


def _ours(run, signal, value, std, n=(100, 100)):
    return {"run": run, "signal": signal, "auc": value, "auc_std": std, "n_signal": n[0], "n_background": n[1],
            "n_train_jets": 500}


def test_the_samples_section_counts_the_jets_each_split_holds(monkeypatch):
    """macaluso-shih-100k's 166667 jets per sample split 100000 / 33333 / 33334; the table said
    test 33333 (every share rounded on its own) beside its rows' 33334 test jets."""
    import pyarrow as pa

    from jetscan.jobs import reproduce
    from jetscan.storage import catalog
    from jetscan.storage.loader import split_assignment

    study = load_preset("macaluso-shih-100k")[0]
    monkeypatch.setattr(catalog, "read_catalog", lambda store, name: pa.table({"n_jets": [83333, 83334]}))
    sizes = reproduce._split_sizes(study)
    for name in study.samples:
        held = np.bincount(split_assignment(166667, study.split_fractions(name), study.seed, name), minlength=3)
        assert [sizes[name][k] for k in ("jets", "train", "val", "test")] == [166667, *held.tolist()]
        assert sizes[name]["test"] == 33334


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
    # a quoted value stands for its rounding interval: 0.89 for 0.885-0.895
    quoted = {**ref, "rounding": 0.005}
    assert compare(quoted, {"a": [_ours("a", "top", 0.893, 0.001)]})["pull"] == 0.0
    assert compare(quoted, {"a": [_ours("a", "top", 0.899, 0.001)]})["pull"] == pytest.approx(4.0)
    # Heimel's rows show our background mass sculpting (the mean over the runs), when the rows hold it
    jsd = {"jsd_50": 0.02, "jsd_80": 0.04, "jsd_95": 0.08}
    sculpt = {**rep, "sculpting": True}
    both = compare(sculpt, {"a": [{**_ours("a", "top", 0.80, 0.03), **jsd}],
                            "b": [{**_ours("b", "top", 0.84, 0.04), **jsd, "jsd_95": 0.10}]})
    assert both["sculpting_note"] == "background mass JSD, least background-like 50 / 20 / 5 %: 0.020 / 0.040 / 0.090"
    no_jsd = compare(sculpt, {"a": [_ours("a", "top", 0.8, 0.01)], "b": [_ours("b", "top", 0.8, 0.01)]})
    assert no_jsd["sculpting_note"] == ""
    assert "sculpting_note" not in one and "sculpting_note" not in compare(sculpt, {})  # a row not run has none
    # the notes a table row gets: the reference's and the sculpting; a Heimel row not run keeps only the reference's
    from jetscan.jobs.reproduce import _with_notes

    assert _with_notes({**both, "note": "n"}, {}, {})["note"] == f"n; {both['sculpting_note']}"
    assert _with_notes({**compare(sculpt, {}), "note": "n"}, {}, {})["note"] == "n"
    # a run whose best epoch was its last (0-based best_epoch) was ended by its epoch budget: the row says so;
    # one ended by early stopping, or a one-epoch fit (PCA), does not
    cost = lambda run, n, best: {"run": run, "epochs_run": n, "best_epoch": best}  # noqa: E731
    note = _with_notes({**both, "note": "n"}, {}, {}, [cost("a", 8, 7), cost("b", 8, 7)])["note"]
    assert note.endswith("2 of the 2 runs still improving at their last epoch: the epoch budget, not early stopping, "
                         "ended them")
    one_run = compare(ref, {"a": [_ours("a", "top", 0.8, 0.01)]})
    assert "trained 8 epochs, its validation loss still falling" in _with_notes(one_run, {}, {}, [cost("a", 8, 7)])["note"]
    for stopped in ([cost("a", 8, 4)], [cost("a", 1, 0)], []):
        assert "still" not in _with_notes(one_run, {}, {}, stopped)["note"]
    # no results for a run; no band (NaN std)
    assert compare(ref, {})["verdict"] == "not run"
    assert compare(ref, {"a": [_ours("a", "top", 0.8, float("nan"))]})["verdict"] == "no band"


def test_size_scan_fits_the_change_per_doubling_and_continues_it_to_the_paper_size(tmp_path):
    """farina's CNN AE rows come from a 20k-jet subset: the "Training size" section puts the same
    recipe on 5k and 10k beside it. On rows that follow y = a + b log2(jets) exactly, the fit
    returns b and a + b log2(100k); its uncertainty is the bands' propagated through the least
    squares; a run without results is named, not dropped silently."""
    from jetscan.jobs.reproduce import _plot_size_scan, _size_scan_lines, _size_scan_ylabel, size_scan

    refs = REFERENCE["farina"]
    sub = [r for r in refs if tuple(r["runs"]) == ("cnn_ae_20k",)]
    assert {(r["signal"], r["metric"]) for r in sub} == {("top", "e10"), ("top", "e100"), ("gluino", "e10"),
                                                          ("gluino", "e100")}
    a, b, sd = {"e10": 0.30, "e100": 0.02}, {"e10": 0.05, "e100": 0.01}, 0.01

    def rows(jets):
        x = math.log2(jets)
        return [{"signal": sig, "n_train_jets": jets, "n_signal": 100, "n_background": 100,
                 **{m: a[m] + b[m] * x + (0.1 if sig == "gluino" else 0.0) for m in a},
                 **{f"{m}_std": sd for m in a}} for sig in ("top", "gluino")]

    by_run = {"cnn_ae_5k": rows(5000), "cnn_ae_20k": rows(20000), "cnn_ae_10k": rows(10000)}
    costs = [{"run": "cnn_ae_10k", "epochs_run": 10, "best_epoch": 9, "train_jets": 10000}]
    scan = size_scan("farina", refs, by_run, costs)
    assert [p["jets"] for p in scan["points"]] == [5000, 10000, 20000] and scan["missing"] == []
    x = np.log2([5000, 10000, 20000])
    sxx, target = float(np.sum((x - x.mean()) ** 2)), math.log2(100_000) - x.mean()
    for (sig, m), fit in scan["fits"].items():
        assert fit["slope"] == pytest.approx(b[m])
        assert fit["at_paper"] == pytest.approx(a[m] + b[m] * math.log2(100_000) + (0.1 if sig == "gluino" else 0.0))
        assert fit["slope_sd"] == pytest.approx(sd / math.sqrt(sxx))  # equal bands: the textbook formulas
        assert fit["at_paper_sd"] == pytest.approx(sd * math.sqrt(1 / 3 + target**2 / sxx))
        assert fit["paper"] == next(r["value"] for r in sub if (r["signal"], r["metric"]) == (sig, m))
        assert fit["reaches_paper"] == (abs(fit["at_paper"] - fit["paper"]) <= 2 * fit["at_paper_sd"])
    # top E10: 0.30 + 0.05 * 16.6 = 1.13, an efficiency above 1: the trend cannot hold to 100k, and the table says
    # so; top E100: 0.02 + 0.01 * 16.6 = 0.186, within 2 bands of the paper's 0.19: reached
    assert not scan["fits"][("top", "e10")]["reaches_paper"] and scan["fits"][("top", "e10")]["beyond_one"]
    assert scan["fits"][("top", "e100")]["reaches_paper"] and not scan["fits"][("top", "e100")]["beyond_one"]
    lines = "\n".join(_size_scan_lines(scan))
    assert "| cnn_ae_10k | 10000 | 10 | 9 | " in lines and "| paper | 100000 |" in lines
    assert "+0.05 ± 0.0" in lines and "(paper 0.7: above 1: the trend cannot hold that far)" in lines
    # gluino E100: 0.12 + 0.01 log2(jets) is 0.286 at 100k, above the paper's 0.23 by more than 2 bands: the fit
    # meets 0.23 at 2^11 = 2048 jets, fewer than the paper's, so the paper's value is passed, not "not reached"
    glu = scan["fits"][("gluino", "e100")]
    assert glu["passes_paper"] and not glu["reaches_paper"] and glu["meets_paper_at_jets"] == pytest.approx(2048)
    assert "(paper 0.19: reached)" in lines and "(paper 0.23: passed: the fit meets it at about 2000 training jets)" in lines
    # 0.3 lower: 0.036 at 5k jets rising to -0.014 at 100k, below 0.23 there: not reached
    down = {run: [{**r, "e100": r["e100"] - 0.3} for r in rs] for run, rs in by_run.items()}
    low = size_scan("farina", refs, down, costs)["fits"][("gluino", "e100")]
    assert not low["passes_paper"] and not low["reaches_paper"] and low["meets_paper_at_jets"] > 100_000
    assert "(paper 0.23: not reached)" in "\n".join(_size_scan_lines(size_scan("farina", refs, down, costs)))
    # a falling fit above the paper at its size never meets it: above it, not "not reached"
    falling = {run: [{**r, "e100": 0.9 - r["e100"]} for r in rs] for run, rs in by_run.items()}
    assert "(paper 0.23: above it at every size)" in "\n".join(_size_scan_lines(size_scan("farina", refs, falling, costs)))
    png = _plot_size_scan("farina", scan, tmp_path)
    assert png.stat().st_size > 1000
    # the tagger's scan plots accuracy and AUC, which are not signal efficiencies (its plot said so)
    tagger = size_scan("macaluso-shih-100k", REFERENCE["macaluso-shih-100k"],
                       {run: [{"signal": "top", "n_train_jets": n, "accuracy": 0.9, "accuracy_std": 0.01, "auc": 0.97,
                               "auc_std": 0.01}] for run, n in (("tagger_25k", 25000), ("tagger", 200000))})
    assert _size_scan_ylabel(scan) == "signal efficiency" and _size_scan_ylabel(tagger) == "accuracy, AUC"
    # one size only: no fit; a run without results (or without one of the signals) is listed as missing
    only = size_scan("farina", refs, {"cnn_ae_20k": rows(20000), "cnn_ae_5k": rows(5000)[:1]})
    assert only["fits"] == {} and only["missing"] == ["cnn_ae_5k", "cnn_ae_10k"]
    assert "No results for cnn_ae_5k, cnn_ae_10k (not run yet)." in "\n".join(_size_scan_lines(only))
    assert size_scan("heimel-top", REFERENCE["heimel-top"], by_run) is None


def test_quoted_half_unit_reads_the_precision_the_paper_quotes():
    from jetscan.core.reference import quoted_half_unit

    assert quoted_half_unit("adversarial AE, lambda = 5e-4: AUC about 0.70", 0.70) == pytest.approx(0.005)
    assert quoted_half_unit("image AE vs tops: AUC about 0.89 on a plateau for bottleneck 20-34", 0.89) == pytest.approx(0.005)
    assert quoted_half_unit("accuracy 94.8%", 0.948) == pytest.approx(0.0005)
    assert quoted_half_unit("S/B from about 4% to about 25%", 0.25) == pytest.approx(0.005)
    assert quoted_half_unit("E10 / E100 = 0.51 / 0.04", 0.04) == pytest.approx(0.005)
    assert quoted_half_unit("a statement without it", 0.5) == 0.0
    # Fig. 8's statement holds 0.1 twice: "10%" is the contamination, "about 0.1" (the last quote) the E100: 0.05-0.15
    assert quoted_half_unit("trained with 10% top contamination still reaches E100 of about 0.1", 0.1) == 0.05
    assert {r["rounding"] for r in REFERENCE["farina"] if r["id"] == "contamination"} == {0.05}
    for rows in REFERENCE.values():  # every row without a published range has its rounding
        assert all(r["range"] or r["rounding"] > 0 for r in rows), [r["what"] for r in rows if not r["rounding"]]


def test_bump_hunt_rows_notes_and_plot_from_stored_scores(tmp_path):
    """The bump hunt's wiring into the farina table (sec. 6) on a store holding known per-jet scores of
    the bump-hunt run: QCD masses falling, the loss growing with mass as an AE's does, gluinos peaked
    near 400 GeV with high losses. The table gets S/B before / after with Poisson bands, the mix, the
    sideband fit in the notes, and the mass plot."""
    from jetscan.core.bumphunt import bump_hunt
    from jetscan.jobs.reproduce import _bump_hunt, _plot_bump_hunt, _with_bump_hunt, compare, write_table
    from jetscan.storage import results

    study, _ = load_preset("farina", store=str(tmp_path / "f.zarr"))
    rng = np.random.default_rng(2)
    n_qcd, n_glu = 100_000, 3000
    m_qcd = 20.0 + rng.exponential(60.0, n_qcd)
    samples = {
        "qcd": {"mass": m_qcd, "score": rng.exponential(1.0, n_qcd) + m_qcd / 100.0, "label": np.zeros(n_qcd)},
        "gluino": {"mass": rng.normal(390.0, 25.0, n_glu), "score": rng.exponential(1.0, n_glu) + 6.0,
                   "label": np.ones(n_glu)},
        "top": {"mass": rng.normal(175.0, 20.0, 50), "score": rng.exponential(1.0, 50), "label": np.ones(50)},
    }
    evaluation = {"run": "dense_ae_bump", "study": "farina", "config": {"n_train_jets": 99_000}, "kind": "autoencoder",
                  "background": "qcd", "samples": samples, "signals": ["top", "gluino"]}
    rows = results.summarise(evaluation)
    results.write_run(study.store, evaluation, rows)

    hunt = _bump_hunt(study, "dense_ae_bump", "gluino")
    assert hunt["n_background"] == n_qcd and hunt["n_signal"] == 100  # 1e-3 / (1 - 1e-3) of 100k
    res = hunt["result"]
    assert res["before"]["s_over_b"] < 0.5 < res["after"]["s_over_b"]
    assert res["background_kept"] == pytest.approx(1e-3, abs=2e-5)
    # the same numbers as core.bumphunt on the same mix (the wiring adds no arithmetic of its own)
    again = bump_hunt(hunt["mass"], hunt["score"], hunt["label"], window_gev=res["window_gev"])
    assert again["after"] == res["after"] and again["fit"]["s_fit"] == res["fit"]["s_fit"]
    fit = res["fit"]
    assert abs(fit["s_fit"] - res["after"]["s"]) < 2.5 * fit["s_fit_err"]
    ours = _with_bump_hunt(rows, "gluino", hunt)
    top_row = [r for r in ours if r["signal"] == "top"][0]
    assert "s_over_b_after" not in top_row  # only the hunted signal's row
    compared = [compare(ref, {"dense_ae_bump": ours}) for ref in REFERENCE["farina"] if ref["metric"] in BUMP_METRICS]
    assert [c["value"] for c in compared] == [0.04, 0.25]
    for c, key in zip(compared, ("before", "after")):
        assert c["ours"] == res[key]["s_over_b"] and c["band"] == res[key]["s_over_b_err"]
        assert c["verdict"] in ("agrees", "differs") and c["our_size"] == "test 100 gluino + 100000 bkg; train 99000"
    out = tmp_path / "results"
    out.mkdir()
    png = _plot_bump_hunt("farina", "dense_ae_bump", "gluino", hunt, out)
    assert png.stat().st_size > 5000
    table, pngs = write_table(study, "farina", [{**c, "note": hunt["note"]} for c in compared], out, extra_pngs=[png])
    text = table.read_text()
    assert png in pngs and f"]({png.name})" in text
    assert "all 100000 test qcd + 100 of the 3000 test gluino jets" in text and f"S_fit = {fit['s_fit']:.1f}" in text


def test_the_bump_hunt_run_carries_its_own_contamination():
    """farina's dense_ae_bump trains with 1e-3 gluinos although data.contamination is Fig. 8's 10 % tops:
    the run's own contamination replaces data.contamination for that run only (loader, hash, results)."""
    from jetscan.jobs.train import run_settings
    from jetscan.core.study import settings_hash

    study = Study.from_yaml(PRESETS_DIR / "farina.yaml")
    bump = study.for_run("dense_ae_bump")
    assert (bump.data.contamination.signal, bump.data.contamination.fraction) == ("gluino", 0.001)
    assert study.for_run("cnn_ae_c10") is study and study.data.contamination.signal == "top"
    assert run_settings(study, "dense_ae_bump")["data"]["contamination"] == {"signal": "gluino", "fraction": 0.001}
    # a run without its own contamination dumps and hashes as before the option existed
    assert "contamination" not in study.run("cnn_ae_1").model_dump(mode="json")
    data = study.model_dump(mode="json")
    del data["train"]["runs"]["dense_ae_bump"]
    assert settings_hash(run_settings(Study.from_dict(data), "cnn_ae_c10")) == settings_hash(run_settings(study, "cnn_ae_c10"))
    for bad, msg in (({"contaminated": False}, "set contaminated: true as well"),
                     ({"contamination": {"signal": "nope", "fraction": 0.001}}, "must be a sample of the study")):
        d = study.model_dump(mode="json")
        d["train"]["runs"]["dense_ae_bump"].update(bad)
        with pytest.raises(ConfigError, match=msg):
            Study.from_dict(d)


def test_a_run_is_carried_from_the_ledger_only_with_its_current_settings(tmp_path):
    """A run missing from the store is carried when the ledger holds it with its current key; a
    changed run (another key) is made again, and a run named by --run is always made here."""
    from jetscan.jobs.reproduce import _ledger_key, _runs_to_make
    from jetscan.storage import ledger

    study, name = load_preset("heimel-top", shrink=2.5e-4, store=str(tmp_path / "none.zarr"))
    runs = list(study.train.runs)
    keys = {r: _ledger_key(study, r) for r in runs}
    assert len(set(keys.values())) == len(runs)  # every run its own key
    led = ledger.empty(name)
    ledger.record(led, runs[0], keys[runs[0]], [_ours(runs[0], "top", 0.9, 0.01)], cost=None, notes=None, store="x")
    ledger.record(led, runs[1], "stale", [_ours(runs[1], "top", 0.9, 0.01)], cost=None, notes=None, store="x")
    needed, carried, stored = _runs_to_make(study, name, None, led, keys)
    assert list(carried) == [runs[0]] and needed == runs[1:]
    assert stored == {runs[0]: None}  # the store was read once, for the run the ledger holds
    needed, carried, _ = _runs_to_make(study, name, [runs[0]], led, keys)
    assert needed == [runs[0]] and carried == {}
    needed, carried, _ = _runs_to_make(study, name, [runs[2]], led, keys)
    assert needed == [runs[2]] and list(carried) == [runs[0]]
    # a sample's generation settings are part of the key: the test-only signal too
    other, _ = load_preset("heimel-top", shrink=5e-4, store=str(tmp_path / "none.zarr"))
    assert _ledger_key(other, runs[0]) != keys[runs[0]]


def test_a_table_made_before_the_ledger_is_read_back_into_entries(tmp_path):
    """The first ledger of a table written before ledgers existed is read back from the table's
    rows and its training-cost section, with the values as printed."""
    from jetscan.jobs.reproduce import _entries_from_table, compare, write_table

    study, name = load_preset("heimel-top")
    refs = REFERENCE[name]
    ours = {"image_ae_b20": [_ours("image_ae_b20", "top", 0.89861, 0.00171, n=(100000, 100000))],
            "lola_ae_b10": [_ours("lola_ae_b10", "top", 0.9457, 0.00142, n=(100000, 100000))]}
    costs = {"samples": [], "runs": [{"run": "lola_ae_b10", "seconds": 307.2, "median_epoch_s": 3.04, "epochs_run": 100,
                                      "best_epoch": 99, "train_jets": 100000, "world_size": 1}]}
    table, _ = write_table(study, name, [compare(ref, ours) for ref in refs], tmp_path, costs=costs)
    entries = _entries_from_table(table.read_text(), study)
    assert set(entries) == {"image_ae_b20", "lola_ae_b10"}
    (row,) = entries["lola_ae_b10"]["rows"]
    assert row == {"run": "lola_ae_b10", "signal": "top", "auc": 0.946, "auc_std": 0.0014, "n_signal": 100000,
                   "n_background": 100000, "n_train_jets": 500}
    assert entries["lola_ae_b10"]["cost"]["seconds"] == 307 and entries["lola_ae_b10"]["cost"]["best_epoch"] == 99
    assert entries["image_ae_b20"]["cost"] is None and entries["image_ae_b20"]["rows"][0]["auc"] == 0.899
    assert "before the ledger" in entries["lola_ae_b10"]["source"]
    shrunk, _ = load_preset("heimel-top", shrink=2.5e-4)
    small, _ = write_table(shrunk, name, [compare(ref, ours) for ref in refs], tmp_path / "s", shrink=2.5e-4)
    assert _entries_from_table(small.read_text(), shrunk) == {}  # a smoke table's numbers are never carried
