"""Evaluation results: one summary row per (run, signal) and the arrays behind the plots.

The evaluate stage hands every trained run's test-set scores here as one ``evaluation``
dict (see :func:`summarise`). Results live in the study's store beside the jets::

    <store>/results/<run>/                zarr v3 group; attrs: run, study, kind, background,
                                          signals, samples, config, rows (the summary rows;
                                          non-finite floats as "NaN"/"Infinity"), mass_bins,
                                          rejections, has_history, has_images, created_utc
      samples/<sample>/score              float64 (n,)  the test-set score of every jet
      samples/<sample>/mass               float32 (n,)  jet mass, GeV
      samples/<sample>/label              int64   (n,)  truth label as handed in
      roc/<signal>/eps_b                  float64 (<= 2000,)  ROC of background vs <signal>,
      roc/<signal>/eps_s                  float64 (<= 2000,)  from (0, 0) to (1, 1)
      roc/<signal>/threshold              float64 (<= 2000,)  cut ``score >= threshold`` (first: inf)
      mass/bins                           float64 (41,)  background mass histogram edges, GeV
      mass/inclusive                      float64 (40,)  all background jets
      mass/reject_50, reject_80, reject_95  float64 (40,)  background jets passing the score cut
                                          that rejects 50/80/95% of the background, i.e. the
                                          least background-like 50/20/5%; attrs: jsd (to the
                                          inclusive shape), threshold, keep_fraction
      mass_vs_score/<sample>/edges        float64 (11,)  10 equal-population score bins of <sample>
      mass_vs_score/<sample>/mean_score   float64 (10,)
      mass_vs_score/<sample>/mean_mass    float64 (10,)  GeV (NaN for an empty bin)
      mass_vs_score/<sample>/count        int64   (10,)
      history/<key>                       float64 (n_epochs,)  e.g. epoch, train_loss, val_loss
                                          (only if the evaluation had a history; non-numeric
                                          entries are skipped)
      images/<sample>/input, reconstruction, error   float32 (H, W)  average input and
                                          reconstruction, and |input - reconstruction| of the
                                          averages (only if the evaluation had images)
    <store>/_results/<run>.parquet        the run's summary rows (one per signal)

The parquet file is the commit record, as in the shard catalog: :func:`write_run` checks the
evaluation and builds the run's whole zarr group in memory (every array encoded, metadata
consolidated), then removes a run's old file, replaces the group's objects (the old folder
removed, the new objects written in one batch: on object stores one request per object, sent
concurrently, instead of zarr's checks and listings per array), and writes the new file
atomically (a temporary file renamed into place on local disks, one PUT on object stores). Readers
therefore list a run only once its arrays are complete, a re-evaluation replaces the run's
rows rather than adding to them, and concurrent runs never write the same file.

Summary columns (``RESULT_COLUMNS``, then every config key as its own column; a config key
that clashes with a result column is stored as ``config_<key>``, and a list/tuple config value
as JSON text):

- ``run, study, kind, background, signal, n_background, n_signal``
- ``auc, inv_eb_at_0p3`` (1/eps_B at eps_S = 0.3), ``e10, e100`` (eps_S at eps_B = 10%, 1%),
  each from the whole test set, and each with ``<name>_std``: the standard deviation over
  ``n_subsamples`` disjoint test subsamples (:func:`jetscan.core.metrics.bands`, the seed
  papers' bands; each subsample holds 1/n_subsamples of the jets)
- ``accuracy``: taggers only, ``p(signal) > 0.5`` on background + this signal; NaN otherwise
- ``jsd_50, jsd_80, jsd_95``: Jensen-Shannon divergence (natural log) between the background
  mass shape after a score cut that *rejects* 50/80/95% of the background (keeps the least
  background-like 50/20/5%) and the inclusive background mass shape, in ``MASS_BINS``.
  Named by the rejected fraction. They depend on the background only (same for every signal).
- ``created_utc``
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import Crc32cCodec, ZstdCodec

from jetscan.core import metrics
from jetscan.core.errors import StorageError
from jetscan.storage import blobs
from jetscan.storage.catalog import now_utc

__all__ = [
    "RESULTS_GROUP",
    "RESULTS_DIR",
    "RESULT_COLUMNS",
    "METRIC_COLUMNS",
    "MASS_BINS",
    "REJECTIONS",
    "KINDS",
    "summarise",
    "write_run",
    "read_results",
    "read_run",
    "list_runs",
    "rows_with_results",
    "forget_listings",
]

RESULTS_GROUP = "results"
RESULTS_DIR = "_results"
KINDS = ("autoencoder", "tagger", "pca")
#: background rejections of the sculpting cuts: 50% rejected keeps the least background-like 50%
REJECTIONS = (50, 80, 95)
#: background jet-mass histogram edges (GeV), as the seed papers plot them
MASS_BINS = np.linspace(0.0, 400.0, 41)
N_SCORE_BINS = 10
MAX_ROC_POINTS = 2000

METRIC_COLUMNS = [
    "auc",
    "auc_std",
    "inv_eb_at_0p3",
    "inv_eb_at_0p3_std",
    "e10",
    "e10_std",
    "e100",
    "e100_std",
    "accuracy",
    *[f"jsd_{r}" for r in REJECTIONS],
]
RESULT_COLUMNS = [
    "run",
    "study",
    "kind",
    "background",
    "signal",
    "n_background",
    "n_signal",
    *METRIC_COLUMNS,
    "created_utc",
]

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_SCALARS = (str, int, float, bool, type(None))


# --------------------------------------------------------------------------------------
# checks


def _check_run_name(run: Any) -> str:
    if not isinstance(run, str) or not _RUN_NAME.fullmatch(run):
        raise StorageError(
            f"run name {run!r} cannot name a results folder: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (e.g. 'cnn_ae_b6')"
        )
    return run


def _scalar(key: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
        return json.dumps(list(value))  # e.g. channels (128, 64) -> "[128, 64]"
    if not isinstance(value, _SCALARS):
        raise StorageError(
            f"config[{key!r}] is a {type(value).__name__} ({value!r}); result rows take str/int/float/bool/None "
            "values (or lists of them, stored as JSON text) only: flatten the config (e.g. 'jet.pt_window_gev' -> "
            "'jet_pt_min_gev', 'jet_pt_max_gev') before evaluating"
        )
    return value


def _check_evaluation(evaluation: dict) -> dict[str, dict[str, np.ndarray]]:
    """Validate the evaluation dict; returns its samples as float64/float32/int64 numpy arrays."""
    if not isinstance(evaluation, dict):
        raise StorageError(f"an evaluation is a dict, got {type(evaluation).__name__}")
    missing = [k for k in ("run", "study", "config", "kind", "background", "samples", "signals") if k not in evaluation]
    if missing:
        raise StorageError(f"evaluation lacks {missing}; see jetscan.storage.results.summarise for its keys")
    _check_run_name(evaluation["run"])
    if evaluation["kind"] not in KINDS:
        raise StorageError(f"evaluation kind {evaluation['kind']!r} is not one of {list(KINDS)}")
    if not isinstance(evaluation["config"], dict):
        raise StorageError(f"evaluation config must be a flat dict, got {type(evaluation['config']).__name__}")
    samples_in = evaluation["samples"]
    bkg = evaluation["background"]
    signals = list(evaluation["signals"])
    unknown = [s for s in [bkg, *signals] if s not in samples_in]
    if unknown:
        raise StorageError(f"sample(s) {unknown} named by the evaluation are not in its samples {sorted(samples_in)}")
    if bkg in signals:
        raise StorageError(f"background {bkg!r} is also listed as a signal")
    if not signals:
        raise StorageError("evaluation lists no signals to compare against the background")
    samples = {}
    for name, arrays in samples_in.items():
        if "/" in name or not name:
            raise StorageError(f"sample name {name!r} cannot name a zarr group")
        lacking = [k for k in ("score", "mass") if k not in arrays]
        if lacking:
            raise StorageError(f"sample {name!r} lacks {lacking} (needs score and mass, label optional)")
        score = np.asarray(arrays["score"], dtype=np.float64).reshape(-1)
        mass = np.asarray(arrays["mass"], dtype=np.float32).reshape(-1)
        if "label" in arrays and arrays["label"] is not None:
            label = np.asarray(arrays["label"]).astype(np.int64).reshape(-1)
        else:
            label = np.full(len(score), 0 if name == bkg else 1, dtype=np.int64)
        if not len(score) == len(mass) == len(label):
            raise StorageError(
                f"sample {name!r}: score, mass and label differ in length ({len(score)}, {len(mass)}, {len(label)})"
            )
        n_nan = int(np.isnan(score).sum())
        if n_nan:
            raise StorageError(
                f"sample {name!r} has {n_nan} NaN score(s) of {len(score)}: the model diverged or a jet was empty; "
                "fix or drop those jets before evaluating"
            )
        samples[name] = {"score": score, "mass": mass, "label": label}
    for name in [bkg, *signals]:
        if len(samples[name]["score"]) == 0:
            raise StorageError(f"sample {name!r} has no test jets")
    return samples


# --------------------------------------------------------------------------------------
# summary rows


def _band_std(metric, scores, labels, n_subsamples: int, seed: int) -> float:
    if n_subsamples < 2:
        return float("nan")
    try:
        with np.errstate(invalid="ignore"):  # a subsample with 1/eps_B = inf gives a NaN spread
            _, std = metrics.bands(metric, scores, labels, n_subsamples=n_subsamples, seed=seed)
    except ValueError:  # fewer jets of a class than subsamples
        return float("nan")
    return std if math.isfinite(std) else float("nan")


def _sculpting(samples: dict, background: str) -> dict:
    b = samples[background]
    fractions = tuple(_keep(r) for r in REJECTIONS)
    return metrics.mass_sculpting(b["mass"], b["score"], fractions=fractions, bins=MASS_BINS)


def _keep(rejection: int) -> float:
    return round(1.0 - rejection / 100.0, 6)


def summarise(evaluation: dict, n_subsamples: int = 10, seed: int = 0) -> list[dict]:
    """One summary row per signal of one evaluated run.

    ``evaluation`` holds ``run`` (unique in the study), ``study``, ``config`` (a flat dict of
    str/int/float/bool/None), ``kind`` (``autoencoder``, ``tagger`` or ``pca``), ``background``
    (a sample name), ``samples`` ({name: {"score": (n,), "mass": (n,), "label": (n,)}}, the
    test split, larger score = more signal-like), ``signals`` (sample names), and optionally
    ``images`` and ``history`` (used by :func:`write_run` only).

    Jets are labelled by the sample they come from (background 0, signal 1). Central values
    use the whole test set; ``<metric>_std`` is the spread over ``n_subsamples`` disjoint
    subsamples drawn with ``seed`` (NaN when a class has fewer jets than subsamples or a
    subsample's value is infinite). Column meanings: see the module docstring.
    """
    samples = _check_evaluation(evaluation)
    config = {k: _scalar(k, v) for k, v in evaluation["config"].items()}
    bkg = evaluation["background"]
    tagger = evaluation["kind"] == "tagger"
    sculpt = _sculpting(samples, bkg)
    jsd = {f"jsd_{r}": float(sculpt["jsd"][_keep(r)]) for r in REJECTIONS}
    created = now_utc()

    def e10(s, y):
        return metrics.eps_s_at(s, y, 0.1)

    def e100(s, y):
        return metrics.eps_s_at(s, y, 0.01)

    def inv_eb(s, y):
        return metrics.inv_eb_at(s, y, 0.3)

    rows = []
    for sig in evaluation["signals"]:
        b, s = samples[bkg]["score"], samples[sig]["score"]
        scores = np.concatenate([b, s])
        labels = np.concatenate([np.zeros(len(b), np.int64), np.ones(len(s), np.int64)])
        row: dict[str, Any] = {
            "run": evaluation["run"],
            "study": str(evaluation["study"]),
            "kind": evaluation["kind"],
            "background": bkg,
            "signal": sig,
            "n_background": int(len(b)),
            "n_signal": int(len(s)),
        }
        for name, fn in (("auc", metrics.auc), ("inv_eb_at_0p3", inv_eb), ("e10", e10), ("e100", e100)):
            row[name] = float(fn(scores, labels))
            row[f"{name}_std"] = _band_std(fn, scores, labels, n_subsamples, seed)
        row["accuracy"] = metrics.accuracy(scores, labels, 0.5) if tagger else float("nan")
        row.update(jsd)
        row["created_utc"] = created
        for key, value in config.items():
            row[f"config_{key}" if key in RESULT_COLUMNS else key] = value
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# file system helpers


def forget_listings(fs, folder: str) -> None:
    """Drop the listings ``fs`` keeps of ``folder``, of everything below it and of its parents.

    Object-store filesystems (s3fs, gcsfs) keep every folder listing for the life of the
    filesystem object, and fsspec hands one object to every call with the same options: a
    long-lived reader would never see runs that other processes committed after its first
    listing. Call this before listing; the next listing then asks the store. Local folders
    keep no listings (a no-op there).
    """
    if isinstance(fs, LocalFileSystem):
        return
    folder = folder.rstrip("/")
    below = [k for k in list(getattr(fs, "dircache", {})) if k.startswith(folder + "/")]
    for key in [folder, *below]:
        fs.invalidate_cache(key)


def _committed_parquet(fs, base: str) -> list[str]:
    """Paths of the committed ``_results/<run>.parquet`` files, sorted, listed afresh."""
    forget_listings(fs, f"{base}/{RESULTS_DIR}")
    return sorted(fs.glob(f"{base}/{RESULTS_DIR}/*.parquet"))


def _require_store(store: str):
    fs, base = blobs.store_fs(store)
    fs.invalidate_cache(base)  # not a listing of its parent made before the store was
    if not fs.exists(base):
        raise StorageError(f"no jetscan store at {str(store)!r}: run the study's stages first, or check the path")
    return fs, base


def _parquet_path(base: str, run: str) -> str:
    return f"{base}/{RESULTS_DIR}/{run}.parquet"


def _open_root(store: str, mode: str) -> zarr.Group:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about non-zarr folders (_catalog, _results)
            return zarr.open_group(str(store), mode=mode, zarr_format=3)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        raise StorageError(f"no jetscan store at {str(store)!r}: run the study's stages first, or check the path") from None


# --------------------------------------------------------------------------------------
# JSON-safe attrs


def json_safe(value: Any) -> Any:
    """Values as strict JSON (zarr attrs, the served API): numpy scalars and arrays as Python,
    non-finite floats as the zarr v3 spec's strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


NONFINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _float_back(value: Any) -> Any:
    return NONFINITE.get(value, value) if isinstance(value, str) else value


# --------------------------------------------------------------------------------------
# arrays


def _downsample_roc(eps_b: np.ndarray, eps_s: np.ndarray, thr: np.ndarray, n_max: int = MAX_ROC_POINTS):
    """At most ``n_max`` points, keeping both endpoints: half evenly spaced along the curve,
    half at log-spaced background efficiencies (where 1/eps_B plots need the resolution)."""
    n = len(eps_b)
    if n <= n_max:
        return eps_b, eps_s, thr
    half = n_max // 2
    lin = np.linspace(0, n - 1, half).round().astype(np.int64)
    positive = eps_b[eps_b > 0]
    lo = np.log10(positive.min()) if len(positive) else 0.0
    log = np.searchsorted(eps_b, np.logspace(lo, 0.0, n_max - half), side="left").clip(0, n - 1)
    idx = np.unique(np.r_[0, lin, log, n - 1])
    if len(idx) > n_max:  # cannot happen with the sizes above; keep it safe anyway
        inner = idx[1:-1][np.linspace(0, len(idx) - 3, n_max - 2).round().astype(np.int64)]
        idx = np.unique(np.r_[0, inner, n - 1])
    return eps_b[idx], eps_s[idx], thr[idx]


def _mass_vs_score(score: np.ndarray, mass: np.ndarray, n_bins: int = N_SCORE_BINS) -> dict[str, np.ndarray]:
    edges = np.quantile(score, np.linspace(0.0, 1.0, n_bins + 1)) if len(score) else np.zeros(n_bins + 1)
    # bin i holds edges[i] <= score < edges[i+1]; the last bin includes its upper edge
    idx = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_mass = np.bincount(idx, weights=mass.astype(np.float64), minlength=n_bins) / count
        mean_score = np.bincount(idx, weights=score, minlength=n_bins) / count
    return {"edges": edges.astype(np.float64), "mean_score": mean_score, "mean_mass": mean_mass, "count": count}


def _array(group: zarr.Group, path: str, data: np.ndarray, dtype: str, attrs: dict | None = None) -> zarr.Array:
    data = np.ascontiguousarray(np.asarray(data, dtype=dtype))
    chunks = tuple(max(1, min(d, 1 << 18)) for d in data.shape) if data.ndim else None
    arr = group.create_array(
        path,
        shape=data.shape,
        dtype=dtype,
        chunks=chunks,
        compressors=[ZstdCodec(level=5), Crc32cCodec()],
        fill_value=0,
        attributes=attrs or None,
    )
    if data.size:
        arr[...] = data
    return arr


def _run_objects(arrays: list[tuple], attrs: dict) -> dict[str, bytes]:
    """Every object of one run's zarr group, keys relative to ``results/<run>/``: the arrays'
    metadata and chunks, and the group's ``zarr.json`` with the inline consolidated metadata
    of everything below it. Built in memory, so storing the run costs one request per object."""
    objects: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that consolidated metadata is not in the v3 spec
        memory = zarr.storage.MemoryStore(objects)
        group = zarr.open_group(memory, mode="w", zarr_format=3, attributes=attrs)
        for path, data, dtype, array_attrs in arrays:
            _array(group, path, data, dtype, array_attrs)
        # consolidated metadata of this run's group (zarr's inline form, in results/<run>/zarr.json):
        # readers over HTTP or object storage walk the run without listing folders. Per run, not
        # for results/ as a whole: concurrent writers (search trials) never race on one file, and
        # a write costs the same however many runs the store holds (runs are listed by _results/).
        zarr.consolidate_metadata(memory, zarr_format=3)
    return {key: buf.to_bytes() for key, buf in objects.items()}


def _replace_folder(fs, folder: str, objects: dict[str, bytes]) -> None:
    """Remove everything below ``folder``, then write ``objects`` ({relative key: bytes}) there.

    On object stores the removal is one listing and one bulk delete, and the writes go out as
    one batch (s3fs and gcsfs send them concurrently)."""
    forget_listings(fs, folder)
    try:
        fs.rm(folder, recursive=True)
    except FileNotFoundError:
        pass  # a new run
    paths = {f"{folder}/{key}": data for key, data in objects.items()}
    if isinstance(fs, LocalFileSystem):
        for parent in sorted({p.rsplit("/", 1)[0] for p in paths}):
            fs.makedirs(parent, exist_ok=True)
    fs.pipe(paths)


def _check_rows(run: str, rows: list[dict]) -> bytes:
    """The summary ``rows`` of ``run`` as the parquet file that commits them."""
    if not rows:
        raise StorageError(f"no summary rows for run {run!r}: pass summarise(evaluation)")
    bad = [r.get("run") for r in rows if r.get("run") != run]
    if bad:
        raise StorageError(f"summary rows of run(s) {sorted(set(map(str, bad)))} passed with run {run!r}")
    missing = [c for c in RESULT_COLUMNS if c not in rows[0]]
    if missing:
        raise StorageError(f"summary rows lack {missing}: make them with summarise(evaluation)")
    try:
        table = pa.Table.from_pylist([dict(r) for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise StorageError(
            f"summary rows of run {run!r} do not make one table ({str(exc).splitlines()[0]}): make them with summarise(evaluation)"
        ) from None
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _image(name: str, key: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise StorageError(
            f"images of {name!r}: {key} is not an array of numbers ({type(value).__name__}); "
            "pass the average image as a float array (H, W)"
        ) from None


def _check_images(images: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{sample: (input, reconstruction)} as float32 arrays of one shape; {} for no images."""
    if not images:
        return {}
    if not isinstance(images, dict):
        raise StorageError(f"evaluation images must be a dict {{sample: {{'input', 'reconstruction'}}}}, got {type(images).__name__}")
    out = {}
    for name, pair in images.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise StorageError(f"image name {name!r} cannot name a zarr group: use the sample's name")
        if not isinstance(pair, dict):
            raise StorageError(f"images of {name!r} must be a dict with 'input' and 'reconstruction', got {type(pair).__name__}")
        lacking = [k for k in ("input", "reconstruction") if k not in pair]
        if lacking:
            raise StorageError(f"images of {name!r} lack {lacking}: give the average input and its reconstruction, both (H, W)")
        inp, rec = _image(name, "input", pair["input"]), _image(name, "reconstruction", pair["reconstruction"])
        if inp.shape != rec.shape:
            raise StorageError(f"images of {name!r}: input {inp.shape} and reconstruction {rec.shape} differ")
        out[name] = (inp, rec)
    return out


def _history_arrays(history: Any) -> dict[str, np.ndarray]:
    """The numeric per-epoch series of ``history``; anything else has nothing to plot and is skipped."""
    out = {}
    for key, values in (history or {}).items():
        try:
            values = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        if str(key) and "/" not in str(key):
            out[str(key)] = values
    return out


def _run_arrays(samples: dict, bkg: str, signals: list[str], images: dict, history: dict) -> list[tuple]:
    """Every array of one run as ``(path, data, dtype, attrs)``, computed in memory."""
    out = []
    for name, arrays in samples.items():
        out += [(f"samples/{name}/{k}", arrays[k], dt, None) for k, dt in (("score", "float64"), ("mass", "float32"), ("label", "int64"))]
    b = samples[bkg]["score"]
    for sig in signals:
        s = samples[sig]["score"]
        labels = np.r_[np.zeros(len(b), np.int64), np.ones(len(s), np.int64)]
        eps_b, eps_s, thr = _downsample_roc(*metrics.roc(np.r_[b, s], labels))
        out += [(f"roc/{sig}/eps_b", eps_b, "float64", None), (f"roc/{sig}/eps_s", eps_s, "float64", None),
                (f"roc/{sig}/threshold", thr, "float64", None)]
    sculpt = _sculpting(samples, bkg)
    out += [("mass/bins", sculpt["bins"], "float64", None), ("mass/inclusive", sculpt["inclusive"], "float64", None)]
    for r in REJECTIONS:
        f = _keep(r)
        attrs = json_safe({"jsd": sculpt["jsd"][f], "threshold": sculpt["thresholds"][f], "keep_fraction": f, "rejection": r / 100.0})
        out.append((f"mass/reject_{r}", sculpt["selected"][f], "float64", attrs))
    for name, arrays in samples.items():
        for key, values in _mass_vs_score(arrays["score"], arrays["mass"]).items():
            out.append((f"mass_vs_score/{name}/{key}", values, "int64" if key == "count" else "float64", None))
    out += [(f"history/{key}", values, "float64", None) for key, values in history.items()]
    for name, (inp, rec) in images.items():
        out += [(f"images/{name}/input", inp, "float32", None), (f"images/{name}/reconstruction", rec, "float32", None),
                (f"images/{name}/error", np.abs(inp - rec), "float32", None)]
    return out


def _run_attrs(evaluation: dict, samples: dict, rows: list[dict], has_history: bool, has_images: bool) -> dict:
    """The run group's attrs as strict JSON (checked here, before anything is replaced)."""
    attrs = json_safe(
        {
            "run": evaluation["run"],
            "study": str(evaluation["study"]),
            "kind": evaluation["kind"],
            "background": evaluation["background"],
            "signals": list(evaluation["signals"]),
            "samples": list(samples),
            "config": {k: _scalar(k, v) for k, v in evaluation["config"].items()},
            "rows": rows,
            "mass_bins": MASS_BINS.tolist(),
            "rejections": list(REJECTIONS),
            "has_history": has_history,
            "has_images": has_images,
            "created_utc": rows[0].get("created_utc", now_utc()),
        }
    )
    try:
        json.dumps(attrs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"summary rows of run {evaluation['run']!r} are not JSON ({exc}): make them with summarise(evaluation)") from None
    return attrs


def write_run(store: str, evaluation: dict, rows: list[dict]) -> None:
    """Store one evaluated run: its arrays under ``<store>/results/<run>/`` and its summary
    ``rows`` (from :func:`summarise`) as ``<store>/_results/<run>.parquet``.

    A run stored before is replaced whole (re-evaluation), and only once the new evaluation
    and rows are checked and every array is computed: bad input raises a StorageError and
    leaves the stored run as it was. The layout is in the module docstring. Creates the
    store's root group if the store does not exist yet. The metadata of ``results/<run>/`` is
    consolidated in its ``zarr.json`` (so HTTP and object-store readers never list).
    """
    # 1. check and compute everything in memory: nothing stored is touched before this passes
    samples = _check_evaluation(evaluation)
    run = evaluation["run"]
    parquet_bytes = _check_rows(run, rows)
    images = _check_images(evaluation.get("images"))
    history = _history_arrays(evaluation.get("history"))
    arrays = _run_arrays(samples, evaluation["background"], list(evaluation["signals"]), images, history)
    attrs = _run_attrs(evaluation, samples, rows, bool(history), bool(images))
    objects = _run_objects(arrays, attrs)
    root = _open_root(store, "a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.require_group(RESULTS_GROUP)

    # 2. uncommit: readers stop listing the run while its arrays are rewritten
    fs, base = blobs.store_fs(store)
    parquet = _parquet_path(base, run)
    if fs.exists(parquet):
        fs.rm(parquet)

    # 3. the arrays: the old run group removed, the new one written as one batch
    _replace_folder(fs, f"{base}/{RESULTS_GROUP}/{run}", objects)

    # 4. commit: the summary rows, atomically
    blobs.write_atomic(store, f"{RESULTS_DIR}/{run}.parquet", parquet_bytes)


# --------------------------------------------------------------------------------------
# reading


def _unify(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables whose columns differ between model kinds; a column whose type
    conflicts beyond numeric promotion (e.g. int in one run, str in another) becomes string."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    names = {name for t in tables for name in t.column_names}
    clash = set()
    for name in names:
        parts = [pa.table({name: t.column(name)}) for t in tables if name in t.column_names]
        try:
            pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            clash.add(name)
    fixed = []
    for t in tables:
        cols = {}
        for name in t.column_names:
            col = t.column(name)
            if name in clash:
                col = pa.array([None if v is None else str(v) for v in col.to_pylist()], type=pa.string())
            cols[name] = col
        fixed.append(pa.table(cols))
    return pa.concat_tables(fixed, promote_options="permissive")


def list_runs(store: str) -> list[str]:
    """Names of the runs with committed results, sorted."""
    fs, base = _require_store(store)
    files = _committed_parquet(fs, base)
    return sorted(p.rsplit("/", 1)[-1][: -len(".parquet")] for p in files)


def rows_with_results(store: str, run: str, run_hash: str) -> list[dict] | None:
    """The committed result rows of ``run`` if they were made with these settings (their
    ``run_settings_hash`` column is ``run_hash``); else None. Searches and scans reuse such
    runs instead of training and evaluating them again."""
    rel = f"{RESULTS_DIR}/{run}.parquet"
    fs, base = blobs.store_fs(store)
    forget_listings(fs, f"{base}/{RESULTS_DIR}")
    if not blobs.exists(store, rel):
        return None
    rows = pq.read_table(io.BytesIO(blobs.read_blob(store, rel))).to_pylist()
    if not rows or rows[0].get("run_settings_hash") != run_hash:
        return None
    return rows


def read_results(store: str) -> pa.Table:
    """Every committed summary row of the store, sorted by run and signal.

    Columns are the union over runs (a run lacking a config key has nulls there). A store
    with no results yet gives an empty table with ``RESULT_COLUMNS``.
    """
    fs, base = _require_store(store)
    files = _committed_parquet(fs, base)
    if not files:
        return pa.table({c: pa.array([], type=_EMPTY_TYPES.get(c, pa.float64())) for c in RESULT_COLUMNS})
    tables = []
    for path in files:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    table = _unify(tables)
    # result columns first, config columns after in first-seen order
    order = [c for c in RESULT_COLUMNS if c in table.column_names]
    order += [c for c in table.column_names if c not in order]
    return table.select(order).sort_by([("run", "ascending"), ("signal", "ascending")])


_EMPTY_TYPES = {
    "run": pa.string(),
    "study": pa.string(),
    "kind": pa.string(),
    "background": pa.string(),
    "signal": pa.string(),
    "n_background": pa.int64(),
    "n_signal": pa.int64(),
    "created_utc": pa.string(),
}


def _read_tree(group: zarr.Group) -> dict:
    out: dict[str, Any] = {}
    for name, member in group.members():
        if isinstance(member, zarr.Group):
            out[name] = _read_tree(member)
        else:
            out[name] = member[...]
    return out


def read_run(store: str, run: str) -> dict:
    """One stored run, as numpy arrays (for plots and remote queries).

    Returns ``{"run", "study", "kind", "background", "signals", "config", "rows",
    "samples": {name: {"score", "mass", "label"}},
    "roc": {signal: {"eps_b", "eps_s", "threshold"}},
    "mass": {"bins", "inclusive", "selections": {"reject_50": {"hist", "jsd", "threshold",
    "keep_fraction", "rejection"}, ...}},
    "mass_vs_score": {name: {"edges", "mean_score", "mean_mass", "count"}},
    "history": {key: array} or None, "images": {name: {"input", "reconstruction", "error"}} or None}``.
    """
    _check_run_name(run)
    _require_store(store)
    root = _open_root(store, "r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            group = root[f"{RESULTS_GROUP}/{run}"]
        except KeyError:
            group = None
        if not isinstance(group, zarr.Group):
            try:
                known = sorted(root[RESULTS_GROUP].group_keys())
            except KeyError:
                known = []
            raise StorageError(
                f"store {str(store)!r} has no results for run {run!r}; "
                + (f"runs with results: {', '.join(known)}" if known else "no run has been evaluated yet: run the evaluate stage first")
            )
        attrs = dict(group.attrs)
        tree = _read_tree(group)
        selections = {}
        for r in attrs.get("rejections", REJECTIONS):
            arr = group[f"mass/reject_{r}"]
            a = {k: _float_back(v) for k, v in arr.attrs.items()}
            selections[f"reject_{r}"] = {"hist": arr[...], **a}
    rows = [{k: (_float_back(v) if k in METRIC_COLUMNS else v) for k, v in row.items()} for row in attrs.get("rows", [])]
    return {
        "run": attrs["run"],
        "study": attrs["study"],
        "kind": attrs["kind"],
        "background": attrs["background"],
        "signals": list(attrs["signals"]),
        "config": dict(attrs.get("config", {})),
        "rows": rows,
        "created_utc": attrs.get("created_utc"),
        "samples": tree.get("samples", {}),
        "roc": tree.get("roc", {}),
        "mass": {"bins": tree["mass"]["bins"], "inclusive": tree["mass"]["inclusive"], "selections": selections},
        "mass_vs_score": tree.get("mass_vs_score", {}),
        "history": tree.get("history") or None,
        "images": tree.get("images") or None,
    }
