"""Stage: contamination and systematics scans on Dask (``jetscan scan STUDY.yaml NAME``).

The whole story of the stage:

1. The study's ``scan.<NAME>`` section (:mod:`jetscan.core.scan_space`) was validated with the
   study: runs, run parameters, fractions (enough signal jets in the splits), repeats,
   variations (what the generator can express). :func:`plan_scan` then builds every derived
   study (Pythia settings of every variant checked) and creates the variant samples' arrays in
   the store one after another in this process (the store refuses a changed sample), before
   any task starts.
2. The graph (:func:`jetscan.cluster.dask.run_graph`): one ``generate`` task per variant with
   missing shards (``jetscan.jobs.generate.generate`` in the worker, no Ray); one ``train`` task
   per training (run x params x fraction x repeat x training variant), waiting for its variant's
   samples; one ``evaluate`` task per cell (training x test variant), waiting for its training
   and its test variant's samples. A training is a real run named
   ``<scan>-<run>-<hash of the cell settings>`` (so its seed differs per repeat, and the same
   settings are always the same run; the hash covers the base run's settings as the study file
   has them now, so editing the run, a sample or a variation gives new runs, not a clash with
   the old checkpoints); cells are stored like any run in ``<store>/results/<cell>``
   and ``<store>/_results/<cell>.parquet`` with the extra columns ``scan``, ``cell``, ``repeat``,
   ``fraction``, ``train_variant``, ``test_variant``, ``fpr_at_cut``, ``param_<path>`` and
   ``run_settings_hash`` (the cell's hash: a cell whose results carry it is not computed again,
   :func:`jetscan.storage.results.rows_with_results`; a killed scan re-run resumes, training
   from its epoch checkpoints).
3. Aggregation: the parquet files of the cells that are done (results with their current
   settings hash: no failed cell's rows from older settings) read with ``dask.dataframe`` in
   the driver's threads (a few kB per cell) into the tidy table (one row per cell x signal, the axes as columns),
   ``<store>/_scan/<NAME>.parquet``, and the band table over repeats
   (``<store>/_scan/<NAME>-bands.parquet``); ROC curves with bootstrap bands from the stored
   per-jet scores on the cluster, one Dask task per run of cells reading their score arrays (:func:`roc_bands`; ``dask.array``
   reads measured slower than a numpy loop) (``<store>/_scan/<NAME>-roc.parquet``).
4. The report ``<report>/scan-<NAME>/index.html`` (linked from the study report): E10, E100,
   AUC and 1/eps_B vs contamination with bands over repeats; AUC and QCD mass sculpting vs the
   adversary's lambda; the train-variant x test-variant matrix of AUC and of the QCD
   false-positive rate at a fixed loss cut as heat maps; ROC bands.

A failing task is reported with its error (its dependents as skipped) and the rest of the grid
completes; the command then exits non-zero naming the failed cells.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jetscan.core.errors import ConfigError, RunnerError
from jetscan.core.scan_space import (
    NOMINAL,
    ScanConfig,
    base_sample,
    cell_name,
    cell_study_data,
    variant_sample,
    variant_study_data,
)
from jetscan.core.study import Study, settings_hash
from jetscan.jobs import report

__all__ = [
    "SCAN_DIR",
    "scan_config",
    "plan_scan",
    "scan",
    "aggregate",
    "roc_bands",
    "roc_band_numpy",
    "write_scan_report",
    "add_commands",
]

SCAN_DIR = "_scan"
#: eps_B grid of the stored ROC bands (log-spaced, as the seed papers plot 1/eps_B)
EPS_B_GRID = np.geomspace(1e-3, 1.0, 60)
N_SCORE_BINS = 1024
AXIS_COLUMNS = ["scan", "cell", "training", "model", "fraction", "repeat", "train_variant", "test_variant"]


def scan_config(study: Study, name: str) -> ScanConfig:
    try:
        return study.scan[name]
    except KeyError:
        raise ConfigError(
            f"scan: no scan named {name!r} in study {study.name!r}; scans: {', '.join(study.scan) or 'none'} "
            "(add one under scan: in the study file)"
        ) from None


def _param_column(path: str) -> str:
    return "param_" + path.replace(".", "_")


# --------------------------------------------------------------------------------------
# the plan: derived studies, trainings and cells


def _needed_samples(study: Study, cfg: ScanConfig) -> list[str]:
    """Base samples the scan reads: the runs' training samples, the contamination signal, every signal."""
    names: list[str] = []
    for run in cfg.runs:
        names += list(study.run(run).samples)
    if cfg.signal:
        names.append(cfg.signal)
    names += [s for s in study.samples if study.sample(s).is_signal]
    return list(dict.fromkeys(names))


def plan_scan(study: Study, name: str, *, threads: int = 1) -> dict:
    """Everything the graph runs, derived and checked before any work (no task started).
    ``threads``: torch threads of each training and evaluation (not part of any settings hash)."""
    cfg = scan_config(study, name)
    base = study.model_dump(mode="json")
    variants = {v: Study.from_dict(variant_study_data(base, cfg, v), source=f"scan {name!r} variant {v!r}")
                for v in cfg.variants}
    needed = _needed_samples(study, cfg)
    trainings, cells = [], []
    for run in cfg.runs:
        for params in cfg.param_points():
            for fraction in cfg.fractions:
                for repeat in range(cfg.repeats):
                    for tv in cfg.variants:
                        cell = {"run": run, "params": params, "fraction": fraction, "train_variant": tv}
                        settings = _training_settings_hash(base, cfg, cell)
                        tname = cell_name(name, run, params, fraction, repeat, tv, settings)
                        data = cell_study_data(base, cfg, **cell, name=tname, threads=threads)
                        trainings.append({"run": tname, "variant": tv, "study": data, "base_run": run})
                        axes = {"scan": name, "training": tname, "model": run, "fraction": float(fraction), "repeat": repeat,
                                "train_variant": tv, **{_param_column(k): v for k, v in params.items()}}
                        for test in (cfg.variants if cfg.matrix else [tv]):
                            cell = tname if test == tv else f"{tname}-on-{test}"
                            cells.append({"cell": cell, "train": tname, "train_variant": tv, "test_variant": test,
                                          "axes": {**axes, "cell": cell, "test_variant": test}})
    return {"config": cfg, "variants": variants, "samples": needed, "trainings": trainings, "cells": cells, "base": base}


def _training_settings_hash(base: dict, cfg: ScanConfig, cell: dict) -> str:
    """A hash of what a cell's training depends on apart from its name (``run_settings`` minus
    ``run``): the base run as the study file has it now, with the cell's axes applied."""
    from jetscan.core.run_settings import run_settings

    probe = "settings-probe"
    data = cell_study_data(base, cfg, **cell, name=probe)
    settings = run_settings(Study.from_dict(data, source="scan cell settings"), probe)
    settings.pop("run")
    return settings_hash(settings)


def _prepare_samples(plan: dict) -> dict[str, list[str]]:
    """Create every variant sample's arrays (serially, refusing a changed sample); the variants
    with shards still to make -> their sample names."""
    from jetscan.jobs.generate import plan as generation_plan

    todo: dict[str, list[str]] = {}
    for v, vstudy in plan["variants"].items():
        names = [variant_sample(s, v) for s in plan["samples"]]
        shards = generation_plan(vstudy, names)
        if shards:
            todo[v] = sorted({s.sample for s in shards})
    return todo


# --------------------------------------------------------------------------------------
# task bodies (run in Dask workers; everything they need travels as plain data)


def _generate_task(study_data: dict, samples: list[str]) -> int:
    from jetscan.jobs.generate import generate

    study = Study.from_dict(study_data, source="scan variant")
    return len(generate(study, samples=samples, use_ray=False))


def _train_task(study_data: dict, run: str) -> dict:
    import torch

    from jetscan.jobs.train import train

    study = Study.from_dict(study_data, source=f"scan training {run}")
    torch.set_num_threads(study.train.threads or 1)
    summary = train(study, run)
    return {"run": run, "best_val_loss": float(summary["best_val_loss"])}


def _cell_hash(train_study: Study, run: str, test_study: Study, test_samples: list[str], cut_fpr: float) -> str:
    from jetscan.core.run_settings import run_settings

    return settings_hash({
        "train": run_settings(train_study, run),
        "test": {s: settings_hash(test_study.generation_settings(s)) for s in test_samples},
        "cut_fpr": cut_fpr,
    })


def _evaluate_task(train_data: dict, run: str, test_data: dict, cell: str, axes: dict, cut_fpr: float,
                   _after: Any = None) -> list[dict]:
    """Evaluate training ``run`` on the test variant's samples; store the cell as run ``cell``."""
    import torch

    from jetscan.jobs.evaluate import evaluation_for, score_sample
    from jetscan.jobs.train import load_trained
    from jetscan.storage import results

    tstudy = Study.from_dict(train_data, source=f"scan training {run}")
    torch.set_num_threads(tstudy.train.threads or 1)
    estudy = Study.from_dict(test_data, source=f"scan cell {cell}")
    module, info, ckpt = load_trained(tstudy, run)
    cfg = tstudy.run(run)
    representation = cfg.representation or info.representation
    tv, test = axes["train_variant"], axes["test_variant"]
    train_bkg = tstudy.background_samples(run)
    base_bkg = [base_sample(s, tv) for s in train_bkg]
    test_bkg = [variant_sample(s, test) for s in base_bkg]
    signals = [s for s in estudy.samples if estudy.sample(s).is_signal]
    cell_hash = _cell_hash(tstudy, run, estudy, test_bkg + signals, cut_fpr)
    rows = results.rows_with_results(estudy.store, cell, cell_hash)
    if rows is not None:
        return rows
    if test == tv:
        evaluation = evaluation_for(tstudy, run)
        ref = evaluation["samples"][evaluation["background"]]["score"]
    else:
        from jetscan.jobs.evaluate import flat_config

        samples = {s: score_sample(estudy, module, info, representation, s)[0] for s in test_bkg[:1] + signals}
        ref = score_sample(tstudy, module, info, representation, train_bkg[0])[0]["score"]
        config = flat_config(tstudy, run, {**ckpt, "hyper": dict(info.hyper)})
        config["representation"] = representation
        evaluation = {"run": cell, "study": tstudy.name, "config": config, "kind": info.kind,
                      "background": test_bkg[0], "samples": samples, "signals": signals, "history": ckpt["history"]}
    evaluation["run"] = cell
    # the fixed loss cut: the score above which cut_fpr of the *training* variant's QCD test jets lie
    threshold = float(np.quantile(ref, 1.0 - cut_fpr))
    bkg_scores = evaluation["samples"][evaluation["background"]]["score"]
    evaluation["config"].update({
        **axes,
        "best_val_loss": float(ckpt["summary"]["best_val_loss"]),
        "cut_threshold": threshold,
        "fpr_at_cut": float(np.mean(bkg_scores >= threshold)),
        "run_settings_hash": cell_hash,
    })
    rows = results.summarise(evaluation)
    results.write_run(estudy.store, evaluation, rows)
    return rows


# --------------------------------------------------------------------------------------
# aggregation on Dask


def _store_path(study: Study, rel: str) -> str:
    return f"{study.store.rstrip('/')}/{rel}"


def aggregate_table(study: Study, cells: list[str], param_columns: list[str]):
    """The tidy table (pandas): the rows of ``cells`` (those committed) read with dask.dataframe
    in this process's threads.
    :func:`aggregate` passes the scan's current cells that are done (see :func:`_done_cells`)."""
    import dask.dataframe as dd
    import pandas as pd

    from jetscan.storage import blobs, results

    paths = [_store_path(study, f"{results.RESULTS_DIR}/{c}.parquet") for c in cells
             if blobs.exists(study.store, f"{results.RESULTS_DIR}/{c}.parquet")]
    columns = [*AXIS_COLUMNS, *param_columns, "run", "signal", "background", "n_background", "n_signal",
               "auc", "auc_std", "inv_eb_at_0p3", "inv_eb_at_0p3_std", "e10", "e10_std", "e100", "e100_std",
               "jsd_50", "jsd_80", "jsd_95", "fpr_at_cut", "best_val_loss"]
    if not paths:
        return pd.DataFrame(columns=columns)
    df = dd.read_parquet(paths, columns=columns, storage_options=study.storage_options or None)
    # read in this process's threads, not on the cluster: a cell's rows are a few kB, and a worker
    # would first import dask.dataframe (~1 s, measured: the scan's largest fixed cost after its cells)
    table = df.compute(scheduler="threads")
    # the signal's base name (variant suffix off) so a column of the matrix compares like with like
    table["signal_variant"] = table["signal"]
    base = [base_sample(s, v) for s, v in zip(table["signal"], table["test_variant"])]
    table["signal"] = pd.Series(base, index=table.index, dtype=table["signal"].dtype)
    return table.sort_values(["model", *param_columns, "fraction", "train_variant", "test_variant", "signal", "repeat"]).reset_index(drop=True)


def band_table(table, param_columns: list[str]):
    """Mean and standard deviation over repeats of every metric (the bands of the plots)."""
    keys = ["model", *param_columns, "fraction", "train_variant", "test_variant", "signal"]
    metrics = ["auc", "inv_eb_at_0p3", "e10", "e100", "jsd_50", "fpr_at_cut"]
    g = table.groupby(keys, dropna=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_sd")).join(g.size().rename("repeats"))
    return out.reset_index()


def _counts_band(cb: np.ndarray, cs: np.ndarray, grid: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """ROC eps_S at ``grid`` eps_B from binned scores, and its 16/84 % bootstrap band (Poisson
    resampling of the bin counts, i.e. of the jets up to the binning). Returns (3, len(grid))."""
    rng = np.random.default_rng(seed)
    boot_b = np.vstack([cb, rng.poisson(cb, size=(n_boot, cb.size))]).astype(float)
    boot_s = np.vstack([cs, rng.poisson(cs, size=(n_boot, cs.size))]).astype(float)
    # cut "score >= edge": the tail sums from the highest bin down
    tb = np.cumsum(boot_b[:, ::-1], axis=1)[:, ::-1] / np.maximum(boot_b.sum(1, keepdims=True), 1)
    ts = np.cumsum(boot_s[:, ::-1], axis=1)[:, ::-1] / np.maximum(boot_s.sum(1, keepdims=True), 1)
    curves = np.empty((n_boot + 1, grid.size))
    for i in range(n_boot + 1):  # n_boot + 1 small interpolations (vectorised over the grid)
        curves[i] = np.interp(grid, tb[i, ::-1], ts[i, ::-1])
    return np.vstack([curves[0], np.percentile(curves[1:], [16, 84], axis=0)])


def roc_band_numpy(bkg: np.ndarray, sig: np.ndarray, edges: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """The single-threaded reference of :func:`roc_bands` for one cell."""
    cb, _ = np.histogram(bkg, bins=edges)
    cs, _ = np.histogram(sig, bins=edges)
    return _counts_band(cb, cs, EPS_B_GRID, n_boot, seed)


def score_edges(lo: float, hi: float) -> np.ndarray:
    pad = 1e-9 + 1e-6 * abs(hi - lo)
    return np.linspace(lo - pad, hi + pad, N_SCORE_BINS + 1)


def _band_of_scores(bkg: np.ndarray, sig: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    edges = score_edges(float(min(bkg.min(), sig.min())), float(max(bkg.max(), sig.max())))
    return roc_band_numpy(bkg, sig, edges, n_boot, seed)


def _band_of_stored(bkg_url: str, sig_url: str, n_boot: int, seed: int, storage_options: dict | None = None) -> np.ndarray:
    import zarr

    kw = {"storage_options": storage_options} if storage_options else {}
    bkg = zarr.open_array(bkg_url, mode="r", **kw)[...]
    sig = zarr.open_array(sig_url, mode="r", **kw)[...]
    return _band_of_scores(bkg, sig, n_boot, seed)


def _bands_of_stored(items: list[tuple[str, str, int]], n_boot: int, storage_options: dict | None) -> list[np.ndarray]:
    return [_band_of_stored(b, s, n_boot, seed, storage_options) for b, s, seed in items]


def roc_bands(pairs: list[tuple[str, str]], n_boot: int, seed: int = 0, client=None,
              storage_options: dict | None = None, tasks_per_worker: int = 1) -> list[np.ndarray]:
    """ROC + bootstrap band of every (background scores, signal scores) pair of stored per-jet
    score arrays (zarr URLs). Each Dask task reads and reduces a run of consecutive pairs,
    ``tasks_per_worker`` tasks per worker (the pair ``i`` always gets seed ``seed + i``, so the
    bands do not depend on the grouping or the number of workers). The cells of a scan share
    one test set, so their costs are equal and one run of cells per worker balances; a worker
    lost mid-way has its run redone by another.

    Why not ``dask.array.from_zarr`` per array: its read tasks hand 100k-score arrays to the
    reducing task, often on the other worker, and the driver opens every array to build the
    graph; on 100 cells x 100k jets that made the Dask run 2-4x *slower* than a numpy loop
    (benchmarks/scan.py, 2 workers), while reading inside the reducing task keeps the bytes
    where they are read. Why groups of pairs: one cell takes ~25 ms, and 100 cells on 2 workers
    took 1.1-1.25 s as 2 tasks, 1.2-1.5 s as 8 to 50 tasks (benchmarks/scan.py)."""
    import dask

    n_workers = len(client.scheduler_info().get("workers", {})) if client is not None else 1
    n_tasks = max(1, min(len(pairs), tasks_per_worker * max(1, n_workers)))
    items = [(b, s, seed + i) for i, (b, s) in enumerate(pairs)]
    bounds = np.linspace(0, len(items), n_tasks + 1).round().astype(int)
    groups = [items[a:z] for a, z in zip(bounds[:-1], bounds[1:]) if z > a]
    tasks = [dask.delayed(_bands_of_stored)(g, n_boot, storage_options) for g in groups]
    out = dask.compute(*tasks, **({"scheduler": client} if client is not None else {}))
    return [band for group in out for band in group]


def _write_parquet(study: Study, rel: str, df) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jetscan.storage import blobs

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    blobs.write_atomic(study.store, rel, buf.getvalue())


def aggregate(study: Study, name: str, plan: dict, client=None) -> dict:
    """Tidy table, bands over repeats and ROC bands; written under ``<store>/_scan/``. Only the
    plan's cells whose stored results carry their current settings hash are read: a cell that
    failed now keeps no rows made with older settings (another cut, sample or variation)."""
    import pandas as pd

    from jetscan.storage import blobs

    cfg = plan["config"]
    pcols = [_param_column(k) for k in cfg.params]
    done = _done_cells(plan)  # not a failed cell's results from older settings
    table = aggregate_table(study, [c["cell"] for c in plan["cells"] if c["cell"] in done], pcols)
    _write_parquet(study, f"{SCAN_DIR}/{name}.parquet", table)
    bands = band_table(table, pcols) if len(table) else pd.DataFrame()
    _write_parquet(study, f"{SCAN_DIR}/{name}-bands.parquet", bands)
    pairs, labels = [], []
    for _, row in table.drop_duplicates(["cell", "signal_variant"]).iterrows():
        base = f"results/{row['cell']}/samples"
        b, s = f"{base}/{row['background']}/score", f"{base}/{row['signal_variant']}/score"
        if not (blobs.exists(study.store, f"{b}/zarr.json") and blobs.exists(study.store, f"{s}/zarr.json")):
            continue  # a cell stored without its scores: no ROC band for it
        pairs.append((_store_path(study, b), _store_path(study, s)))
        labels.append((row["cell"], row["signal"]))
    curves = roc_bands(pairs, cfg.n_boot, client=client, storage_options=study.storage_options or None) if pairs else []
    roc = pd.DataFrame([
        {"cell": c, "signal": sig, "eps_b": float(e), "eps_s": float(m), "eps_s_lo": float(lo), "eps_s_hi": float(hi)}
        for (c, sig), band in zip(labels, curves) for e, m, lo, hi in zip(EPS_B_GRID, *band)
    ])
    _write_parquet(study, f"{SCAN_DIR}/{name}-roc.parquet", roc)
    return {"table": table, "bands": bands, "roc": roc}


# --------------------------------------------------------------------------------------
# the driver


def scan(study: Study, name: str, *, workers: int = 1, scheduler: str | None = None, cluster: str | None = None,
         slurm: dict | None = None, report_dir: Path | None = None, echo=None, threads: int | None = None,
         worker_timeout_s: float | None = None, pin_cores: bool = True) -> dict:
    """Run (or resume) the scan; returns {"outcomes", "failed", "table", "bands", "roc", "report"?}.
    ``threads``: torch threads per task (default: the CPUs this process may use / ``workers`` on a
    local cluster, else 1). ``worker_timeout_s``: how long to wait for the first worker of an existing
    scheduler or of Slurm jobs (default :data:`jetscan.cluster.dask.WORKER_TIMEOUT_S`).
    ``pin_cores``: a local cluster's workers each run on their own block of CPUs (when there are
    ``threads`` for each)."""
    from jetscan.cluster.dask import WORKER_TIMEOUT_S, Task, check_client_options, open_client, run_graph
    from jetscan.cluster.local import usable_cpus
    from jetscan.storage import blobs

    worker_timeout_s = WORKER_TIMEOUT_S if worker_timeout_s is None else worker_timeout_s
    # before any work: planning and generating the variant samples can take long
    check_client_options(workers=workers, scheduler=scheduler, cluster=cluster, worker_timeout_s=worker_timeout_s)
    echo = echo or (lambda *_: None)
    blobs.use_storage_options(study.store, study.storage_options)
    if threads is None:
        threads = max(1, len(usable_cpus()) // workers) if scheduler is None and cluster is None else 1
    plan = plan_scan(study, name, threads=threads)
    cfg = plan["config"]
    todo = _prepare_samples(plan)
    tasks: list[Task] = []
    for v, names in todo.items():
        tasks.append(Task(f"generate-{v}", _generate_task, (plan["variants"][v].model_dump(mode="json"), names)))
    for t in plan["trainings"]:
        deps = (f"generate-{t['variant']}",) if t["variant"] in todo else ()
        tasks.append(Task(f"train-{t['run']}", _train_task, (t["study"], t["run"]), deps=deps))
    by_run = {t["run"]: t for t in plan["trainings"]}
    for c in plan["cells"]:
        deps = [f"train-{c['train']}"] + ([f"generate-{c['test_variant']}"] if c["test_variant"] in todo
                                            and c["test_variant"] != c["train_variant"] else [])
        test_data = plan["variants"][c["test_variant"]].model_dump(mode="json")
        tasks.append(Task(f"cell-{c['cell']}", _evaluate_task,
                          (by_run[c["train"]]["study"], c["train"], test_data, c["cell"], c["axes"], cfg.cut_fpr),
                          deps=tuple(deps)))
    # cells already evaluated with these settings skip their training task too
    done = _done_cells(plan)
    tasks = [t for t in tasks if not (t.key.startswith("train-") and all(c in done for c in _cells_of(plan, t.key[6:])))
             and t.key.removeprefix("cell-") not in done]
    tasks = [Task(t.key, t.fn, t.args, t.kwargs, tuple(d for d in t.deps if d in {x.key for x in tasks})) for t in tasks]
    t0 = time.perf_counter()
    with open_client(workers=workers, scheduler=scheduler, cluster=cluster, slurm=slurm,
                     worker_timeout_s=worker_timeout_s, threads_each=threads, pin_cores=pin_cores) as client:
        if tasks:  # every worker imports the training stack at once (~5 s each), before the first task
            client.run(_warm_worker)
        echo(f"scan {name}: {len(plan['cells'])} cells ({len(done)} done before), {len(tasks)} tasks to run "
             f"(workers ready in {time.perf_counter() - t0:.1f} s)")
        outcomes = run_graph(client, tasks, on_done=lambda k, o: echo(f"  {k}: {o['status']}"
                                                                      + (f" ({o['error']})" if o["status"] != "ok" else "")))
        agg = aggregate(study, name, plan, client=client)
    failed = {k: o for k, o in outcomes.items() if o["status"] != "ok"}
    out = {"outcomes": outcomes, "failed": failed, "cells": len(plan["cells"]), "reused": len(done),
           "seconds": time.perf_counter() - t0, **agg}
    if report_dir is not None:
        out["report"] = write_scan_report(study, name, agg, Path(report_dir), failed=failed)
    return out


def _warm_worker() -> None:
    """Import what the tasks run (torch, the models, training and evaluation) in a worker."""
    import jetscan.jobs.evaluate  # noqa: F401
    import jetscan.jobs.train  # noqa: F401


def _cells_of(plan: dict, run: str) -> list[str]:
    return [c["cell"] for c in plan["cells"] if c["train"] == run]


def _done_cells(plan: dict) -> set[str]:
    """Cells whose committed results carry their current settings hash (checked in the driver)."""
    from jetscan.core.run_settings import run_settings
    from jetscan.storage import results

    cfg = plan["config"]
    trainings = {t["run"]: t for t in plan["trainings"]}
    done = set()
    cache: dict[str, Study] = {}
    for c in plan["cells"]:
        t = trainings[c["train"]]
        tstudy = cache.get(t["run"]) or Study.from_dict(t["study"], source="scan training")
        cache[t["run"]] = tstudy
        estudy = plan["variants"][c["test_variant"]]
        test_samples = [variant_sample(s, c["test_variant"]) for s in study_bkg(plan, t["base_run"])] + [
            s for s in estudy.samples if estudy.sample(s).is_signal]
        h = settings_hash({
            "train": run_settings(tstudy, t["run"]),
            "test": {s: settings_hash(estudy.generation_settings(s)) for s in test_samples},
            "cut_fpr": cfg.cut_fpr,
        })
        if results.rows_with_results(estudy.store, c["cell"], h) is not None:
            done.add(c["cell"])
    return done


def study_bkg(plan: dict, run: str) -> list[str]:
    base = plan["variants"][NOMINAL]
    return base.background_samples(run)


# --------------------------------------------------------------------------------------
# report (the study report's plotting and HTML helpers, jetscan.jobs.report)

def write_scan_report(study: Study, name: str, agg: dict, out_dir: Path, *, failed: dict | None = None) -> Path:
    """``<out_dir>/scan-<name>/index.html`` with its PNGs and the band table."""
    import html

    cfg = scan_config(study, name)
    table, bands, roc = agg["table"], agg["bands"], agg["roc"]
    out = Path(out_dir) / f"scan-{name}"
    out.mkdir(parents=True, exist_ok=True)
    matplotlib, Figure, Canvas, _, style = report.mpl_parts()
    pngs: list[tuple[str, Path]] = []
    pcols = [_param_column(k) for k in cfg.params]

    def save(fig, fname: str, caption: str) -> None:
        Canvas(fig)
        fig.savefig(out / fname, dpi=report.DPI, format="png")
        pngs.append((caption, out / fname))

    diag = bands[bands["train_variant"] == bands["test_variant"]] if len(bands) else bands
    with matplotlib.style.context(style):
        nominal = diag[diag["train_variant"] == NOMINAL] if len(diag) else diag
        if len(cfg.fractions) > 1 and len(nominal):
            for metric, label in (("e10", "E10 (eps_S at eps_B = 10%)"), ("e100", "E100 (eps_S at eps_B = 1%)"),
                                  ("auc", "AUC"), ("inv_eb_at_0p3", "1/eps_B at eps_S = 0.3")):
                fig = Figure()
                ax = fig.add_subplot()
                for key, g in nominal.groupby(["model", *pcols, "signal"], dropna=False):
                    g = g.sort_values("fraction")
                    x = 100 * g["fraction"].to_numpy()
                    m, sd = g[f"{metric}_mean"].to_numpy(float), np.nan_to_num(g[f"{metric}_sd"].to_numpy(float))
                    lab = " ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
                    ax.plot(x, m, "o-", label=lab)
                    ax.fill_between(x, m - sd, m + sd, alpha=0.25)
                ax.set_xscale("symlog", linthresh=0.1)
                ax.set_xlabel(f"signal contamination of the training set (%), {cfg.signal}")
                ax.set_ylabel(f"{label} (band: ±1 sd over {cfg.repeats} repeats)")
                ax.legend(fontsize="small")
                save(fig, f"contamination_{metric}.png", f"{label} vs contamination")
        lam = "param_adversary_adv_lambda" if "param_adversary_adv_lambda" in pcols else (
            "param_adversary_lambda" if "param_adversary_lambda" in pcols else None)
        if lam and len(nominal):
            fig = Figure()
            ax = fig.add_subplot()
            ax2 = ax.twinx()
            for i, (key, g) in enumerate(nominal.groupby(["model", "fraction", "signal"], dropna=False)):
                g = g.sort_values(lam)
                x = g[lam].to_numpy(float)
                tag = f"{key[0]}, {100 * key[1]:g}% {key[2]}"
                ax.errorbar(x, g["auc_mean"], yerr=np.nan_to_num(g["auc_sd"].to_numpy(float)), fmt="o-", color=f"C{i}",
                            label=f"AUC ({tag})")
                ax2.errorbar(x, g["jsd_50_mean"], yerr=np.nan_to_num(g["jsd_50_sd"].to_numpy(float)), fmt="s--",
                             color=f"C{i}", alpha=0.6, label=f"QCD JSD ({tag})")
            positive = [float(x) for x in nominal[lam] if float(x) > 0]
            ax.set_xscale("symlog", linthresh=min(positive) if positive else 1e-6)
            ax.set_xlabel("adversary lambda")
            ax.set_ylabel("AUC (circles, solid)")
            ax2.set_ylabel("QCD mass JSD after a 50% cut (squares, dashed)")
            lines = ax.get_legend_handles_labels()
            more = ax2.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="x-small", loc="best")
            fig.subplots_adjust(right=0.82)
            save(fig, "lambda.png", "AUC and QCD mass sculpting vs lambda")
        if cfg.matrix and len(bands):
            variants = cfg.variants
            first = bands[(bands["fraction"] == cfg.fractions[0])]
            for key, g in first.groupby(["model", *pcols, "signal"], dropna=False):
                for metric, label in (("auc", "AUC"), ("fpr_at_cut", f"QCD false-positive rate at the cut ({cfg.cut_fpr:g} on train)")):
                    mat = np.full((len(variants), len(variants)), np.nan)
                    for _, r in g.iterrows():
                        mat[variants.index(r["train_variant"]), variants.index(r["test_variant"])] = r[f"{metric}_mean"]
                    fig = Figure()
                    ax = fig.add_subplot()
                    im = ax.imshow(mat, cmap="viridis")
                    fig.colorbar(im, ax=ax, label=label)
                    ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right")
                    ax.set_yticks(range(len(variants)), variants)
                    ax.set_xlabel("test variant")
                    ax.set_ylabel("train variant")
                    fig.subplots_adjust(bottom=0.22, left=0.2)
                    for i in range(len(variants)):
                        for j in range(len(variants)):
                            if np.isfinite(mat[i, j]):
                                ax.text(j, i, f"{mat[i, j]:.3g}", ha="center", va="center", color="w", fontsize="small")
                    tag = "_".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
                    save(fig, f"matrix_{metric}_{report.safe_name(tag)}.png", f"systematics matrix: {label} ({tag})")
        if len(roc):
            cells = table[(table["train_variant"] == NOMINAL) & (table["test_variant"] == NOMINAL) & (table["repeat"] == 0)]
            fig = Figure()
            ax = fig.add_subplot()
            for _, r in cells.drop_duplicates(["cell", "signal"]).head(12).iterrows():
                c = roc[(roc["cell"] == r["cell"]) & (roc["signal"] == r["signal"])]
                if len(c):
                    params = "".join(f" {k.removeprefix('param_')}={r[k]:g}" if isinstance(r[k], float) else f" {k.removeprefix('param_')}={r[k]}"
                                     for k in pcols)
                    (line,) = ax.plot(c["eps_s"], 1 / c["eps_b"], label=f"{r['model']}{params} f={r['fraction']:g} {r['signal']}")
                    ax.fill_betweenx(1 / c["eps_b"], c["eps_s_lo"], c["eps_s_hi"], alpha=0.2, color=line.get_color())
            ax.set_yscale("log")
            ax.set_xlabel("eps_S")
            ax.set_ylabel("1/eps_B (band: 16-84% bootstrap)")
            ax.legend(fontsize="small")
            save(fig, "roc_bands.png", "ROC curves with bootstrap bands (first repeat)")
    e = html.escape
    show = ["model", *pcols, "fraction", "train_variant", "test_variant", "signal", "repeats",
            "auc_mean", "auc_sd", "e10_mean", "e10_sd", "e100_mean", "e100_sd", "inv_eb_at_0p3_mean", "jsd_50_mean", "fpr_at_cut_mean"]
    body = [[report.fmt_cell(r[c]) for c in show] for _, r in bands.iterrows()] if len(bands) else []
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>scan {e(name)}</title>",
        f"<style>{report.CSS}</style></head><body>",
        f"<h1>jetscan scan {e(name)} <span class=\"meta\">(study {e(study.name)})</span></h1>",
        f"<p class=\"meta\">{len(table)} rows (cell x signal); tidy table: {e(SCAN_DIR)}/{e(name)}.parquet in the store</p>",
    ]
    if failed:
        parts.append("<h2>Failed</h2><ul>" + "".join(f"<li>{e(k)}: {e(o['error'])}</li>" for k, o in failed.items()) + "</ul>")
    parts.append("<h2>Bands over repeats</h2>" + report.html_table(show, body, left=len(show) - 10))
    parts.append('<div class="plots">' + "\n".join(
        f'<a href="{e(p.name)}"><img src="{e(p.name)}" alt="{e(c)}" title="{e(c)}"></a>' for c, p in pngs) + "</div></body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return index


def add_commands(app) -> None:
    """``jetscan scan``."""
    import typer

    from jetscan.cluster.dask import WORKER_TIMEOUT_S

    @app.command("scan")
    def scan_cmd(
        study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
        name: str = typer.Argument(..., metavar="NAME", help="a scan of the study's scan: section"),
        workers: int = typer.Option(1, "--workers", help="Dask workers (local processes, or Slurm jobs)"),
        scheduler: Optional[str] = typer.Option(None, "--scheduler", help="an existing Dask scheduler tcp://HOST:PORT"),
        cluster: Optional[str] = typer.Option(None, "--cluster", help="slurm: workers are Slurm jobs (dask-jobqueue)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="with --cluster slurm: print the worker job script, run nothing"),
        queue: Optional[str] = typer.Option(None, "--queue", help="Slurm partition of the worker jobs"),
        memory: str = typer.Option("4GB", "--memory", help="memory of each worker job"),
        walltime: str = typer.Option("02:00:00", "--walltime", help="time limit of each worker job"),
        worker_timeout: float = typer.Option(
            WORKER_TIMEOUT_S, "--worker-timeout", help="seconds to wait for the first worker (--cluster slurm / --scheduler); "
                                             "work starts with one, the others join as their jobs start"),
        report: Optional[Path] = typer.Option(None, "--report", help="report folder (default: beside the store)"),
        pin_cores: bool = typer.Option(
            True, "--pin-cores/--no-pin-cores",
            help="local workers each run on their own block of this machine's CPUs (when there are enough)",
        ),
    ) -> None:
        """Contamination / systematics grid on Dask: cells are real runs, trained, evaluated, aggregated."""
        from rich.console import Console

        study = Study.from_yaml(study_path)
        scan_config(study, name)
        slurm = {"queue": queue, "memory": memory, "walltime": walltime}
        if dry_run:
            if cluster != "slurm":
                raise ConfigError("--dry-run prints the Slurm worker job script: pass --cluster slurm")
            from jetscan.cluster.dask import slurm_job_script

            typer.echo(slurm_job_script(**slurm))
            return
        console = Console(stderr=True, soft_wrap=True, markup=False)  # one line each in a log file; values verbatim
        out = report or _report_dir(study)
        summary = scan(study, name, workers=workers, scheduler=scheduler, cluster=cluster, slurm=slurm,
                       report_dir=out, echo=console.print, worker_timeout_s=worker_timeout, pin_cores=pin_cores)
        console.print(f"scan {name}: {summary['cells']} cells, {summary['reused']} reused, "
                      f"{len(summary['failed'])} task(s) failed; table {SCAN_DIR}/{name}.parquet in the store")
        if "report" in summary:
            console.print(f"report: {summary['report']}")
        if summary["failed"]:
            raise RunnerError(
                f"scan {name!r}: {len(summary['failed'])} task(s) failed: "
                + "; ".join(f"{k}: {o['error']}" for k, o in list(summary["failed"].items())[:5])
                + " -- fix the cause and run the same command again (finished cells are reused)"
            )


def _report_dir(study: Study) -> Path:
    store = study.store
    if "://" in store:
        return Path.cwd() / f"{study.name}-report"
    return Path(store).parent / f"{Path(store).stem}-report"
