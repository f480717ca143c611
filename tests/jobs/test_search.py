"""Hyper-parameter searches on real generated jets: trials are real runs in the results store.

One tiny store (the session's Pythia jets, heimel40 images) is copied once for the module;
trials are PCA fits and 1-10 epoch dense autoencoders on ~150 training jets (seconds each).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetscan.core.study import Study
from jetscan.jobs.search import _load, default_storage, open_storage, search, trial_run_name
from jetscan.storage import blobs
from jetscan.storage.results import read_results

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

RUNS = {
    "pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 6}},
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 2, "optimizer": "adam"},
    "adv": {"model": "dense_ae", "samples": ["qcd"], "epochs": 2, "optimizer": "adam", "adversary": {"adv_lambda": 5e-4}},
}
SEARCHES = {
    "bottleneck": {"run": "pca", "space": {"hyper.bottleneck": {"int": [2, 18], "step": 8}},
                   "objectives": ["val_loss"], "sampler": "grid", "trials": 3},
    "lr": {"run": "dense", "space": {"lr": {"float": [1e-4, 1e-2], "log": True}}, "pruner": "median", "trials": 3, "seed": 1},
    "crash": {"run": "dense", "space": {"hyper.image_size": {"choices": [40, 37]}}, "sampler": "grid", "trials": 2},
    "grid2": {"run": "pca", "space": {"hyper.bottleneck": {"int": [1, 6]}}, "sampler": "grid", "trials": 6},
    "lambda": {"run": "adv", "space": {"adversary.lambda": {"float": [1e-4, 1e-1], "log": True}},
               "objectives": [{"metric": "auc", "signal": "top"}, "sculpting"], "trials": 3, "seed": 3},
    "kill": {"run": "dense", "space": {"hyper.bottleneck": {"choices": [4, 8]}, "epochs": {"choices": [8]}},
             "sampler": "grid", "trials": 2},
    "edit": {"run": "pca", "space": {"hyper.bottleneck": {"choices": [3, 5]}}, "sampler": "grid", "trials": 2,
             "keep_weights": "all"},
    "ray": {"run": "pca", "space": {"hyper.bottleneck": {"choices": [3, 5]}}, "sampler": "grid", "trials": 2},
    "pg": {"run": "dense", "space": {"hyper.bottleneck": {"choices": [3, 5]}, "epochs": {"choices": [12]}},
           "sampler": "grid", "trials": 2, "heartbeat_seconds": 1},
}


@pytest.fixture(scope="module")
def study(pythia_store, tmp_path_factory):
    """The session's jets with heimel40 images, in a store of this module's own."""
    from jetscan.jobs.preprocess import preprocess

    data = pythia_store.model_dump(mode="json")
    data["store"] = str(tmp_path_factory.mktemp("search") / "search.zarr")
    shutil.copytree(pythia_store.store, data["store"], ignore=shutil.ignore_patterns("_runs", "_results", "results", "_search"))
    data["preprocess"] = {"representations": ["heimel40"]}
    data["train"] = {"runs": RUNS, "threads": 1}
    data["search"] = SEARCHES
    s = Study.from_dict(data)
    preprocess(s, use_ray=False)
    return s


def trials_of(study: Study, name: str, storage: str | None = None):
    url = storage or default_storage(study, name)
    return _load(study, name, open_storage(url, study.search[name])).get_trials(deepcopy=False)


def states(trials) -> list[str]:
    return [("SKIPPED" if "skipped" in t.user_attrs else t.state.name) for t in trials]


def test_a_small_search_writes_every_trial_to_parquet_with_its_parameters(study, tmp_path):
    summary = search(study, "bottleneck", report_dir=tmp_path / "report")
    trials = trials_of(study, "bottleneck")
    assert states(trials).count("COMPLETE") == 3 and summary["counts"]["COMPLETE"] == 3
    assert sorted(t.params["hyper.bottleneck"] for t in trials if t.state.name == "COMPLETE") == [2, 10, 18]
    rows = [r for r in read_results(study.store).to_pylist() if r.get("search") == "bottleneck"]
    assert sorted((r["param_hyper_bottleneck"], r["signal"]) for r in rows) == [
        (b, s) for b in (2, 10, 18) for s in ("gluino", "top")
    ]
    for r in rows:
        t = next(t for t in trials if t.user_attrs["run"] == r["run"])
        assert r["trial"] == t.number and r["bottleneck"] == r["param_hyper_bottleneck"]
        assert r["best_val_loss"] == pytest.approx(t.value) and 0 < r["auc"] < 1
    # a PCA with more components reconstructs better
    losses = {t.params["hyper.bottleneck"]: t.value for t in trials}
    assert losses[18] < losses[10] < losses[2]
    # weights are kept for the best trial only; scores and metrics for all
    best = summary["best"][0]["run"]
    assert best == trial_run_name(study, "bottleneck", {"hyper.bottleneck": 18})
    assert [p.split("/")[1] for p in blobs.glob(study.store, "_runs/bottleneck-*/checkpoint.pt")] == [best]
    assert summary["knee_bottleneck"] in (2, 10, 18)
    for sig in ("top", "gluino"):  # the supervised choice: the bottleneck of the highest AUC
        assert summary["auc_best_bottleneck"][sig] == max((r for r in rows if r["signal"] == sig), key=lambda r: r["auc"])["bottleneck"]
    index = Path(summary["report"])
    assert "Unsupervised choice" in index.read_text()
    assert {"history_0.png", "bottleneck_val_loss.png", "bottleneck_auc.png"} <= {p.name for p in index.parent.iterdir()}
    assert (index.parent / "best" / "roc.png").is_file() and (index.parent / "best" / "mass_sculpting.png").is_file()
    # running it again trains nothing: the search is complete
    again = search(study, "bottleneck", trials=3)
    assert again["counts"]["COMPLETE"] == 3 and len(trials_of(study, "bottleneck")) == len(trials)


def test_a_pruned_single_objective_search_over_the_learning_rate(study):
    from jetscan.jobs.search import create_search

    # two good learning rates first (the median pruner's two start-up trials), then a hopeless one
    ostudy = create_search(study, "lr", open_storage(default_storage(study, "lr"), study.search["lr"]))
    for lr in (1e-2, 5e-3, 1e-4):
        ostudy.enqueue_trial({"lr": lr})
    summary = search(study, "lr")
    c = summary["counts"]
    assert c["COMPLETE"] == 2 and c["PRUNED"] == 1, c
    trials = trials_of(study, "lr")
    for t in trials:
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == [0, 1]  # the pruner saw every epoch's val loss
    pruned = next(t for t in trials if t.state.name == "PRUNED")
    assert pruned.params["lr"] == pytest.approx(1e-4)
    assert sorted(pruned.intermediate_values) == [0]  # stopped after its first epoch
    median = sorted(t.intermediate_values[0] for t in trials if t.state.name == "COMPLETE")
    assert pruned.intermediate_values[0] > sum(median) / 2  # worse than the median: why it was pruned
    # a pruned trial is not evaluated: its run has no results
    runs = {r["run"] for r in read_results(study.store).to_pylist() if r.get("search") == "lr"}
    assert pruned.user_attrs["run"] not in runs and len(runs) == 2


def test_a_crashing_trial_fails_with_its_error_and_the_search_goes_on(study):
    summary = search(study, "crash", max_rounds=1)
    trials = trials_of(study, "crash")
    by_size = {t.params["hyper.image_size"]: t for t in trials}
    assert by_size[40].state.name == "COMPLETE"
    assert by_size[37].state.name == "FAIL"
    assert by_size[37].user_attrs["error"].startswith("ConfigError: ")
    assert "image1x37x37" in by_size[37].user_attrs["error"]
    assert summary["counts"]["COMPLETE"] == 1 and summary["counts"]["FAIL"] == 1


def test_two_workers_share_one_journal_and_never_run_a_grid_point_twice(study):
    from jetscan.jobs.search import create_search

    # the same point queued twice: the two workers take both at once, and one must not run it
    ostudy = create_search(study, "grid2", open_storage(default_storage(study, "grid2"), study.search["grid2"]))
    for _ in range(2):
        ostudy.enqueue_trial({"hyper.bottleneck": 3})
    summary = search(study, "grid2", workers=2)
    trials = trials_of(study, "grid2")
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["hyper.bottleneck"] for t in done) == [1, 2, 3, 4, 5, 6]
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2 and str(os.getpid()) not in " ".join(workers)  # two worker processes did them
    if len(os.sched_getaffinity(0)) >= 2:  # each worker on its own CPUs (cluster.local.core_sets)
        cpus = {t.user_attrs["worker"]: t.user_attrs["cpus"] for t in done}
        assert len(set(cpus.values())) == 2, cpus
    assert summary["counts"]["COMPLETE"] == 6
    # every trial that ran (whatever its end) ran its own point; the others were skipped as duplicates
    ran = [t for t in trials if "skipped" not in t.user_attrs]
    assert sorted(t.params["hyper.bottleneck"] for t in ran) == [1, 2, 3, 4, 5, 6], [(t.number, t.params, t.state.name) for t in ran]
    # of the two queued copies, whichever worker set its point second skipped it as the other's duplicate
    queued = [t for t in trials if t.system_attrs.get("fixed_params") == {"hyper.bottleneck": 3}]
    skipped = [t for t in queued if "skipped" in t.user_attrs]
    assert len(queued) == 2 and len(skipped) == 1, [(t.number, t.user_attrs) for t in queued]
    other = next(t for t in queued if t is not skipped[0])
    assert skipped[0].user_attrs["skipped"].startswith(f"duplicate of trial {other.number} "), skipped[0].user_attrs
    # each run's results were written by the one trial that ran it
    trial_of = {t.user_attrs["run"]: t.number for t in done}
    rows = [r for r in read_results(study.store).to_pylist() if r.get("search") == "grid2"]
    assert {r["run"]: r["trial"] for r in rows} == trial_of


def test_a_multi_objective_lambda_search_gives_a_pareto_front(study, tmp_path):
    summary = search(study, "lambda", report_dir=tmp_path)
    assert summary["counts"]["COMPLETE"] == 3
    assert summary["objectives"] == ["auc[top]", "jsd_50"]
    front = summary["best"]
    assert front and all(len(b["values"]) == 2 for b in front)
    values = [tuple(b["values"]) for b in front]
    for a in values:  # no point of the front dominates another (auc up, jsd down)
        assert not any(b != a and b[0] >= a[0] and b[1] <= a[1] for b in values)
    assert (tmp_path / "search-lambda" / "pareto.png").is_file()
    rows = [r for r in read_results(study.store).to_pylist() if r.get("search") == "lambda"]
    assert {r["adv_lambda"] for r in rows} == {r["param_adversary_adv_lambda"] for r in rows} and len(rows) == 6


def test_an_edited_base_run_is_searched_as_new_runs_and_unchanged_settings_reuse_results(study, tmp_path):
    first = search(study, "edit", storage=str(tmp_path / "first.journal"))
    assert first["counts"]["COMPLETE"] == 2
    # the user edits the base run in the study file (so the old journal is refused: a new one)
    data = study.model_dump(mode="json")
    data["train"]["runs"]["pca"]["max_fit_jets"] = 100
    edited = Study.from_dict(data)
    second = search(edited, "edit", storage=str(tmp_path / "second.journal"))
    trials = trials_of(edited, "edit", str(tmp_path / "second.journal"))
    assert second["counts"]["COMPLETE"] == 2, [t.user_attrs.get("error") for t in trials]
    old_runs = {t.user_attrs["run"] for t in trials_of(study, "edit", str(tmp_path / "first.journal"))}
    new_runs = {t.user_attrs["run"] for t in trials}
    assert len(new_runs) == 2 and not new_runs & old_runs
    assert all("reused_results" not in t.user_attrs for t in trials)  # trained with the edited settings
    # the same settings again (a fresh journal): the stored results are reused, nothing is trained
    third = search(edited, "edit", storage=str(tmp_path / "third.journal"))
    again = trials_of(edited, "edit", str(tmp_path / "third.journal"))
    assert third["counts"]["COMPLETE"] == 2 and {t.user_attrs["run"] for t in again} == new_runs
    assert all(t.user_attrs.get("reused_results") for t in again)
    assert sorted(t.value for t in again) == sorted(t.value for t in trials)


def test_workers_as_ray_tasks(study, ray_local):
    summary = search(study, "ray", workers=2, address="auto")  # joins the session's local Ray instance
    trials = trials_of(study, "ray")
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert summary["counts"]["COMPLETE"] == 2 and sorted(t.params["hyper.bottleneck"] for t in done) == [3, 5]
    assert all(not t.user_attrs["worker"].endswith(f":{os.getpid()}") for t in done)  # ran in Ray workers


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jetscan.jobs.cli", *args]


def _wait_for(cond, timeout: float, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before it could be killed")
        time.sleep(0.05)
    assert cond(), "timed out"


def test_a_killed_search_finishes_when_run_again_without_redoing_or_duplicating(study, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(study.to_yaml())
    first = trial_run_name(study, "kill", {"hyper.bottleneck": 4, "epochs": 8})
    second = trial_run_name(study, "kill", {"hyper.bottleneck": 8, "epochs": 8})
    proc = subprocess.Popen(_cli("search", str(path), "kill"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill it once one trial is complete and the other has written a checkpoint
    runs = (first, second)
    _wait_for(lambda: sum(blobs.exists(study.store, f"_results/{r}.parquet") for r in runs) == 1
              and all(blobs.exists(study.store, f"_runs/{r}/checkpoint.pt") for r in runs), 240, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_run = next(r for r in runs if blobs.exists(study.store, f"_results/{r}.parquet"))
    killed_run = next(r for r in runs if r != done_run)
    stamp = os.stat(Path(study.store) / "_results" / f"{done_run}.parquet").st_mtime_ns
    assert [t.state.name for t in trials_of(study, "kill")].count("RUNNING") == 1
    rc = subprocess.run(_cli("search", str(path), "kill"), stdout=subprocess.DEVNULL, timeout=300).returncode
    assert rc == 0
    trials = trials_of(study, "kill")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["run"] for t in complete) == sorted(runs)  # no duplicate
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "died mid-trial" in failed[0].user_attrs["error"]
    retry = next(t for t in complete if t.user_attrs.get("retry_of") == failed[0].number)
    assert retry.user_attrs["run"] == killed_run == failed[0].user_attrs["run"]
    # the finished trial was not trained or evaluated again
    assert os.stat(Path(study.store) / "_results" / f"{done_run}.parquet").st_mtime_ns == stamp


# -------------------------------------------------------------------------------------- PostgreSQL

_PG = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
PG_BIN = _PG[-1].parent if _PG else Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 (as the postgres user when run as root)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (make installs Debian's postgresql)")
    pytest.importorskip("psycopg2")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="jetscan-pg-"))  # under /tmp: the postgres user can reach it
    data, port = base / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                           capture_output=True)
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root, and no 'postgres' user could be made to run the server (it refuses root)")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chmod(base, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*args):
        out = subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{Path(str(args[0])).name} failed: {out.stderr.strip()[-2000:]}"

    run(PG_BIN / "initdb", "-D", data, "-U", "jetscan", "--auth=trust", "-E", "UTF8")
    run(PG_BIN / "pg_ctl", "-D", data, "-l", base / "log", "-w", "-t", "60", "start",
        "-o", f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off")
    try:
        run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "jetscan", "optuna")
        yield f"postgresql+psycopg2://jetscan@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_postgresql_storage_retries_a_killed_workers_trial_through_the_heartbeat(study, tmp_path, postgres):
    from jetscan.jobs.search import create_search

    path = tmp_path / "study.yaml"
    path.write_text(study.to_yaml())
    create_search(study, "pg", open_storage(postgres, study.search["pg"]))
    proc = subprocess.Popen(_cli("search-worker", str(path), "pg", "--storage", postgres), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: len(blobs.glob(study.store, "_runs/pg-*/checkpoint.pt")) == 1, 240, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = [t for t in trials_of(study, "pg", postgres) if t.state.name == "RUNNING"]
    assert len(killed) == 1
    summary = search(study, "pg", storage=postgres)
    trials = trials_of(study, "pg", postgres)
    assert summary["counts"]["COMPLETE"] == 2
    stale = next(t for t in trials if t.number == killed[0].number)
    assert stale.state.name == "FAIL"  # failed by the heartbeat check
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == killed[0].params
    assert sorted(t.params["hyper.bottleneck"] for t in trials if t.state.name == "COMPLETE") == [3, 5]
