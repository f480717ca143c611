"""Stage: reproduce a seed paper's figures (``jetscan reproduce PRESET [--shrink F] [--workers N]``).

The whole story of the command:

1. ``PRESET`` names a study file under ``studies/`` (``heimel-top``, ``farina``, ``heimel-scalar``,
   ``heimel-dark``, ``macaluso-shih``, ``macaluso-shih-100k``) or is a path to one; its reference
   rows (the papers' published numbers, :mod:`jetscan.core.reference`) name the runs to make.
2. ``--shrink F`` scales every sample size and the epochs by F (at least 50 jets per sample,
   one epoch; shards, PCA fits and adversary mass bins follow) into a separate store
   (``<store>-shrink<F>.zarr``), for tests and smoke runs; the table's header says so. The
   preset's ``search:`` and ``scan:`` sections are not run by this command (``jetscan search`` /
   ``jetscan scan`` run them; a shrunken copy drops them, since their grids are sized for the
   full samples).
3. The chain reuses everything already done: generation and preprocessing make only missing
   shards, training resumes from its checkpoint and returns at once for a finished run, and a
   run whose results carry its current settings hash (``run_settings_hash``) is not evaluated
   again (:func:`jetscan.storage.results.rows_with_results`). Beyond one store: ``<out>/<PRESET>.json``,
   the ledger (:mod:`jetscan.storage.ledger`), keeps every run's result rows and training cost
   beside the table, keyed by a hash of the run's settings and every sample's generation
   settings. A run that the store lacks but the ledger holds under its current key is carried
   into the table (marked so) instead of being trained again, so a preset costing more than
   one machine's session is built run by run across sessions; ``--run NAME`` makes it here
   anyway. A table written before ledgers existed seeds the first ledger from its own rows.
4. ``<out>/<PRESET>.md`` (default ``docs/results/``) and one small PNG per reference figure: each
   published number next to ours, with ours' band (the standard deviation over 10 disjoint test
   subsamples that evaluation computes; for repeated trainings, the mean over the runs with the
   band combined in quadrature with the spread of the runs), the difference in units of the band,
   a verdict (``agrees`` within 2 bands, else ``differs``), the sample sizes and notes. Written by
   the command only, never by hand.
5. A reference row on S/B in a mass window (``s_over_b_before`` / ``s_over_b_after``: Farina,
   Nakai & Shih sec. 6) makes a bump hunt (:mod:`jetscan.core.bumphunt`) on its run's stored test
   scores: the run must be trained with that signal mixed in (its own ``contamination``); the
   "data" is every test background jet plus as many test signal jets as the same fraction gives
   (at least one), drawn with the study's seed; the window holds the central 68 % of all test
   signal jets; the loss cut rejects the background 1000x (its quantile, truth labels); the band
   is the Poisson uncertainty of S/B. The notes carry the sideband fit after the cut (B_fit,
   S_fit) and a PNG shows the mass spectra before and after the cut with the fit.
6. Rows reached only on a training subset (farina's ``cnn_ae_20k``) get a "Training size" section
   (:data:`jetscan.core.reference.SIZE_SCAN`: the same recipe on smaller subsets, made with the
   rest): each size's value and band, the change per doubling of the training jets and the
   log-linear fit continued to the paper's size, with the bands propagated, and a PNG.
7. A run can train for hours, over several calls. ``should_stop`` (the CLI's: the signals named in
   ``JETSCAN_STOP_SIGNALS``, e.g. ``USR1``, :mod:`jetscan.cluster.preempt`) ends the call after the
   epoch in progress, its checkpoint written, before evaluation and the table; the command exits
   with 75, as a preempted ``jetscan train`` does, and the next call resumes there.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from jetscan.core.errors import ConfigError
from jetscan.core.reference import SIZE_SCAN, reference_rows
from jetscan.core.study import Study, settings_hash

__all__ = ["PRESETS_DIR", "presets", "preset_path", "shrink_study_data", "load_preset", "compare", "size_scan",
           "reproduce", "write_table", "add_commands"]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "studies"
#: agreement threshold, in units of our band
AGREE_BANDS = 2.0
MIN_SHRUNK_JETS = 50
METRIC_NAMES = {"auc": "AUC", "inv_eb_at_0p3": "1/eps_B at eps_S = 0.3", "e10": "E10", "e100": "E100",
                "accuracy": "accuracy", "s_over_b_before": "S/B in the mass window, no cut",
                "s_over_b_after": "S/B in the mass window, after the loss cut"}
#: metrics a bump hunt on the run's test scores makes (Farina et al. sec. 6)
BUMP_METRICS = ("s_over_b_before", "s_over_b_after")


def presets() -> list[str]:
    """The study presets that have reference rows (``studies/<name>.yaml``)."""
    from jetscan.core.reference import REFERENCE

    return [p for p in REFERENCE if (PRESETS_DIR / f"{p}.yaml").is_file()]


def preset_path(preset: str | Path) -> Path:
    p = Path(preset)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    q = PRESETS_DIR / f"{preset}.yaml"
    if q.is_file():
        return q
    raise ConfigError(
        f"reproduce: no preset {str(preset)!r}; presets: {', '.join(presets())} (or pass the path of a study file)"
    )


def shrink_study_data(data: dict, shrink: float) -> dict:
    """A copy of a study mapping with sample sizes and epochs scaled by ``shrink`` (0 < shrink <= 1)."""
    if not 0.0 < shrink <= 1.0:
        raise ConfigError(f"--shrink: a factor in (0, 1] scales the sizes down (got {shrink}); e.g. --shrink 0.01")
    out = copy.deepcopy(data)
    for cfg in out["samples"].values():
        cfg["n_jets"] = max(MIN_SHRUNK_JETS, int(round(cfg["n_jets"] * shrink)))
    largest = max(cfg["n_jets"] for cfg in out["samples"].values())
    gen = out.setdefault("generation", {})
    gen["shard_jets"] = max(10, min(int(gen.get("shard_jets", 2000)), int(math.ceil(largest / 2))))
    train_share = {name: (c.get("splits") or out["data"]["splits"])["train"] for name, c in out["samples"].items()}
    n_train_bkg = min(int(round(c["n_jets"] * train_share[name]))
                      for name, c in out["samples"].items() if train_share[name] > 0)
    for run in out["train"]["runs"].values():
        run["epochs"] = max(1, int(round(run.get("epochs", 10) * shrink)))
        run["patience"] = max(1, min(int(run.get("patience", 10)), run["epochs"]))
        run["max_fit_jets"] = max(10, int(round(run.get("max_fit_jets", 200_000) * shrink)))
        if run.get("max_train_jets"):
            run["max_train_jets"] = max(10, int(round(run["max_train_jets"] * shrink)))
        adv = run.get("adversary")
        if adv:  # equal-population mass bins need several QCD jets each
            adv["mass_bins"] = max(2, min(int(adv.get("mass_bins", 10)), n_train_bkg // 5))
    out.pop("search", None)
    out.pop("scan", None)
    store = str(out["store"])
    stem = store[: -len(".zarr")] if store.endswith(".zarr") else store
    out["store"] = f"{stem}-shrink{shrink:g}.zarr"
    return out


def load_preset(preset: str | Path, *, shrink: float | None = None, store: str | None = None) -> tuple[Study, str]:
    """(the study to run, the preset's name)."""
    path = preset_path(preset)
    study = Study.from_yaml(path)
    data = study.model_dump(mode="json")
    if shrink is not None:
        data = shrink_study_data(data, shrink)
    if store is not None:
        data["store"] = str(store)
    return Study.from_dict(data, source=str(path)), path.stem


# --------------------------------------------------------------------------------------
# the chain


def _runs_needed(study: Study, preset: str, only: Iterable[str] | None) -> list[str]:
    runs = list(dict.fromkeys([*(r for row in reference_rows(preset) for r in row["runs"]),
                               *SIZE_SCAN.get(preset, {}).get("runs", ())]))
    runs = runs or list(study.train.runs)
    if only:
        only = list(only)
        for r in only:
            study.run(r)
        runs = [r for r in runs if r in only]
    return runs


def _evaluate_run(study: Study, run: str, stored: dict[str, list[dict] | None]) -> list[dict]:
    """The run's result rows: reused when they carry the current settings hash, else evaluated.
    ``stored``: the rows already read for some runs (:func:`_runs_to_make`), so none is read twice."""
    from jetscan.core.run_settings import run_settings
    from jetscan.jobs.evaluate import evaluation_for
    from jetscan.storage import results

    rows = stored[run] if run in stored else _stored_rows(study, run)
    if rows is not None:
        return rows
    evaluation = evaluation_for(study, run)
    evaluation["config"]["run_settings_hash"] = settings_hash(run_settings(study, run))
    rows = results.summarise(evaluation)
    results.write_run(study.store, evaluation, rows)
    if rows and rows[0].get("kind") == "tagger":
        rows = _with_accuracy_band(study, run, rows)
    return rows


def _with_accuracy_band(study: Study, run: str, rows: list[dict]) -> list[dict]:
    """Taggers: the accuracy's band over the same 10 disjoint test subsamples as the other
    metrics (:func:`jetscan.core.metrics.bands`, seed 0), from the stored per-jet scores."""
    from jetscan.core import metrics
    from jetscan.storage import results

    stored = results.read_run(study.store, run)
    b = stored["samples"][stored["background"]]["score"]
    out = []
    for row in rows:
        s = stored["samples"][row["signal"]]["score"]
        scores = np.r_[b, s]
        labels = np.r_[np.zeros(len(b), np.int64), np.ones(len(s), np.int64)]
        try:
            _, std = metrics.bands(lambda x, y: metrics.accuracy(x, y, 0.5), scores, labels, n_subsamples=10, seed=0)
        except ValueError:  # fewer than 10 jets of a class
            std = float("nan")
        out.append({**row, "accuracy_std": std})
    return out


def _split_sizes(study: Study) -> dict[str, dict[str, int]]:
    from jetscan.storage import catalog
    from jetscan.core.splits import split_counts

    out = {}
    for name in study.samples:
        try:
            n = int(sum(catalog.read_catalog(study.store, name).column("n_jets").to_pylist()))
        except Exception:  # noqa: BLE001 - nothing generated yet
            n = 0
        train, val, test = split_counts(n, study.split_fractions(name))  # as the loader splits them
        out[name] = {"jets": n, "train": train, "val": val, "test": test}
    return out


def compare(ref: dict, rows_by_run: dict[str, list[dict]]) -> dict:
    """One reference row against our result rows: ours, band, (ours - paper) / band, verdict."""
    metric, signal = ref["metric"], ref["signal"]
    values, stds, sizes = [], [], []
    missing = []
    for run in ref["runs"]:
        match = [r for r in rows_by_run.get(run, []) if r.get("signal") == signal]
        if not match:
            missing.append(run)
            continue
        r = match[0]
        values.append(float(r[metric]))
        std = r.get(f"{metric}_std")
        stds.append(float(std) if std is not None else float("nan"))
        sizes.append((int(r["n_signal"]), int(r["n_background"]), r.get("n_train_jets")))
    out = {**ref, "ours": float("nan"), "band": float("nan"), "pull": float("nan"), "verdict": "not run",
           "n_runs": len(values), "our_size": "", "missing": missing}
    if not values:
        return out
    ours = float(np.mean(values))
    # the band of one run: the spread over 10 disjoint test subsamples (NaN for accuracy: none stored).
    # Over repeated trainings: the mean band and the spread of the runs, in quadrature.
    sub = float(np.sqrt(np.nanmean(np.square(stds)))) if np.isfinite(stds).any() else float("nan")
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    band = math.hypot(sub, spread) if math.isfinite(sub) else (spread if len(values) > 1 else float("nan"))
    half = float(ref.get("rounding") or 0.0)  # a quoted 0.89 stands for 0.885-0.895
    lo, hi = ref["range"] if ref.get("range") else (ref["value"] - half, ref["value"] + half)
    diff = 0.0 if lo <= ours <= hi else (ours - hi if ours > hi else ours - lo)
    pull = diff / band if band and math.isfinite(band) and band > 0 else float("nan")
    verdict = "no band" if not math.isfinite(pull) else ("agrees" if abs(pull) <= AGREE_BANDS else "differs")
    if ref.get("sculpting"):
        out["sculpting_note"] = _sculpting_note(ref["runs"], rows_by_run, signal)
    n_sig, n_bkg, n_train = sizes[0]
    our_size = f"test {n_sig} {signal} + {n_bkg} bkg" + (f"; train {n_train}" if n_train else "")
    if len(values) > 1:
        our_size += f"; {len(values)} trainings"
    out.update(ours=ours, band=band, pull=pull, verdict=verdict, our_size=our_size)
    return out


def _with_notes(c: dict, bump_notes: dict, carried: dict[str, dict], run_costs: list[dict] = ()) -> dict:
    """A compared row with its notes joined: the reference's, the bump hunt's, our sculpting,
    the jet mass alone as a baseline, whether training had converged, and where carried runs
    come from."""
    notes = [c.get("note")]
    if c["metric"] in BUMP_METRICS and (c["runs"][0], c["signal"]) in bump_notes:
        notes.append(bump_notes[(c["runs"][0], c["signal"])])
    notes.append(c.get("sculpting_note"))
    notes.append(c.get("mass_note"))
    notes.append(_still_improving_note(c["runs"], run_costs))
    notes += [_carried_note(carried[r]) for r in c["runs"] if r in carried]
    return {**c, "note": "; ".join(x for x in notes if x)}


def _still_improving_note(runs: Iterable[str], run_costs: Iterable[dict]) -> str:
    """Says so where a run's best validation loss came at its last epoch (of several): the
    epoch budget, not early stopping, ended it, so more epochs could still move its numbers."""
    costs = {c["run"]: c for c in run_costs}
    made = [costs[r] for r in runs if r in costs and costs[r].get("epochs_run", 0) > 1]
    still = [c for c in made if c.get("best_epoch") == c["epochs_run"] - 1]
    if not still:
        return ""
    if len(made) == 1:
        return (f"trained {still[0]['epochs_run']} epochs, its validation loss still falling at the last: the epoch "
                "budget, not early stopping, ended the training")
    return (f"{len(still)} of the {len(made)} runs still improving at their last epoch: the epoch budget, not early "
            "stopping, ended them")


def _mass_baseline_note(study: Study, run: str, signal: str, rows: list[dict], masses: dict) -> str:
    """The AUC of the jet mass alone as the anomaly score, on the run's own test jets: what an
    AUC row is read against (a signal jet that holds a whole resonance is found by its mass; an
    autoencoder below that has not learnt more than the mass). The masses are the samples' test
    split, read from the store, so a run carried from the ledger gets the note too once its
    samples are generated here (the ledger key holds their generation settings and generation is
    seeded: the same jets); "" where the store lacks them or their count differs from the run's
    row. ``rows`` are the run's result rows, ``masses`` caches each sample's test masses."""
    from jetscan.core import metrics

    background = study.background_samples(run)
    row = next((r for r in rows if r.get("signal") == signal), None)
    if not background or row is None:
        return ""
    b, s = _test_masses(study, background[0], masses), _test_masses(study, signal, masses)
    if b is None or s is None or not len(b) or not len(s) or (len(b), len(s)) != (row.get("n_background"), row.get("n_signal")):
        return ""
    auc = metrics.auc(np.r_[b, s], np.r_[np.zeros(len(b), np.int64), np.ones(len(s), np.int64)])
    return f"the jet mass alone as the score, same test jets: AUC {auc:.3f}"


def _test_masses(study: Study, sample: str, cache: dict) -> np.ndarray | None:
    """The jet masses of ``sample``'s test split, as evaluation reads them (the loader's seeded
    split of every stored jet); None where the store does not hold the sample."""
    from jetscan.core.errors import StorageError
    from jetscan.storage.loader import split_jets

    if sample not in cache:
        try:
            cache[sample] = split_jets(study, sample, ["jets/mass"], "test")["jets/mass"]
        except StorageError:
            cache[sample] = None
    return cache[sample]


def _sculpting_note(runs: Iterable[str], rows_by_run: dict[str, list[dict]], signal: str) -> str:
    """The runs' background mass sculpting as evaluation measured it (mean over the runs): the
    JSD between the mass of all test background jets and of the least background-like 50 / 20 /
    5 % (:mod:`jetscan.storage.results`); "" where the rows do not hold it."""
    keys = [f"jsd_{r}" for r in (50, 80, 95)]
    rows = [next((r for r in rows_by_run.get(run, []) if r.get("signal") == signal), {}) for run in runs]
    if not rows or not all(k in r and r[k] is not None for r in rows for k in keys):
        return ""
    jsd = [float(np.mean([r[k] for r in rows])) for k in keys]
    return "background mass JSD, least background-like 50 / 20 / 5 %: " + " / ".join(f"{v:.3f}" for v in jsd)


def reproduce(
    preset: str | Path,
    *,
    shrink: float | None = None,
    workers: int | None = None,
    out_dir: str | Path = "docs/results",
    store: str | None = None,
    runs: Iterable[str] | None = None,
    use_ray: bool = True,
    echo: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Run the preset's chain (reusing what is done) and write its comparison table and plots.

    Returns ``{"preset", "study", "rows" (compared reference rows), "table" (the .md path),
    "pngs", "seconds"}``; when ``should_stop`` ended a training, ``{"preset", "study",
    "preempted": True, "run", "stopped_after_epoch" (0-based), "seconds"}`` and no table."""
    from jetscan.jobs.generate import generate
    from jetscan.jobs.preprocess import preprocess
    from jetscan.cluster.devices import wants_cuda
    from jetscan.jobs.train import autocast_on, train
    from jetscan.storage import blobs, ledger

    echo = echo or (lambda *_: None)
    study, name = load_preset(preset, shrink=shrink, store=store)
    blobs.use_storage_options(study.store, study.storage_options)
    # a smoke run's ledger is its own file: its entries never replace the full-size ones
    ledger_path = Path(out_dir) / (f"{name}.json" if shrink is None else f"{name}-shrink{shrink:g}.json")
    led = _read_ledger(ledger_path, study, name, shrink)
    keys = {run: _ledger_key(study, run) for run in _runs_needed(study, name, None)}
    needed, carried, stored = _runs_to_make(study, name, runs, led, keys)
    if needed and not wants_cuda(study.train.device):  # train.amp_cpu where it cannot help: the error now, not after generation
        autocast_on(study, "cpu", "")
    for run, entry in carried.items():
        echo(f"{name}: {run} {_carried_note(entry)} ({ledger_path})")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    echo(f"{name}: generating into {study.store}")
    generate(study, workers=workers, use_ray=use_ray)
    timings["generate"] = time.perf_counter() - t
    t = time.perf_counter()
    reps = sorted({study.run(r).representation or _model_representation(study, r) for r in needed})
    reps = [r for r in reps if r in study.preprocess.representations]
    if needed:
        preprocess(study, workers=workers, representations=reps or None, use_ray=use_ray)
    timings["preprocess"] = time.perf_counter() - t
    rows_by_run: dict[str, list[dict]] = {}
    t = time.perf_counter()
    for run in needed:
        echo(f"{name}: train {run}")
        summary = train(study, run, on_epoch=_epoch_echo(name, study.run(run).epochs, echo), should_stop=should_stop)
        if summary.get("preempted"):
            echo(f"{name}: {run} stopped on request after epoch {summary['stopped_after_epoch'] + 1} "
                 f"(checkpoint written); the next call resumes it")
            return {"preset": name, "study": study, "preempted": True, "run": run,
                    "stopped_after_epoch": summary["stopped_after_epoch"], "seconds": time.perf_counter() - t0}
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    for run in needed:
        rows_by_run[run] = _evaluate_run(study, run, stored)
    timings["evaluate"] = time.perf_counter() - t
    refs = reference_rows(name)
    bump_pngs, bump_notes = [], {}
    for run, signal in dict.fromkeys((r, ref["signal"]) for ref in refs if ref["metric"] in BUMP_METRICS
                                     for r in ref["runs"] if r in needed):
        echo(f"{name}: bump hunt on {run} ({signal})")
        hunt = _bump_hunt(study, run, signal)
        rows_by_run[run] = _with_bump_hunt(rows_by_run[run], signal, hunt)
        bump_notes[(run, signal)] = hunt["note"]
        if hunt.get("result") is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            bump_pngs.append(_plot_bump_hunt(name, run, signal, hunt, Path(out_dir)))
    for run in keys:
        if run not in rows_by_run and run not in carried:  # not asked for this time: from an earlier --run, if any
            rows = stored[run] if run in stored else _stored_rows(study, run)
            if rows is not None:
                rows_by_run[run] = rows
    costs = _costs(study, list(rows_by_run))
    _record_in_ledger(led, study, rows_by_run, keys, costs, bump_notes)
    for run, entry in carried.items():
        rows_by_run[run] = entry["rows"]
        bump_notes.update({(run, sig): note for sig, note in entry.get("notes", {}).items()})
        if entry.get("cost"):
            costs["runs"].append({**entry["cost"], "carried": True})
    masses: dict[str, np.ndarray | None] = {}
    compared = []
    for ref in refs:
        c = compare(ref, rows_by_run)
        if ref["metric"] == "auc" and c["n_runs"]:
            run = ref["runs"][0]
            c["mass_note"] = _mass_baseline_note(study, run, ref["signal"], rows_by_run.get(run, []), masses)
        compared.append(_with_notes(c, bump_notes, carried, costs["runs"]))
    correlation = _mass_correlation(study, name)
    if correlation and correlation["curves"]:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        bump_pngs.append(_plot_mass_correlation(name, correlation, Path(out_dir)))
    scan = size_scan(name, refs, rows_by_run, costs["runs"])
    if scan and len(scan["points"]) > 1:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        bump_pngs.append(_plot_size_scan(name, scan, Path(out_dir)))
    seconds = time.perf_counter() - t0
    timings["total"] = seconds
    table, pngs = write_table(study, name, compared, Path(out_dir), shrink=shrink, timings=timings,
                              extra_pngs=bump_pngs, costs=costs, mass_correlation=correlation, size_scan=scan,
                              ledger_name=ledger_path.name if carried else None)
    ledger.write(ledger_path, led)
    echo(f"{name}: {table}")
    return {"preset": name, "study": study, "rows": compared, "table": table, "pngs": pngs, "seconds": seconds}


# --------------------------------------------------------------------------------------
# the ledger: rows carried across stores (jetscan.storage.ledger)


def _epoch_echo(name: str, epochs: int, echo: Callable[[str], None]) -> Callable[[dict], None]:
    """One line per finished epoch (a preset's run can take hours; a resumed one starts at its next epoch)."""

    def on_epoch(e: dict) -> None:
        echo(f"{name}: {e['run']} epoch {e['epoch'] + 1}/{epochs}: train loss {e['train_loss']:.5g}, "
             f"val loss {e['val_loss']:.5g} ({e['seconds']:.0f} s)")

    return on_epoch


def _ledger_key(study: Study, run: str) -> str:
    """What a ledger entry must match to stand for ``run``: everything that determines its
    weights (:func:`jetscan.core.run_settings.run_settings`) and the generation settings of every
    sample, the test-only signals too, since its rows are measured on them."""
    from jetscan.core.run_settings import run_settings

    return settings_hash({"run": run_settings(study, run),
                          "samples": {s: settings_hash(study.generation_settings(s)) for s in study.samples}})


def _runs_to_make(study: Study, preset: str, only: Iterable[str] | None, led: dict,
                  keys: dict[str, str]) -> tuple[list[str], dict[str, dict], dict[str, list[dict] | None]]:
    """(the runs to train and evaluate here, {run: ledger entry} for those carried instead,
    {run: its stored result rows or None} for the runs whose store results were read).

    A run is carried when the store has no results of it and the ledger has an entry with its
    current key; a run named by ``--run`` is always made here."""
    from jetscan.storage import ledger

    needed = _runs_needed(study, preset, only)
    carried, stored = {}, {}
    for run in keys:
        if only is not None and run in needed:
            continue
        entry = ledger.matching_entry(led, run, keys[run])
        if entry is not None:
            stored[run] = _stored_rows(study, run)
            if stored[run] is None:
                carried[run] = entry
    return [r for r in needed if r not in carried], carried, stored


def _record_in_ledger(led: dict, study: Study, rows_by_run: dict[str, list[dict]], keys: dict[str, str],
                      costs: dict, bump_notes: dict) -> None:
    """Enter every run whose results this store holds; an entry with the same key and rows is
    kept as it is (its date and revision stay those of the run that made it)."""
    from jetscan.storage import ledger

    run_costs = {c["run"]: c for c in costs["runs"]}
    for run, rows in rows_by_run.items():
        old = ledger.matching_entry(led, run, keys[run])
        notes = {sig: note for (r, sig), note in bump_notes.items() if r == run} or (old or {}).get("notes", {})
        if old is not None and ledger.same_rows(old["rows"], rows) and old.get("notes", {}) == notes:
            continue
        ledger.record(led, run, keys[run], rows, cost=run_costs.get(run), notes=notes, store=Path(study.store).name,
                      made_utc=rows[0].get("created_utc") if rows else None)


def _carried_note(entry: dict) -> str:
    if entry.get("source", "store") != "store":
        return f"carried from the ledger ({entry['source']})"
    return (f"carried from the ledger: evaluated {entry['made_utc'][:16].replace('T', ' ')} UTC at {entry['revision']}"
            f" in {entry['store']}, not in this store")


def _read_ledger(path: Path, study: Study, name: str, shrink: float | None) -> dict:
    """The preset's ledger; for a full-size table written before ledgers existed (an ``.md``
    and no ``.json``), an entry per run that table showed, read back from it (see
    :func:`_entries_from_table`)."""
    from jetscan.storage import ledger

    led = ledger.read(path, name)
    table = path.parent / f"{name}.md"
    if not led["runs"] and not path.exists() and shrink is None and table.is_file():
        for run, entry in _entries_from_table(table.read_text(), study).items():
            ledger.record(led, run, _ledger_key(study, run), **entry)
    return led


_OUR_SIZE = re.compile(r"test (\d+) (\S+) \+ (\d+) bkg(?:; train (\d+))?$")


def _entries_from_table(text: str, study: Study) -> dict[str, dict]:
    """Ledger entries read back from a table that ``jetscan reproduce`` wrote before it kept a
    ledger: per single-run row with a result, the metric and its band as printed (3 and 2
    significant digits) and the sizes; the run's training cost row. Their settings were not
    recorded, so they are taken as the study's settings today; the source says so."""
    if "SHRUNK by --shrink" in text:
        return {}
    made = re.search(r"on (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", text)
    made_utc = (made.group(1).replace(" ", "T") + ":00+00:00") if made else "unknown"
    names = {v: k for k, v in METRIC_NAMES.items()}
    head, _, rest = text.partition("## Samples")
    entries: dict[str, dict] = {}
    for line in head.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 13 or cells[0] == "figure" or cells[10] == "not run" or "," in cells[2]:
            continue
        size = _OUR_SIZE.match(cells[11])
        metric = names.get(cells[4])
        if size is None or metric is None or cells[2] not in study.train.runs:
            continue
        row = {"run": cells[2], "signal": cells[3], metric: _num(cells[7]), f"{metric}_std": _num(cells[8]),
               "n_signal": int(size.group(1)), "n_background": int(size.group(3)),
               "n_train_jets": int(size.group(4)) if size.group(4) else None}
        entry = entries.setdefault(cells[2], {"rows": [], "cost": None, "notes": {}})
        merged = next((r for r in entry["rows"] if r["signal"] == row["signal"]), None)
        if merged is None:
            entry["rows"].append(row)
        else:
            merged.update(row)
    for line in rest.partition("## Cost: training")[2].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in entries:
            entries[cells[0]]["cost"] = {
                "run": cells[0], "seconds": _num(cells[1]), "median_epoch_s": _num(cells[2]),
                "epochs_run": int(cells[3]), "best_epoch": int(cells[4]), "train_jets": int(cells[5]),
                "world_size": int(cells[6])}
    source = (f"read back from the table of {made_utc[:16].replace('T', ' ')} UTC, made before the ledger: values "
              "as printed, settings taken as the study's when read")
    return {run: {**e, "store": Path(study.store).name, "source": source, "made_utc": made_utc,
                  "revision": "before the ledger"} for run, e in entries.items()}


def _num(cell: str) -> float:
    """A number as :func:`_fmt` printed it ("-" for NaN)."""
    return float("nan") if cell in ("-", "") else float(cell)


def _stored_rows(study: Study, run: str) -> list[dict] | None:
    """A run's committed result rows if they carry its current settings hash (else None): a run
    made by an earlier ``--run`` keeps its place in the table without being trained again."""
    from jetscan.core.run_settings import run_settings
    from jetscan.storage import results

    rows = results.rows_with_results(study.store, run, settings_hash(run_settings(study, run)))
    if rows and rows[0].get("kind") == "tagger":
        rows = _with_accuracy_band(study, run, rows)
    return rows


def _costs(study: Study, runs: list[str]) -> dict[str, list[dict]]:
    """What the preset cost on this machine, from what the store recorded as the work was done
    (so work reused from earlier invocations counts too): per sample, the worker-seconds of its
    generation shards (sum and median shard); per run, the training time, epochs and jets."""
    from jetscan.jobs.train import _load_checkpoint
    from jetscan.storage import catalog

    samples = []
    for name in study.samples:
        try:
            t = catalog.read_catalog(study.store, name)
        except Exception:  # noqa: BLE001 - nothing generated yet
            continue
        secs = np.asarray(t.column("seconds").to_pylist(), dtype=float)
        jets = np.asarray(t.column("n_jets").to_pylist(), dtype=float)
        if len(secs):
            samples.append({"sample": name, "shards": len(secs), "jets": int(jets.sum()), "seconds": float(secs.sum()),
                            "ms_per_jet_median": float(np.median(1e3 * secs / np.maximum(jets, 1)))})
    trained = []
    for run in runs:
        ckpt = _load_checkpoint(study, run)
        if ckpt and ckpt.get("finished"):
            s = ckpt["summary"]
            timed = [t for t in ckpt.get("history", {}).get("seconds", []) if math.isfinite(t)]
            # every epoch's time, over resumed calls (runs from before epochs were timed, and PCA: the last call's)
            seconds = sum(timed) if timed else s["seconds"]
            trained.append({"run": run, "seconds": float(seconds), "epochs_run": int(s["epochs_run"]),
                            "median_epoch_s": float(np.median(timed)) if timed else float("nan"),
                            "best_epoch": int(s["best_epoch"]), "train_jets": int(s["train_jets"]),
                            "world_size": int(s.get("world_size", 1)), "precision": s.get("precision", "float32")})
    return {"samples": samples, "runs": trained}


def _bump_hunt(study: Study, run: str, signal: str) -> dict:
    """Farina et al.'s bump hunt on ``run``'s stored test scores (module docstring, step 5).

    Returns ``{"result"`` (:func:`jetscan.core.bumphunt.bump_hunt`'s dict, or None where the
    sample allows none), ``"mass", "score", "label"`` (the mixed sample), ``"n_signal",
    "n_background", "note"}``."""
    from jetscan.core import bumphunt
    from jetscan.core.scan_space import contamination_needs
    from jetscan.storage import results

    cfg = study.for_run(run)
    c = cfg.data.contamination if cfg.run(run).contaminated else None
    if c is None or c.signal != signal:
        raise ConfigError(
            f"reproduce: the bump hunt of run {run!r} needs it trained on background with {signal!r} mixed in: "
            f"give the run contaminated: true and contamination: {{signal: {signal}, fraction: 0.001}}"
        )
    stored = results.read_run(study.store, run)
    bkg, sig = stored["samples"][stored["background"]], stored["samples"][signal]
    n_bkg, n_avail = len(bkg["score"]), len(sig["score"])
    n_sig = min(n_avail, max(1, contamination_needs(n_bkg, c.fraction)))
    rng = np.random.default_rng([study.seed % 2**63, zlib.crc32(f"bumphunt/{run}/{signal}".encode())])
    pick = np.sort(rng.choice(n_avail, size=n_sig, replace=False)) if n_avail else np.zeros(0, np.int64)
    mass = np.r_[bkg["mass"], sig["mass"][pick]].astype(np.float64)
    score = np.r_[bkg["score"], sig["score"][pick]]
    label = np.r_[np.zeros(n_bkg, np.int64), np.ones(n_sig, np.int64)]
    mix = (f"test 'data': all {n_bkg} test {stored['background']} + {n_sig} of the {n_avail} test {signal} jets "
           f"(the training fraction {c.fraction:g}{'; at least one' if n_sig > contamination_needs(n_bkg, c.fraction) else ''})")
    out = {"result": None, "mass": mass, "score": score, "label": label, "n_signal": n_sig, "n_background": n_bkg}
    try:
        window = bumphunt.signal_window(sig["mass"])  # all test signal jets place the window
        try:
            result = bumphunt.bump_hunt(mass, score, label, window_gev=window)
            fit_note = ""
        except ConfigError as exc:  # the sideband fit after the cut needs more jets than the sample has
            result = bumphunt.bump_hunt(mass, score, label, window_gev=window, fit=False)
            fit_note = f"no sideband fit: {str(exc).removeprefix('bump hunt: ')}"
    except ConfigError as exc:
        out["note"] = f"{mix}; no bump hunt: {str(exc).removeprefix('bump hunt: ')}"
        return out
    lo, hi = result["window_gev"]
    b, a = result["before"], result["after"]
    note = [mix, f"window {lo:.0f}-{hi:.0f} GeV (the central 68% of the test {signal} masses)",
            f"loss cut at {result['rejection']:g}x {stored['background']} rejection (its loss quantile, truth labels) "
            f"keeps {result['background_kept']:.2g} of {stored['background']}, {result['signal_kept']:.2g} of {signal}",
            f"in the window S / B = {b['s']} / {b['b']} before, {a['s']} / {a['b']} after; band: Poisson"]
    fit = result["fit"]
    if fit is not None:
        note.append(f"sideband fit after the cut (exp, {fit['sidebands_gev'][0]:.0f}-{fit['sidebands_gev'][1]:.0f} GeV, "
                    f"chi2/ndf {fit['chi2']:.1f}/{fit['ndf']}): B_fit = {fit['b_fit']:.1f} +- {fit['b_fit_err']:.1f}, "
                    f"S_fit = {fit['s_fit']:.1f} +- {fit['s_fit_err']:.1f} (observed {fit['observed']})")
    if fit_note:
        note.append(fit_note)
    out.update(result=result, note="; ".join(note))
    return out


def _with_bump_hunt(rows: list[dict], signal: str, hunt: dict) -> list[dict]:
    """The run's result rows with the bump hunt's S/B (and its Poisson band) on ``signal``'s row."""
    res = hunt["result"]
    out = []
    for row in rows:
        if row.get("signal") == signal:
            row = {**row, "n_signal": hunt["n_signal"], "n_background": hunt["n_background"]}
            for metric, key in zip(BUMP_METRICS, ("before", "after")):
                row[metric] = res[key]["s_over_b"] if res else float("nan")
                row[f"{metric}_std"] = res[key]["s_over_b_err"] if res else float("nan")
        out.append(row)
    return out


def _plot_bump_hunt(name: str, run: str, signal: str, hunt: dict, out: Path) -> Path:
    """Jet-mass spectra of the mixed test sample before and after the loss cut, the window and the sideband fit."""
    from jetscan.core.bumphunt import fitted_counts
    from jetscan.jobs import report as rep

    matplotlib, Figure, Canvas, _, _style = rep.mpl_parts()
    res, mass, label = hunt["result"], hunt["mass"], hunt["label"].astype(bool)
    lo, hi = res["window_gev"]
    keep = hunt["score"] > res["threshold"]
    top = max(float(np.quantile(mass, 0.999)), hi + 2 * (hi - lo))
    edges = np.linspace(0.0, top, 61)
    fig = Figure(figsize=(8.0, 3.2))
    for i, (sel, title, fit) in enumerate(((np.ones_like(keep), "no cut", res["fit_before"]),
                                          (keep, f"loss cut: {res['rejection']:g}x QCD rejection", res["fit"]))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.hist([mass[sel & ~label], mass[sel & label]], bins=edges, stacked=True, histtype="stepfilled",
                color=["tab:blue", "tab:orange"], alpha=0.7, label=["background", signal])
        ax.axvspan(lo, hi, color="grey", alpha=0.15, label="window")
        if fit is not None:
            a, b = fit["sidebands_gev"]
            fine = np.linspace(a, b, 41)
            scale = (edges[1] - edges[0]) / (fine[1] - fine[0])
            ax.plot(0.5 * (fine[1:] + fine[:-1]), fitted_counts(fit, fine) * scale, color="black", lw=1.2,
                    label=f"sideband fit: S_fit = {fit['s_fit']:.0f} +- {fit['s_fit_err']:.0f}")
        w = res["before" if i == 0 else "after"]
        ax.set_title(f"{title}: S/B = {w['s']}/{w['b']}", fontsize=8)
        ax.set_xlabel("jet mass [GeV]", fontsize=8)
        ax.set_ylabel("jets / bin", fontsize=8)
        if i == 0:
            ax.set_yscale("log")
        _small_text(ax, legend_size=6)
    fig.suptitle(f"{name}: bump hunt on {run} (sec. 6)", fontsize=9)
    return _save_png(fig, Canvas, out / f"{name}-{rep.safe_name(f'bump-hunt-mass-{run}')}.png")


def _small_text(ax, legend_size: int = 7) -> None:
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=legend_size, loc="best")


def _save_png(fig, canvas, path: Path) -> Path:
    """The committed plots' format: tight, 80 dpi PNG."""
    fig.tight_layout()
    canvas(fig)
    fig.savefig(path, dpi=80, format="png")
    return path


def _mass_correlation(study: Study, name: str) -> dict | None:
    """The preset's loss-vs-jet-mass figure (:data:`jetscan.core.reference.MASS_CORRELATION`): for
    each of its runs whose results this store holds, the mean background jet mass in the ten
    equal-population bins of the run's test loss (evaluation's ``mass_vs_score``), ``"curves"``;
    the runs without results here, ``"missing"``; their ``"background"`` sample. None for a
    preset without that figure."""
    from jetscan.core.errors import StorageError
    from jetscan.core.reference import MASS_CORRELATION
    from jetscan.storage import results

    spec = MASS_CORRELATION.get(name)
    if spec is None:
        return None
    curves, missing, background = {}, [], "background"
    for run in spec["runs"]:
        try:
            stored = results.read_run(study.store, run)
        except StorageError:
            missing.append(run)
            continue
        mvs = stored["mass_vs_score"].get(stored["background"])
        if mvs is None:
            missing.append(run)
            continue
        curves[run], background = {k: np.asarray(v) for k, v in mvs.items()}, stored["background"]
    return {**spec, "curves": curves, "missing": missing, "background": background}


def _mass_correlation_lines(corr: dict) -> list[str]:
    lines = ["", "## Loss and jet mass", "",
             f"Paper ({corr['paper']}): {corr['what']}. Ours: the mean {corr['background']} jet mass (GeV) of the test "
             "split in ten equal-population bins of each run's loss, lowest loss first (evaluation's "
             "`mass_vs_score`)."]
    if corr["curves"]:
        n = max(len(c["mean_mass"]) for c in corr["curves"].values())
        lines += ["", "| run | " + " | ".join(f"{100 * i // n}-{100 * (i + 1) // n} %" for i in range(n)) + " |",
                  "|---|" + "---|" * n]
        lines += [f"| {run} | " + " | ".join(_fmt(float(m), 3) for m in c["mean_mass"]) + " |"
                  for run, c in corr["curves"].items()]
    if corr["missing"]:
        lines += ["", f"No results in this store for {', '.join(corr['missing'])} (not run here, or carried "
                  "from the ledger, which keeps metrics, not curves)."]
    return lines


def _plot_mass_correlation(name: str, corr: dict, out: Path) -> Path:
    """Mean background jet mass against the loss percentile, one line per run."""
    from jetscan.jobs import report as rep

    matplotlib, Figure, Canvas, _, _style = rep.mpl_parts()
    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.add_subplot(111)
    for run, c in corr["curves"].items():
        n = len(c["mean_mass"])
        ax.plot(100.0 * (np.arange(n) + 0.5) / n, c["mean_mass"], marker="o", ms=3, label=run)
    ax.set_xlabel(f"loss bin: percentile of the test {corr['background']} jets' loss", fontsize=8)
    ax.set_ylabel(f"mean {corr['background']} jet mass [GeV]", fontsize=8)
    ax.set_title(f"{name}: loss and jet mass", fontsize=9)
    _small_text(ax)
    return _save_png(fig, Canvas, out / f"{name}-mass-vs-loss.png")


def size_scan(preset: str, refs: list[dict], rows_by_run: dict[str, list[dict]],
              run_costs: Iterable[dict] = ()) -> dict | None:
    """The preset's training-size scan (:data:`jetscan.core.reference.SIZE_SCAN`): for each of its
    runs with results, its training jets and each column's value and band (the columns: the
    reference rows of the scan's largest run, signal and metric); per column, the least-squares
    change per doubling of the training jets and the log-linear fit's value at the paper's size,
    each with its uncertainty from the bands (exact linear propagation; one training per size, so
    the spread over trainings is not in it), and where the fit is above the paper's value by more
    than the agreement bands, the training jets at which it meets that value (``passes_paper``,
    ``meets_paper_at_jets``). None for a preset without a scan."""
    spec = SIZE_SCAN.get(preset)
    if spec is None:
        return None
    columns = [(r["signal"], r["metric"], r["value"]) for r in refs if tuple(r["runs"]) == (spec["runs"][-1],)]
    costs = {c["run"]: c for c in run_costs}
    points, missing = [], []
    for run in spec["runs"]:
        by_signal = {r.get("signal"): r for r in rows_by_run.get(run, [])}
        if not columns or any(sig not in by_signal for sig, _, _ in columns):
            missing.append(run)
            continue
        values = {(sig, m): (float(by_signal[sig][m]), float(by_signal[sig].get(f"{m}_std", math.nan)))
                  for sig, m, _ in columns}
        jets = int(by_signal[columns[0][0]].get("n_train_jets") or costs.get(run, {}).get("train_jets", 0))
        points.append({"run": run, "jets": jets, "values": values, "cost": costs.get(run)})
    points.sort(key=lambda p: p["jets"])
    fits = {}
    if len(points) > 1 and len({p["jets"] for p in points}) > 1:
        x = np.log2([p["jets"] for p in points])
        dx, target = x - x.mean(), math.log2(spec["paper_jets"]) - x.mean()
        slope_c = dx / float(np.sum(dx**2))  # slope = sum(slope_c * y); the fit at X = sum(at_c * y)
        at_c = 1.0 / len(x) + slope_c * target
        for sig, m, paper in columns:
            y = np.array([p["values"][(sig, m)][0] for p in points])
            sd = np.array([p["values"][(sig, m)][1] for p in points])
            at, at_sd = float(at_c @ y), float(np.sqrt(np.sum(at_c**2 * sd**2)))
            slope = float(slope_c @ y)
            fits[(sig, m)] = {"slope": slope, "slope_sd": float(np.sqrt(np.sum(slope_c**2 * sd**2))),
                              "at_paper": at, "at_paper_sd": at_sd, "paper": paper,
                              # an efficiency cannot pass 1: a fit beyond it says the trend cannot hold that far
                              "beyond_one": at > 1.0,
                              "reaches_paper": bool(abs(at - paper) <= AGREE_BANDS * at_sd) and at <= 1.0,
                              # above the paper at its size: the training jets where the rising fit meets its value
                              "passes_paper": bool(at - paper > AGREE_BANDS * at_sd) and at <= 1.0,
                              "meets_paper_at_jets": (2.0 ** min(1000.0, x.mean() + (paper - float(np.mean(y))) / slope)
                                                      if slope > 0 else None)}  # None: a flat or falling fit
    return {**spec, "columns": columns, "points": points, "missing": missing, "fits": fits}


def _size_scan_lines(scan: dict) -> list[str]:
    cols = scan["columns"]
    head = " | ".join(f"{sig} {METRIC_NAMES.get(m, m)}" for sig, m, _ in cols)
    lines = ["", "## Training size", "",
             f"The {scan['model']} on growing subsets of the training jets, each tested on the whole test split: how "
             f"much of its gap to the paper ({scan['paper']}: {scan['paper_jets']} training jets, {scan['paper_note']}) "
             "the subset's size explains. Value ± band (the test subsamples' alone: one training per size, each with "
             "its own subset and initialisation, so the spread over trainings is not in it; at a fixed number of "
             "epochs a larger subset also takes more optimiser steps).", "",
             f"| run | training jets | epochs run | best epoch | {head} |", "|---|---|---|---|" + "---|" * len(cols)]
    for p in scan["points"]:
        c = p["cost"] or {}
        lines.append(f"| {p['run']} | {p['jets']} | {c.get('epochs_run', '')} | {c.get('best_epoch', '')} | "
                     + " | ".join(f"{_fmt(p['values'][(s, m)][0])} ± {_fmt(p['values'][(s, m)][1], 2)}"
                                  for s, m, _ in cols) + " |")
    lines.append(f"| paper | {scan['paper_jets']} |  |  | " + " | ".join(f"{v:g}" for _, _, v in cols) + " |")
    if scan["fits"]:
        lines += ["", f"Per doubling of the training jets (least-squares slope against log2 of the jets), and the "
                  f"log-linear fit continued to the paper's {scan['paper_jets']} jets (an extrapolation: it assumes "
                  f"the trend holds beyond the largest subset; the paper's value within {AGREE_BANDS:g} of its bands: "
                  "*reached*):", "",
                  f"| | {head} |", "|---|" + "---|" * len(cols),
                  "| change per doubling | " + " | ".join(
                      f"{scan['fits'][(s, m)]['slope']:+.3g} ± {_fmt(scan['fits'][(s, m)]['slope_sd'], 2)}"
                      for s, m, _ in cols) + " |",
                  f"| fit at {scan['paper_jets']} jets | " + " | ".join(
                      f"{_fmt(f['at_paper'])} ± {_fmt(f['at_paper_sd'], 2)} (paper {f['paper']:g}: "
                      + _fit_verdict(f) + ")"
                      for f in (scan["fits"][(s, m)] for s, m, _ in cols)) + " |"]
    if scan["missing"]:
        lines += ["", f"No results for {', '.join(scan['missing'])} (not run yet)."]
    return lines


def _fit_verdict(fit: dict) -> str:
    """What the size fit says of the paper's value: reached, passed (the fit meets it at fewer
    jets than the paper's: where, to two figures; or a falling fit above it at every size), not
    reached, or a fit beyond 1."""
    if fit["beyond_one"]:
        return "above 1: the trend cannot hold that far"
    if fit["reaches_paper"]:
        return "reached"
    if fit["passes_paper"]:
        if fit["meets_paper_at_jets"] is None:  # a flat or falling fit, above the paper's value throughout
            return "above it at every size"
        jets = float(f"{fit['meets_paper_at_jets']:.2g}")
        return f"passed: the fit meets it at about {jets:.0f} training jets"
    return "not reached"


def _plot_size_scan(name: str, scan: dict, out: Path) -> Path:
    """Each column's value against the training jets (log scale), with its band, the log-linear
    fit continued to the paper's size, and the paper's value there."""
    from jetscan.jobs import report as rep

    matplotlib, Figure, Canvas, _, _style = rep.mpl_parts()
    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.add_subplot(111)
    jets = np.array([p["jets"] for p in scan["points"]], dtype=float)
    for i, (sig, m, paper) in enumerate(scan["columns"]):
        color = f"C{i}"
        label = f"{sig} {METRIC_NAMES.get(m, m)}"
        y = [p["values"][(sig, m)][0] for p in scan["points"]]
        sd = [p["values"][(sig, m)][1] for p in scan["points"]]
        ax.errorbar(jets, y, yerr=np.nan_to_num(sd), fmt="o", ms=3, capsize=2, color=color, label=label)
        fit = scan["fits"].get((sig, m))
        if fit:
            xs = np.array([jets.min(), scan["paper_jets"]], dtype=float)
            ax.plot(xs, fit["at_paper"] + fit["slope"] * np.log2(xs / scan["paper_jets"]), ":", color=color, lw=1)
        ax.plot([scan["paper_jets"]], [paper], "s", color=color, mfc="none")
    ax.set_xscale("log")
    ax.set_xlabel("training jets (squares: the paper's values; dotted: log-linear fit)", fontsize=8)
    ax.set_ylabel(_size_scan_ylabel(scan), fontsize=8)
    ax.set_title(f"{name}: {scan['model'].split(' (')[0]} vs training size", fontsize=9)
    _small_text(ax, legend_size=6)
    return _save_png(fig, Canvas, out / f"{name}-training-size.png")


def _size_scan_ylabel(scan: dict) -> str:
    """The size plot's y axis: "signal efficiency" for E10 / E100 (farina), else the metrics' names
    (a tagger's accuracy and AUC are not efficiencies)."""
    metrics = [m for _, m, _ in scan["columns"]]
    if all(m in ("e10", "e100") for m in metrics):
        return "signal efficiency"
    return ", ".join(dict.fromkeys(METRIC_NAMES.get(m, m) for m in metrics))


def _model_representation(study: Study, run: str) -> str:
    from jetscan.core.models import build_model

    cfg = study.run(run)
    return build_model(cfg.model, **cfg.hyper)[1].representation


# --------------------------------------------------------------------------------------
# the table and the plots


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}"
    return str(v)


def _plot(name: str, fig_id: str, rows: list[dict], out: Path) -> Path | None:
    from jetscan.jobs import report as rep

    matplotlib, Figure, Canvas, _, _style = rep.mpl_parts()
    fig = Figure(figsize=(1.2 + 1.1 * len(rows), 3.2))
    ax = fig.add_subplot(111)
    x = np.arange(len(rows))
    paper = [r["value"] for r in rows]
    ours = [r["ours"] for r in rows]
    band = [r["band"] if math.isfinite(r["band"]) else 0.0 for r in rows]
    ax.plot(x - 0.1, paper, "s", color="tab:red", label="paper")
    for i, r in enumerate(rows):
        if r.get("range"):
            ax.vlines(i - 0.1, *r["range"], color="tab:red")
    ax.errorbar(x + 0.1, ours, yerr=band, fmt="o", color="black", capsize=3, label="jetscan (band: 10 test subsamples)")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{'+'.join(r['runs']) if len(r['runs']) == 1 else r['runs'][0].rsplit('_', 1)[0]}\n"
                        f"{r['signal']} {METRIC_NAMES.get(r['metric'], r['metric'])}" for r in rows], fontsize=7)
    ax.set_title(f"{name}: {fig_id}", fontsize=9)
    _small_text(ax)
    return _save_png(fig, Canvas, out / f"{name}-{rep.safe_name(fig_id)}.png")


def write_table(study: Study, name: str, rows: list[dict], out: Path, *, shrink: float | None = None,
                timings: dict | None = None, extra_pngs: Iterable[Path] = (),
                costs: dict | None = None, ledger_name: str | None = None,
                mass_correlation: dict | None = None, size_scan: dict | None = None) -> tuple[Path, list[Path]]:
    """``<out>/<name>.md`` and ``<out>/<name>-<figure>.png`` (and ``extra_pngs``, drawn before); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = list(extra_pngs)
    for fig_id in dict.fromkeys(r["id"] for r in rows):
        group = [r for r in rows if r["id"] == fig_id and math.isfinite(r["ours"])]
        if group:
            pngs.append(_plot(name, fig_id, group, out))
    sizes = _split_sizes(study)
    lines = [f"# {name}: the seed paper's figures next to jetscan's", ""]
    if shrink is not None:
        lines += [f"**SHRUNK by --shrink {shrink:g}: sample sizes and epochs scaled down (a smoke run). "
                  "These numbers say nothing about the physics.**", ""]
    lines += [
        f"Made by `jetscan reproduce {name}{f' --shrink {shrink:g}' if shrink is not None else ''}` on "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from the study `{study.name}` "
        f"(store `{Path(study.store).name}`); never edited by hand.",
        "",
        *([f"Rows whose notes say *carried* come from the ledger `{ledger_name}` beside this table (results of "
           "earlier invocations whose store is not here, used only while the run's settings and the samples' "
           "are unchanged: `jetscan.storage.ledger`).", ""] if ledger_name else []),
        "Ours: the metric on the whole test split; band: the standard deviation over 10 disjoint test subsamples "
        "(for repeated trainings, the mean over the runs, the band combined in quadrature with their spread). "
        "Pull: (ours - paper) / band, measured from the nearer edge of a published range or of the rounding of a "
        "quoted value (0.89 stands for 0.885-0.895), 0 inside it; "
        f"verdict: agrees within {AGREE_BANDS:g} bands. "
        "Our detector model is not Delphes: expect agreement in trend and rough size.",
        "",
        "| figure | paper | run(s) | signal | metric | paper value | paper sizes | ours | band | pull | verdict | our sizes | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{r['range'][0]:g}-{r['range'][1]:g}" if r.get("range") else f"{r['value']:g}"
        notes = [r["note"]] if r.get("note") else []
        if r["missing"]:
            notes.append(f"no results for {', '.join(r['missing'])}")
        lines.append("| " + " | ".join([
            r["id"], r["what"], ", ".join(r["runs"]), r["signal"], METRIC_NAMES.get(r["metric"], r["metric"]), value,
            r["paper_size"], _fmt(r["ours"]), _fmt(r["band"], 2), _fmt(r["pull"], 2), r["verdict"], r["our_size"],
            "; ".join(notes),
        ]).replace("\n", " ") + " |")
    lines += ["", "## Samples", "", "| sample | process | jets | train | val | test |", "|---|---|---|---|---|---|"]
    for s, n in sizes.items():
        lines.append(f"| {s} | {study.sample(s).process} | {n['jets']} | {n['train']} | {n['val']} | {n['test']} |")
    if mass_correlation:
        lines += _mass_correlation_lines(mass_correlation)
    if size_scan:
        lines += _size_scan_lines(size_scan)
    if costs:
        lines += _cost_lines(costs)
    if timings:
        lines += ["", "## Wall time (this invocation; work done before is reused)", "",
                  "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path, pngs


def _precision_mark(cost: dict) -> str:
    """'' for a run trained in float32 (and for entries from before precision was recorded), else
    ' (bfloat16)' (or the mix, where resumes changed it)."""
    precision = cost.get("precision", "float32")
    return "" if precision == "float32" else f" ({precision})"


def _cost_lines(costs: dict) -> list[str]:
    lines = []
    if costs.get("samples"):
        lines += ["", "## Cost: generation (recorded per shard in the catalog; one worker per shard)", "",
                  "| sample | shards | jets | worker-seconds | median ms per jet |", "|---|---|---|---|---|"]
        lines += [f"| {c['sample']} | {c['shards']} | {c['jets']} | {c['seconds']:.0f} | {c['ms_per_jet_median']:.1f} |"
                  for c in costs["samples"]]
        median_s = sum(c["ms_per_jet_median"] * c["jets"] for c in costs["samples"]) / 1e3
        lines += ["", f"At the median shard speed the samples take {median_s:.0f} worker-seconds "
                  "(the sum above also counts shards slowed by other work on the machine)."]
    if costs.get("runs"):
        lines += ["", "## Cost: training (recorded in each run's checkpoint)", "",
                  "Seconds: every epoch's wall time summed, over resumed calls too (a run that shared the machine "
                  "with other work counts that wait); the median epoch is the steadier figure.", "",
                  "| run | seconds | median s per epoch | epochs run | best epoch | training jets | workers |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['run']}{' (carried)' if c.get('carried') else ''}{_precision_mark(c)} | {c['seconds']:.0f} | "
                  f"{_fmt(c['median_epoch_s'], 3)} | {c['epochs_run']} | "
                  f"{c['best_epoch']} | {c['train_jets']} | {c['world_size']} |" for c in costs["runs"]]
        if any(_precision_mark(c) for c in costs["runs"]):
            lines += ["", "Runs marked (bfloat16) took their training steps under bfloat16 autocast (train.amp_cpu on the "
                      "CPU, train.amp on CUDA); their validation and evaluation ran in float32, as every other run's did."]
    return lines


# --------------------------------------------------------------------------------------
# command line


def add_commands(app) -> None:
    """``jetscan reproduce``."""
    import typer

    @app.command("reproduce")
    def reproduce_cmd(
        preset: str = typer.Argument(..., metavar="PRESET", help="a preset of studies/ (heimel-top, farina, ...) or a study file"),
        shrink: Optional[float] = typer.Option(None, "--shrink", help="scale sample sizes and epochs by F (smoke runs)"),
        workers: Optional[int] = typer.Option(None, "--workers", help="Ray workers for generation and preprocessing"),
        out: Path = typer.Option(Path("docs/results"), "--out", help="folder of the table and plots"),
        store: Optional[str] = typer.Option(None, "--store", help="another store for the study"),
        run: Optional[list[str]] = typer.Option(None, "--run", help="only these runs (and their reference rows)"),
        no_ray: bool = typer.Option(False, "--no-ray", help="generate and preprocess in this process"),
    ) -> None:
        """Run a seed paper's preset and write docs/results/PRESET.md: the paper's figures next to ours.

        Started with JETSCAN_STOP_SIGNALS=USR1, `kill -USR1 PID` ends the call after the epoch in
        progress (checkpoint written, exit 75); the next call resumes there."""
        from rich.console import Console

        from jetscan.cluster import preempt

        console = Console(stderr=True, soft_wrap=True, markup=False)  # a line per line in a log file; paths and names verbatim
        result = reproduce(preset, shrink=shrink, workers=workers, out_dir=out, store=store, runs=run,
                           use_ray=not no_ray, echo=console.print, should_stop=preempt.from_env())
        if result.get("preempted"):
            sys.exit(preempt.PREEMPTED_EXIT)
        for r in result["rows"]:
            console.print(f"  {r['id']}: {', '.join(r['runs'])} {r['signal']} {r['metric']}: paper {r['value']:g}, "
                          f"ours {_fmt(r['ours'])} +- {_fmt(r['band'], 2)}: {r['verdict']}")
        console.print(f"table: {result['table']} ({result['seconds']:.0f} s)")
