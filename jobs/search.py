"""Stage: hyper-parameter searches with Optuna (``jetscan search STUDY.yaml NAME``).

The whole story of the stage:

1. The study's ``search.<NAME>`` section (:mod:`jetscan.core.search_space`) was validated with
   the study: the run it varies, the parameter paths and ranges, the objectives, the sampler
   and the pruner. Nothing here starts before that.
2. The driver (:func:`search`) opens the Optuna storage and creates the Optuna study *once*
   (``optuna.create_study(load_if_exists=True)``; workers only ``load_study``: concurrent
   creation corrupts storages, optuna #4621, #5385). Storage: a journal file
   (``JournalStorage(JournalFileBackend)``, safe on shared filesystems, unlike SQLite:
   optuna #820, #4994) at ``<store>/_search/<NAME>.journal`` by default, or any RDB URL
   (``--storage postgresql://...``: ``RDBStorage`` with heartbeats, so the trial of a dead
   worker is marked FAIL and retried, ``RetryHeartbeatStaleTrialCallback``).
3. Before starting workers the driver recovers trials a dead worker left RUNNING in a journal:
   each is marked FAIL (user attr ``error``) and its parameters are enqueued again. A journal
   has no heartbeat of its own, so a worker writes one into its running trial (user attr
   ``heartbeat``, unix time, every ``heartbeat_seconds``); a trial is a dead worker's when its
   worker (``host:pid`` user attr) was a process of the driver's host that is gone, or when its
   heartbeat is older than the search's ``stale_seconds`` (default 5 heartbeats, 5 minutes):
   the trials of live workers on other hosts (Slurm array tasks, another search command) are
   left alone, and the driver waits at most that long for them before it gives up a round.
   Hosts' clocks are compared, so keep ``stale_seconds`` well above their skew. An RDB storage
   relies on Optuna's heartbeat instead (the driver waits out the grace period).
4. Workers (:func:`worker`: in this process for one worker, N local processes
   (:func:`jetscan.cluster.local.run_processes` running ``jetscan search-worker``), or N Ray tasks
   with ``--address``; any launcher, e.g. a Slurm array task, can start ``jetscan search-worker``)
   loop: ask a trial, check it is not a duplicate of a finished or running trial (two workers
   never run the same grid point) nor surplus, then run it as a real run:
   - the base run with the parameters set, named ``<NAME>-<hash of the parameters and of the base
     run's settings>`` (so the same settings are one run: a retried trial resumes from its epoch
     checkpoint, and settings that already have results are not trained again; an edited base
     run gives new runs);
   - trained by :func:`jetscan.jobs.train.train` (the pruner sees the validation loss of every
     epoch through ``on_epoch``), evaluated by :func:`jetscan.jobs.evaluate.evaluation_for`, and
     written to ``<store>/results/<run>`` and ``<store>/_results/<run>.parquet`` like any run, with
     the extra columns ``search``, ``trial``, ``best_val_loss``, ``run_settings_hash`` and
     ``param_<path>`` (dots as underscores) for every searched parameter;
   - the objectives read from those rows. A trial that raises ends FAIL with its error in the
     user attrs ``error`` / ``traceback``, and the search goes on (up to ``max_failures``).
5. The driver repeats rounds of workers until ``trials`` trials are COMPLETE (or PRUNED), then
   keeps the checkpoints of the best trial (the Pareto front for several objectives; ``keep_weights:
   all`` keeps every one; scores and metrics of every trial stay in the results store) and writes
   the report (:func:`write_search_report`): the trial table, optimisation history, parameter
   importance, bottleneck vs AUC and validation loss with the knee of the loss curve (the
   unsupervised choice, :func:`jetscan.core.knee.knee_point`), the Pareto front, and the best
   trial's ROC and mass histograms.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

from jetscan.core.errors import ConfigError, RunnerError, StorageError
from jetscan.core.knee import knee_point
from jetscan.core.search_space import SIGNAL_METRICS, SearchConfig, apply_params
from jetscan.core.study import Study, settings_hash

__all__ = [
    "SEARCH_DIR",
    "search",
    "worker",
    "default_storage",
    "open_storage",
    "create_search",
    "recover_orphans",
    "trial_run_name",
    "trial_study",
    "search_summary",
    "write_search_report",
    "add_commands",
]

SEARCH_DIR = "_search"
_COUNTED = ("COMPLETE", "PRUNED")


# --------------------------------------------------------------------------------------
# storage and the Optuna study


def search_config(study: Study, name: str) -> SearchConfig:
    try:
        return study.search[name]
    except KeyError:
        raise ConfigError(
            f"search: no search named {name!r} in study {study.name!r}; searches: {', '.join(study.search) or 'none'} "
            "(add one under search: in the study file)"
        ) from None


def default_storage(study: Study, name: str) -> str:
    """The journal file beside a local store: ``<store>/_search/<name>.journal``."""
    if "://" in study.store and not study.store.startswith("file://"):
        raise ConfigError(
            f"search {name!r}: the store {study.store!r} is not on a local filesystem, so there is no default "
            "journal file; pass --storage PATH.journal (on a filesystem every worker sees) or --storage "
            "postgresql://USER@HOST/DB"
        )
    return str(Path(study.store.removeprefix("file://")) / SEARCH_DIR / f"{name}.journal")


def _is_rdb(url: str) -> bool:
    return "://" in url and url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "sqlite")


def _grace_seconds(cfg: SearchConfig) -> int:
    return 2 * cfg.heartbeat_seconds + 5


def open_storage(url: str, cfg: SearchConfig):
    """An Optuna storage: ``RDBStorage`` with heartbeats for an RDB URL, else a journal file."""
    import optuna

    if _is_rdb(url):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=cfg.heartbeat_seconds,
                    grace_period=_grace_seconds(cfg),
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                    engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                )
        except Exception as exc:  # noqa: BLE001 - sqlalchemy / driver errors: one line with the fix
            raise StorageError(f"--storage {_redact(url)}: cannot open the database ({type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); check the URL and that "
                               "the server is running") from None
    if "://" in url:
        raise ConfigError(
            f"--storage {_redact(url)}: not a journal file path nor a postgresql:// / mysql:// / sqlite:/// URL"
        )
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def _redact(url: str) -> str:
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, host = tail.rpartition("@")
        return f"{head}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url
    return url


def optuna_name(study: Study, name: str) -> str:
    return f"{study.name}.{name}"


def _base_settings(study: Study, name: str) -> dict:
    """The search's base run settings (``run_settings`` minus the run's name)."""
    from jetscan.core.run_settings import run_settings

    base = run_settings(study, search_config(study, name).run)
    base.pop("run", None)
    return base


def _search_hash(study: Study, name: str) -> str:
    """What a search's trials mean: the base run, the space and the objectives."""
    cfg = search_config(study, name)
    base = _base_settings(study, name)
    return settings_hash(
        {"run": base, "space": {k: v.model_dump(mode="json") for k, v in cfg.params.items()},
         "objectives": [o.model_dump(mode="json") for o in cfg.objectives]}
    )


def create_search(study: Study, name: str, storage):
    """Create the Optuna study (or load it, refusing one made by another search)."""
    import optuna

    cfg = search_config(study, name)
    ostudy = optuna.create_study(
        storage=storage, study_name=optuna_name(study, name), directions=cfg.directions, load_if_exists=True
    )
    want = _search_hash(study, name)
    have = ostudy.user_attrs.get("jetscan_search_hash")
    if have is None:
        ostudy.set_user_attr("jetscan_search_hash", want)
        ostudy.set_user_attr("objectives", [o.label for o in cfg.objectives])
        ostudy.set_user_attr("run", cfg.run)
    elif have != want or [d.name.lower() for d in ostudy.directions] != cfg.directions:
        raise ConfigError(
            f"search {name!r}: the storage already holds this search made with another run, space or objectives; "
            "restore them, rename the search, or pass another --storage (delete the old journal to start over)"
        )
    return ostudy


def _sampler(cfg: SearchConfig, worker_index: int):
    import optuna

    from jetscan.core.search_space import grid_values

    seed = None if cfg.seed is None else cfg.seed + worker_index
    kind = cfg.sampler_name
    if kind == "grid":
        return optuna.samplers.GridSampler({p: grid_values(s) for p, s in cfg.params.items()}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, cfg.trials // 2)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, cfg.trials // 3)))


def _pruner(cfg: SearchConfig):
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _load(study: Study, name: str, storage, worker_index: int = 0):
    import optuna

    cfg = search_config(study, name)
    try:
        return optuna.load_study(
            study_name=optuna_name(study, name), storage=storage, sampler=_sampler(cfg, worker_index), pruner=_pruner(cfg)
        )
    except KeyError:
        raise StorageError(
            f"search {name!r}: the storage holds no Optuna study {optuna_name(study, name)!r}; start the search with "
            "'jetscan search STUDY NAME' (it creates the study once), then start workers"
        ) from None


# --------------------------------------------------------------------------------------
# trials as runs


def trial_run_name(study: Study, name: str, params: dict[str, Any]) -> str:
    """``<search>-<hash of the parameters and the base run's settings>``: the same settings are
    always the same run, and an edited base run (or sample) gives new runs rather than a clash
    with the checkpoints made with the old settings."""
    key = {"params": {k: params[k] for k in sorted(params)}, "base": settings_hash(_base_settings(study, name))}
    return f"{name}-{settings_hash(key)[:10]}"


def trial_study(study: Study, name: str, params: dict[str, Any], *, threads: int | None = None) -> tuple[Study, str]:
    """The study with one more run, the search's base run with ``params`` set; and its name."""
    cfg = search_config(study, name)
    run = trial_run_name(study, name, params)
    data = study.model_dump(mode="json")
    data["train"]["runs"][run] = apply_params(study.run(cfg.run).model_dump(mode="json"), params)
    if threads:
        data["train"]["threads"] = threads
    return Study.from_dict(data, source=f"search {name!r} trial {params}"), run


def _param_column(path: str) -> str:
    return "param_" + path.replace(".", "_")


def _rows_with_results(store: str, run: str, run_hash: str) -> list[dict] | None:
    """The committed result rows of ``run`` if they were made with these settings."""
    from jetscan.storage.results import rows_with_results

    return rows_with_results(store, run, run_hash)


def _objective_values(cfg: SearchConfig, rows: list[dict], best_val_loss: float) -> list[float]:
    values = []
    for o in cfg.objectives:
        if o.metric == "val_loss":
            v = best_val_loss
        else:
            match = [r for r in rows if o.metric not in SIGNAL_METRICS or r["signal"] == o.signal]
            if not match:
                raise StorageError(f"objective {o.label}: the evaluation has no row for signal {o.signal!r}")
            v = match[0][o.metric]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise StorageError(f"objective {o.label} is NaN for this trial (too few test jets, or a diverged model)")
        values.append(float(v))
    return values


def run_trial(study: Study, name: str, trial, params: dict[str, Any], *, threads: int | None = None) -> list[float]:
    """Train, evaluate and store one trial's run; its objective values (one per objective)."""
    import optuna

    from jetscan.core.run_settings import run_settings
    from jetscan.jobs.evaluate import evaluation_for
    from jetscan.jobs.train import train
    from jetscan.storage import results

    cfg = search_config(study, name)
    tstudy, run = trial_study(study, name, params, threads=threads)
    run_hash = settings_hash(run_settings(tstudy, run))
    trial.set_user_attr("run", run)
    rows = _rows_with_results(tstudy.store, run, run_hash)
    if rows is not None:  # these settings were trained and evaluated before: reuse them
        trial.set_user_attr("reused_results", True)
        return _objective_values(cfg, rows, float(rows[0]["best_val_loss"]))

    def on_epoch(e: dict) -> None:
        trial.report(float(e["val_loss"]), int(e["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {e['epoch']} (val loss {e['val_loss']:.4g})")

    summary = train(tstudy, run, on_epoch=on_epoch if cfg.pruner != "none" else None)
    trial.set_user_attr("best_val_loss", float(summary["best_val_loss"]))
    signals = [s for s in tstudy.samples if tstudy.sample(s).is_signal]
    if not signals:  # nothing to evaluate against: the validation loss is all there is
        if any(o.metric != "val_loss" for o in cfg.objectives):
            raise ConfigError(f"search {name!r}: the study has no signal sample to evaluate against")
        return [float(summary["best_val_loss"])]
    evaluation = evaluation_for(tstudy, run)
    evaluation["config"].update(
        {
            "search": name,
            "trial": int(trial.number),
            "best_val_loss": float(summary["best_val_loss"]),
            "run_settings_hash": run_hash,
            **{_param_column(k): v for k, v in params.items()},
        }
    )
    rows = results.summarise(evaluation)
    results.write_run(tstudy.store, evaluation, rows)
    return _objective_values(cfg, rows, float(summary["best_val_loss"]))


class _Skipped(Exception):
    """A trial not run: a duplicate of another trial's parameters, or beyond the trial budget."""


def _suggest(trial, path: str, spec) -> Any:
    if spec.choices is not None:
        return trial.suggest_categorical(path, list(spec.choices))
    if spec.int_range is not None:
        lo, hi = spec.int_range
        return trial.suggest_int(path, lo, hi, step=int(spec.step or 1), log=spec.log)
    lo, hi = spec.float_range
    return trial.suggest_float(path, lo, hi, step=spec.step, log=spec.log)


def _state(t) -> str:
    return t.state.name


def _counts(ostudy, session: str | None = None) -> dict[str, int]:
    """Trials per state (skipped ones apart); ``errors``: trials that raised in ``session``."""
    out = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0, "SKIPPED": 0, "errors": 0}
    for t in ostudy.get_trials(deepcopy=False):
        if t.state.name == "FAIL" and "skipped" in t.user_attrs:
            out["SKIPPED"] += 1
        else:
            out[t.state.name] += 1
        if _failed_in(t, session):
            out["errors"] += 1
    out["done"] = out["COMPLETE"] + out["PRUNED"]
    return out


def _failed_in(t, session: str | None) -> bool:
    """The trial raised (not a dead worker, not skipped) during this search command."""
    return (t.state.name == "FAIL" and "traceback" in t.user_attrs and session is not None
            and t.user_attrs.get("session") == session)


def _remaining_points(cfg: SearchConfig, trials, session: str | None) -> int | None:
    """Points of a finite space not yet complete, running, or failed in this command (None: infinite).

    Counted, not listed (a grid can have millions of points): the number of distinct points less
    the distinct taken parameter sets that are points of the grid."""
    from jetscan.core.search_space import grid_values

    axes = {path: grid_values(spec) for path, spec in cfg.params.items()}
    if any(values is None for values in axes.values()):
        return None
    grid = {path: set(values) for path, values in axes.items()}
    taken = {tuple(sorted(t.params.items())) for t in trials
             if t.state.name in ("COMPLETE", "PRUNED", "RUNNING") or _failed_in(t, session)}
    on_grid = sum(1 for point in taken if _on_grid(dict(point), grid))
    return math.prod(len(values) for values in grid.values()) - on_grid


def _on_grid(point: dict[str, Any], grid: dict[str, set]) -> bool:
    return point.keys() == grid.keys() and all(point[path] in values for path, values in grid.items())


def _worker_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _cpus_tag() -> str:
    """The CPUs this worker may run on, as ``taskset`` writes them (``0-3,8``)."""
    from jetscan.cluster.local import usable_cpus

    cpus, parts = usable_cpus(), []
    for c in cpus:
        if parts and parts[-1][1] == c - 1:
            parts[-1][1] = c
        else:
            parts.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def worker(
    study: Study,
    name: str,
    storage_url: str,
    *,
    trials: int | None = None,
    worker_index: int = 0,
    threads: int | None = None,
    session: str | None = None,
) -> dict[str, int]:
    """Run trials of a created search until it has ``trials`` COMPLETE or PRUNED trials (or its
    failure budget is spent); returns the study's trial counts. Any launcher can start it."""
    import optuna

    cfg = search_config(study, name)  # objectives checked as the study loaded (Study._searches, with data.splits)
    if threads:
        import torch

        torch.set_num_threads(threads)
    import jetscan.jobs.evaluate  # noqa: F401 - the training stack, imported before a trial's clock starts
    import jetscan.jobs.train  # noqa: F401

    storage = open_storage(storage_url, cfg)
    ostudy = _load(study, name, storage, worker_index)
    target = trials or cfg.target_trials()
    max_failures = cfg.max_failures if cfg.max_failures is not None else target
    params_of = cfg.params
    session = session or uuid.uuid4().hex[:12]
    skips = 0

    def beating(trial):  # an RDB storage beats by itself (Optuna's heartbeat)
        if _is_rdb(storage_url):
            return contextlib.nullcontext()
        return _beating(storage, trial._trial_id, cfg.heartbeat_seconds)

    def objective(trial) -> Any:
        trial.set_user_attr("worker", _worker_tag())
        trial.set_user_attr("cpus", _cpus_tag())
        trial.set_user_attr("session", session)
        params = {path: _suggest(trial, path, spec) for path, spec in params_of.items()}
        others = [t for t in ostudy.get_trials(deepcopy=False) if t.number != trial.number]
        for t in others:
            if (_state(t) in ("COMPLETE", "PRUNED", "RUNNING") or _failed_in(t, session)) and t.params == params:
                trial.set_user_attr("skipped", f"duplicate of trial {t.number} ({_state(t)})")
                raise _Skipped(f"duplicate of trial {t.number}")
        ahead = sum(1 for t in others if _state(t) in _COUNTED or (_state(t) == "RUNNING" and t.number < trial.number))
        if ahead >= target:
            trial.set_user_attr("skipped", f"surplus: {ahead} trials already complete or running for a target of {target}")
            raise _Skipped("surplus")
        try:
            with beating(trial):
                values = run_trial(study, name, trial, params, threads=threads)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:1000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            raise
        return values if len(values) > 1 else values[0]

    import logging

    optuna.logging.set_verbosity(logging.WARNING)
    while True:
        c = _counts(ostudy, session)
        if c["done"] >= target or c["done"] + c["RUNNING"] >= target and not c["WAITING"]:
            break
        if c["errors"] >= max_failures:
            break
        if not c["WAITING"] and _remaining_points(cfg, ostudy.get_trials(deepcopy=False), session) == 0:
            break
        if skips > 10 * target + 10:  # the sampler keeps proposing taken points: the space is exhausted
            break
        before = c["SKIPPED"]
        ostudy.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        if _counts(ostudy, session)["SKIPPED"] > before:
            skips += 1
    return _counts(ostudy, session)


HEARTBEAT = "heartbeat"


@contextlib.contextmanager
def _beating(storage, trial_id: int, interval_s: float):
    """Journal storages (no heartbeat of their own): write the trial's ``heartbeat`` user attr
    (unix time) now and every ``interval_s`` while the block runs, from a daemon thread, so that
    :func:`recover_orphans` can tell a live worker's trial (on any host) from a dead one's."""
    storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
            except Exception:  # noqa: BLE001 - the trial was finished elsewhere, or the storage is gone: stop
                return

    thread = threading.Thread(target=beat, name=f"jetscan-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def _last_alive_s(t) -> float | None:
    """Unix time of a trial's last sign of life: its heartbeat, else its start."""
    beat = t.user_attrs.get(HEARTBEAT)
    if isinstance(beat, (int, float)):
        return float(beat)
    return t.datetime_start.timestamp() if t.datetime_start is not None else None


def _orphaned(t, stale_seconds: float, now_s: float) -> bool:
    """A RUNNING trial's worker is dead: a process of this host that is gone (or this very
    process, which runs no trial while the driver recovers), or no heartbeat for ``stale_seconds``
    (workers on other hosts: Slurm array tasks, other search commands)."""
    import psutil

    w_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
    if w_host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid() or not psutil.pid_exists(int(pid)):
            return True
    last = _last_alive_s(t)
    return last is None or now_s - last > stale_seconds


def recover_orphans(ostudy, storage, *, stale_seconds: float) -> list[int]:
    """Journal storages: mark trials left RUNNING by dead workers FAIL and enqueue their parameters
    again (same settings, same run: the retry resumes from the run's checkpoint). A worker is
    dead when it ran on this host and its process is gone, or when its trial's heartbeat (see
    :func:`_beating`) is older than ``stale_seconds``; the trials of live workers, here or on
    other hosts, are left alone."""
    import optuna

    recovered = []
    now_s = time.time()
    for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _orphaned(t, stale_seconds, now_s):
            continue
        tag = str(t.user_attrs.get("worker", ""))
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"worker {tag or '?'} died mid-trial; retried as a new trial")
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile
        if t.params:
            ostudy.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        recovered.append(t.number)
    return recovered


def _wait_for_journal_trials(ostudy, storage, cfg: SearchConfig) -> list[int]:
    """Journal storages: wait (at most one stale period) for trials RUNNING elsewhere to finish
    or go stale, recovering the stale ones; the trials recovered."""
    import optuna

    deadline = time.time() + cfg.stale_after_seconds + cfg.heartbeat_seconds
    recovered: list[int] = []
    while time.time() < deadline:
        recovered += recover_orphans(ostudy, storage, stale_seconds=cfg.stale_after_seconds)
        if not ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            break
        time.sleep(min(5.0, cfg.heartbeat_seconds))
    return recovered


def _wait_for_heartbeats(ostudy, cfg: SearchConfig) -> None:
    """RDB storages: trials RUNNING with no live worker here turn FAIL (and are retried) once
    their heartbeat is older than the grace period; wait that long, at most once."""
    import optuna

    deadline = time.time() + _grace_seconds(cfg) + 2 * cfg.heartbeat_seconds
    while time.time() < deadline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(ostudy)
        if not ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            return
        time.sleep(min(1.0, cfg.heartbeat_seconds))


# --------------------------------------------------------------------------------------
# the driver


def _threads_each(workers: int) -> int:
    from jetscan.cluster.local import usable_cpus

    return max(1, len(usable_cpus()) // workers)


def _ray_worker(task: dict) -> dict:
    study = Study.from_dict(task["study"], source="search worker")
    return worker(study, task["name"], task["storage"], trials=task["trials"], worker_index=task["index"],
                  threads=task["threads"], session=task["session"])


def search(
    study: Study,
    name: str,
    *,
    trials: int | None = None,
    workers: int = 1,
    address: str | None = None,
    storage: str | None = None,
    report_dir: str | Path | None = None,
    study_path: str | Path | None = None,
    threads: int | None = None,
    max_rounds: int = 5,
    spawn: bool = False,
    pin_cores: bool = True,
) -> dict:
    """Run (or finish) search ``name`` of ``study``: create the Optuna study once, recover dead
    workers' trials, run ``workers`` workers (here, as processes, or Ray tasks with ``address``)
    until ``trials`` trials are complete, keep the best weights and write the report. One local worker
    runs in this process unless ``spawn`` (then it is a process, like N workers). Local worker
    processes each run on their own block of this process's CPUs when there are enough for
    ``threads`` each (``pin_cores``, :func:`jetscan.cluster.local.core_sets`)."""
    import optuna

    cfg = search_config(study, name)  # objectives checked as the study loaded (Study._searches, with data.splits)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {trials})")
    target = min(trials, cfg.grid_size() or trials) if trials is not None else cfg.target_trials()
    url = storage or default_storage(study, name)
    rdb = _is_rdb(url)
    backend = open_storage(url, cfg)
    ostudy = create_search(study, name, backend)
    threads = threads or _threads_each(workers)
    tmp = None
    rounds = 0
    session = uuid.uuid4().hex[:12]
    max_failures = cfg.max_failures if cfg.max_failures is not None else target
    last = None
    try:
        while True:
            if rdb:  # the heartbeat marks dead workers' trials FAIL; its callback enqueues them again
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optuna.storages.fail_stale_trials(ostudy)
                c = _counts(ostudy, session)
                if rounds and c["RUNNING"] and not c["WAITING"] and c["done"] < target:
                    _wait_for_heartbeats(ostudy, cfg)  # workers are done here: wait until those trials go stale
                recovered = []
            else:  # a journal: its trials carry a heartbeat user attr (_beating)
                recovered = recover_orphans(ostudy, backend, stale_seconds=cfg.stale_after_seconds)
                c = _counts(ostudy, session)
                if rounds and c["RUNNING"] and not c["WAITING"] and c["done"] < target:
                    recovered += _wait_for_journal_trials(ostudy, backend, cfg)  # running on other hosts
            c = _counts(ostudy, session)
            if c["done"] >= target or c["errors"] >= max_failures or rounds >= max_rounds:
                break
            if not c["WAITING"] and _remaining_points(cfg, ostudy.get_trials(deepcopy=False), session) == 0:
                break  # every point of a finite space is done or failed in this command
            if (c["done"], c["errors"]) == last and not recovered and not c["WAITING"]:
                break  # the last round made no progress
            last = (c["done"], c["errors"])
            n = max(1, min(workers, target - c["done"]))
            if address is not None:
                from jetscan.cluster.ray import run_tasks

                task = {"study": study.model_dump(mode="json"), "name": name, "storage": url, "trials": target,
                        "threads": threads, "session": session}
                run_tasks(_ray_worker, [{**task, "index": i} for i in range(n)], workers=n, address=address)
            elif n == 1 and not spawn:
                worker(study, name, url, trials=target, worker_index=rounds, threads=threads, session=session)
            else:
                from jetscan.cluster.local import core_sets, run_processes

                if study_path is None:
                    tmp = tmp or tempfile.mkdtemp(prefix="jetscan-search-")
                    study_path = Path(tmp) / "study.yaml"
                    Path(study_path).write_text(study.to_yaml())
                argv = [sys.executable, "-m", "jetscan.jobs.cli", "search-worker", str(study_path), name,
                        "--storage", url, "--trials", str(target), "--threads", str(threads), "--session", session]
                env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                failed = run_processes([[*argv, "--worker-index", str(rounds * n + i)] for i in range(n)], env=env,
                                       cpus=core_sets(n, threads) if pin_cores else None)
                for line in failed:
                    print(f"search {name!r}: {line}; its trial is retried", file=sys.stderr)
            rounds += 1
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    summary = search_summary(study, name, ostudy)
    summary["counts"] = _counts(ostudy, session)
    summary["target"] = target
    summary["storage"] = _redact(url)
    if summary["counts"]["done"] >= target:
        summary["deleted_checkpoints"] = _keep_weights(study, name, ostudy)
    if report_dir is not None and summary["counts"]["COMPLETE"]:
        summary["report"] = str(write_search_report(study, name, ostudy, Path(report_dir)))
    return summary


def _best_trials(ostudy) -> list:
    import optuna

    complete = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    return list(ostudy.best_trials) if len(ostudy.directions) > 1 else [ostudy.best_trial]


def _keep_weights(study: Study, name: str, ostudy) -> list[str]:
    """Delete the checkpoints of trials that are not the best (or on the Pareto front)."""
    cfg = search_config(study, name)
    if cfg.keep_weights == "all":
        return []
    from jetscan.storage import blobs

    import re

    keep = {t.user_attrs.get("run") for t in _best_trials(ostudy)}
    keep |= {trial_run_name(study, name, t.params) for t in ostudy.get_trials(deepcopy=False)
             if t.state.name in ("RUNNING", "WAITING")}  # still to run somewhere: its checkpoint resumes it
    mine = re.compile(re.escape(name) + r"-[0-9a-f]{10}")
    fs, base = blobs.store_fs(study.store)
    deleted = []
    for rel in blobs.glob(study.store, f"_runs/{name}-*/checkpoint.pt"):
        run = rel.split("/")[1]
        if mine.fullmatch(run) and run not in keep:
            fs.rm(f"{base}/_runs/{run}", recursive=True)
            deleted.append(run)
    return deleted


# --------------------------------------------------------------------------------------
# summary and report


def search_summary(study: Study, name: str, ostudy) -> dict:
    """Counts, the trial table, the best trial(s) and, for a bottleneck search, the knee of the
    validation-loss curve (the unsupervised choice)."""
    cfg = search_config(study, name)
    labels = [o.label for o in cfg.objectives]
    table = []
    for t in ostudy.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": "SKIPPED" if "skipped" in t.user_attrs else t.state.name,
               "run": t.user_attrs.get("run", ""), **{k: t.params.get(k) for k in cfg.params}}
        for i, label in enumerate(labels):
            row[label] = t.values[i] if t.values is not None and len(t.values) > i else (
                t.value if t.state.name == "PRUNED" and i == 0 else None)
        row["seconds"] = t.duration.total_seconds() if t.duration is not None else None
        row["note"] = t.user_attrs.get("error") or t.user_attrs.get("skipped") or (
            f"retry of trial {t.user_attrs['retry_of']}" if "retry_of" in t.user_attrs else (
                f"retry of trial {t.system_attrs['failed_trial']}" if "failed_trial" in t.system_attrs else ""))
        table.append(row)
    best = [{"trial": t.number, "params": dict(t.params), "values": list(t.values), "run": t.user_attrs.get("run")}
            for t in _best_trials(ostudy)]
    out = {"search": name, "objectives": labels, "counts": _counts(ostudy), "trials": table, "best": best}
    if "hyper.bottleneck" in cfg.params and "val_loss" in labels:
        i = labels.index("val_loss")
        per_b: dict[int, float] = {}
        for row in table:
            if row["state"] == "COMPLETE" and row[labels[i]] is not None:
                b = row["hyper.bottleneck"]
                per_b[b] = min(per_b.get(b, math.inf), row[labels[i]])
        xs = sorted(per_b)
        k = knee_point(xs, [per_b[b] for b in xs])
        out["knee_bottleneck"] = None if k is None else xs[k]
    if "hyper.bottleneck" in cfg.params:  # the supervised view: the bottleneck with the best AUC per signal
        best_auc: dict[str, tuple[float, Any]] = {}
        for r in _results_rows(study, name):
            b, auc = r.get("param_hyper_bottleneck"), r.get("auc")
            if b is not None and auc is not None and not math.isnan(auc) and auc > best_auc.get(r["signal"], (-1.0, None))[0]:
                best_auc[r["signal"]] = (auc, b)
        out["auc_best_bottleneck"] = {sig: b for sig, (_, b) in sorted(best_auc.items())}
    return out


def _results_rows(study: Study, name: str) -> list[dict]:
    from jetscan.storage import results

    try:
        table = results.read_results(study.store)
    except StorageError:
        return []
    if "search" not in table.column_names:
        return []
    return [r for r in table.to_pylist() if r.get("search") == name]


def write_search_report(study: Study, name: str, ostudy, out_dir: Path) -> Path:
    """``<out_dir>/search-<name>/index.html`` with its PNGs and the trial table."""
    import html

    import numpy as np

    from jetscan.jobs import report as rep
    from jetscan.storage import results

    cfg = search_config(study, name)
    summary = search_summary(study, name, ostudy)
    out = Path(out_dir) / f"search-{name}"
    out.mkdir(parents=True, exist_ok=True)
    matplotlib, Figure, Canvas, _, style = rep.mpl_parts()
    pngs: list[tuple[str, Path]] = []
    notes: list[str] = []
    labels = summary["objectives"]
    complete = [r for r in summary["trials"] if r["state"] == "COMPLETE"]

    def save(fig, fname: str, caption: str) -> None:
        Canvas(fig)
        path = out / fname
        fig.savefig(path, dpi=rep.DPI, format="png")
        pngs.append((caption, path))

    with matplotlib.style.context(style):
        # optimisation history, one panel per objective
        for i, label in enumerate(labels):
            fig = Figure()
            ax = fig.add_subplot()
            xs = [r["trial"] for r in complete]
            ys = [r[label] for r in complete]
            ax.plot(xs, ys, "o", label="complete trials")
            if ys and len(labels) == 1:
                sense = cfg.objectives[i].sense
                run_best = np.minimum.accumulate(ys) if sense == "minimize" else np.maximum.accumulate(ys)
                ax.step(xs, run_best, where="post", label="best so far")
            ax.set_xlabel("trial")
            ax.set_ylabel(label)
            ax.set_title(f"search {name}: optimisation history")
            ax.legend()
            save(fig, f"history_{i}.png", f"optimisation history of {label}")
        # parameter importance
        if len(complete) >= 2:
            import optuna

            for i, label in enumerate(labels):
                sign = -1.0 if cfg.objectives[i].sense == "maximize" else 1.0  # the evaluator ranks low values
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        imp = optuna.importance.get_param_importances(ostudy, target=lambda t, i=i, g=sign: g * t.values[i])
                except Exception as exc:  # noqa: BLE001 - too few trials, constant values...
                    notes.append(f"parameter importance of {html.escape(label)}: not available ({html.escape(str(exc)[:200])})")
                    continue
                if not imp:
                    continue
                fig = Figure()
                ax = fig.add_subplot()
                ax.barh(list(imp), list(imp.values()))
                ax.set_xlabel(f"importance for {label}")
                ax.set_title(f"search {name}: parameter importance")
                save(fig, f"importance_{i}.png", f"parameter importance for {label}")
        else:
            notes.append("parameter importance needs at least 2 complete trials")
        rows = _results_rows(study, name)
        # bottleneck vs AUC and vs validation loss
        bkey = "param_hyper_bottleneck"
        if "hyper.bottleneck" in cfg.params and rows:
            fig = Figure()
            ax = fig.add_subplot()
            for sig in sorted({r["signal"] for r in rows}):
                pts = sorted((r[bkey], r["auc"], r.get("auc_std") or 0.0) for r in rows if r["signal"] == sig and r.get(bkey) is not None)
                if pts:
                    b, a, s = (np.array(v, dtype=float) for v in zip(*pts))
                    ax.errorbar(b, a, yerr=np.nan_to_num(s), fmt="o-", capsize=3, label=f"QCD vs {sig}")
            ax.set_xlabel("bottleneck")
            ax.set_ylabel("AUC (± spread over 10 test subsamples)")
            ax.legend()
            save(fig, "bottleneck_auc.png", "bottleneck vs AUC (supervised view)")
            per_b: dict[float, float] = {}
            for r in rows:
                if r.get(bkey) is not None and r.get("best_val_loss") is not None:
                    per_b[r[bkey]] = min(per_b.get(r[bkey], math.inf), r["best_val_loss"])
            if per_b:
                xs = sorted(per_b)
                fig = Figure()
                ax = fig.add_subplot()
                ax.plot(xs, [per_b[x] for x in xs], "o-", label="best validation loss")
                k = knee_point(xs, [per_b[x] for x in xs])
                if k is not None:
                    ax.axvline(xs[k], color="C3", ls="--", label=f"knee: bottleneck {xs[k]:g}")
                ax.set_xlabel("bottleneck")
                ax.set_ylabel("validation loss")
                ax.legend()
                save(fig, "bottleneck_val_loss.png", "bottleneck vs validation loss, with the knee (unsupervised choice)")
        # Pareto front
        if len(labels) == 2 and complete:
            front = {t["trial"] for t in summary["best"]}
            fig = Figure()
            ax = fig.add_subplot()
            pts = np.array([[r[labels[0]], r[labels[1]]] for r in complete], dtype=float)
            on = np.array([r["trial"] in front for r in complete])
            ax.plot(pts[~on, 0], pts[~on, 1], "o", color="0.6", label="dominated trials")
            order = np.argsort(pts[on, 0])
            ax.plot(pts[on, 0][order], pts[on, 1][order], "o-", color="C3", label="Pareto front")
            ax.set_xlabel(labels[0])
            ax.set_ylabel(labels[1])
            ax.set_title(f"search {name}: Pareto front")
            ax.legend()
            save(fig, "pareto.png", f"Pareto front of {labels[0]} vs {labels[1]}")
    # the best trial's ROC and mass histograms
    best_run = summary["best"][0]["run"] if summary["best"] else None
    if best_run and best_run in results.list_runs(study.store):
        result = results.read_run(study.store, best_run)
        (out / "best").mkdir(exist_ok=True)
        mpl = rep.mpl_parts()
        with matplotlib.style.context(style):
            for p in (rep.plot_roc(result, out / "best", mpl), rep.plot_sculpting(result, out / "best", mpl)):
                pngs.append((f"best trial ({best_run}): {p.stem}", p))
    e = html.escape
    headers = ["trial", "state", *cfg.params, *labels, "seconds", "run", "note"]
    body = []
    for r in summary["trials"]:
        body.append([str(r["trial"]), r["state"], *[rep.fmt_cell(r[k]) for k in cfg.params], *[rep.fmt_cell(r[k]) for k in labels],
                     rep.fmt_cell(r["seconds"]), r["run"], r["note"]])
    best_lines = "".join(
        f"<li>trial {b['trial']}: {e(json.dumps(b['params']))} -> {e(', '.join(f'{l} {v:.4g}' for l, v in zip(labels, b['values'])))}</li>"
        for b in summary["best"]
    )
    knee = summary.get("knee_bottleneck")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>search {e(name)}</title>",
        f"<style>{rep.CSS}</style></head><body>",
        f"<h1>jetscan search {e(name)} <span class=\"meta\">(study {e(study.name)}, run {e(cfg.run)})</span></h1>",
        f"<p class=\"meta\">{e(json.dumps(summary['counts']))}; sampler {cfg.sampler_name}, pruner {cfg.pruner}</p>",
        f"<h2>Best ({'Pareto front' if len(labels) > 1 else 'supervised' if labels != ['val_loss'] else 'lowest validation loss'})</h2><ul>{best_lines}</ul>",
    ]
    if "hyper.bottleneck" in cfg.params:
        parts.append(f"<p>Unsupervised choice (knee of the validation loss vs bottleneck, Kneedle): "
                     f"{'bottleneck ' + str(knee) if knee is not None else 'no knee (fewer than 3 sizes, or a straight line)'}"
                     f"; supervised (highest AUC): "
                     f"{e(', '.join(f'{b} against {sig}' for sig, b in summary.get('auc_best_bottleneck', {}).items()) or 'no AUC')}</p>")
    parts += [f"<p class=\"meta\">{n}</p>" for n in notes]
    parts.append("<h2>Trials</h2>" + rep.html_table(headers, body, left=2))
    parts.append('<div class="plots">' + "\n".join(
        f'<a href="{e(p.relative_to(out).as_posix())}"><img src="{e(p.relative_to(out).as_posix())}" alt="{e(c)}" title="{e(c)}"></a>'
        for c, p in pngs) + "</div></body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return index


# --------------------------------------------------------------------------------------
# command line (registered on jetscan's app by jetscan.jobs.cli)


def report_dir_for(study: Study) -> Path:
    store = study.store
    if "://" in store:
        return Path.cwd() / f"{study.name}-report"
    return Path(store).parent / f"{Path(store).stem}-report"


def add_commands(app) -> None:
    """``jetscan search`` and ``jetscan search-worker``."""

    import typer

    @app.command("search")
    def search_cmd(
        study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
        name: str = typer.Argument(..., metavar="NAME", help="a search of the study's search: section"),
        trials: Optional[int] = typer.Option(None, "--trials", help="complete trials to end with (default: the study's)"),
        workers: int = typer.Option(1, "--workers", help="workers (local processes, or Ray tasks with --address)"),
        address: Optional[str] = typer.Option(None, "--address", help="run the workers as tasks on the Ray cluster at HOST:PORT"),
        storage: Optional[str] = typer.Option(
            None, "--storage", help="Optuna storage: a journal file path (default <store>/_search/NAME.journal) or postgresql://..."
        ),
        report: Optional[Path] = typer.Option(None, "--report", help="report folder (default: beside the store)"),
        pin_cores: bool = typer.Option(
            True, "--pin-cores/--no-pin-cores",
            help="local workers each run on their own block of this machine's CPUs (when there are enough)",
        ),
    ) -> None:
        """Hyper-parameter search over one run: trials are real runs, trained, evaluated and stored."""
        from rich.console import Console

        study = Study.from_yaml(study_path)
        search_config(study, name)
        out = report or report_dir_for(study)
        summary = search(study, name, trials=trials, workers=workers, address=address, storage=storage,
                         report_dir=out, study_path=study_path, pin_cores=pin_cores)
        console = Console(stderr=True, soft_wrap=True, markup=False)  # one line each in a log file; values verbatim
        c = summary["counts"]
        console.print(f"search {name}: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed "
                      f"(target {summary['target']}); storage {summary['storage']}")
        for b in summary["best"]:
            console.print(f"  best: trial {b['trial']} {b['params']} -> {dict(zip(summary['objectives'], b['values']))}")
        if summary.get("knee_bottleneck") is not None:
            console.print(f"  unsupervised choice (knee of val loss vs bottleneck): {summary['knee_bottleneck']}")
        for sig, b in summary.get("auc_best_bottleneck", {}).items():
            console.print(f"  supervised choice (highest AUC against {sig}): bottleneck {b}")
        if "report" in summary:
            console.print(f"report: {summary['report']}")
        if c["done"] < summary["target"]:
            raise RunnerError(
                f"search {name!r} ended with {c['done']} of {summary['target']} trials ({c['FAIL']} failed: see the "
                "'error' of each failed trial in the report or with optuna-dashboard); fix the cause and run the same command again"
            )

    @app.command("search-worker")
    def search_worker_cmd(
        study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
        name: str = typer.Argument(..., metavar="NAME"),
        storage: str = typer.Option(..., "--storage", help="the search's Optuna storage (journal path or RDB URL)"),
        trials: Optional[int] = typer.Option(None, "--trials"),
        worker_index: int = typer.Option(0, "--worker-index", help="added to the sampler seed"),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: torch's)"),
        session: Optional[str] = typer.Option(None, "--session", help="the driver's id: a point that failed in it is not retried"),
    ) -> None:
        """One search worker on a search that 'jetscan search' created (for launchers: Slurm arrays...)."""
        study = Study.from_yaml(study_path)
        worker(study, name, storage, trials=trials, worker_index=worker_index, threads=threads, session=session)
