"""``jetscan submit`` / ``jetscan status`` (jetscan.jobs.submit, jetscan.cluster.slurm_site).

- the site file: Slurm time-limit forms, clear errors for a malformed limit, an unknown key
  and (against the real local Slurm) a partition the cluster does not have;
- the dry-run scripts: each script's directives, srun lines, job-id ports, array range and
  the afterok chain read from the text, and ``bash -n`` accepts every script; the script's
  node-list handling and port derivation run in bash with a given job id and node list;
- real submissions against the local Slurm of tests/cluster/conftest.py (``slurm_cluster``):
  ``--stage all`` (Ray generate -> Ray preprocess -> an array of two training runs ->
  evaluate) ends with the store ``jetscan run`` makes; a training job sent USR2 through Slurm
  checkpoints, requeues itself and ends with the weights of an uninterrupted run; a generation
  job stopped the same way mid-shard requeues and its arrays are bit-identical.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jetscan.cluster import slurm_site
from jetscan.cluster.slurm_site import Site, load_site, time_limit_minutes
from jetscan.core.errors import ConfigError
from jetscan.jobs import submit as submit_mod

REPO = Path(submit_mod.__file__).resolve().parent.parent
SITE_EXAMPLE = REPO / "slurm" / "site.example.yaml"
SITE_LOCAL = REPO / "slurm" / "site.local.yaml"
WIDE = {**os.environ, "COLUMNS": "500"}  # rich wraps error lines at the terminal width
TINY_RUNS = {
    "pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 4}},
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 1e-3},
}


def _study_file(make_study, tmp_path, name="tiny", runs=TINY_RUNS, n_jets=100, **kw):
    study = make_study(
        tmp_path / f"{name}.zarr", samples={"qcd": {"process": "qcd_dijet", "n_jets": n_jets}}, shard_jets=50,
        preprocess={"representations": ["heimel40"]}, train={"runs": runs, "threads": 1, "device": "cpu"}, name=name, **kw,
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(study.to_yaml())
    return study, path


# --------------------------------------------------------------------------- site file
def test_time_limits_in_every_slurm_form():
    assert [time_limit_minutes(t) for t in ("45", "45:30", "2:30:00", "1-12", "1-12:30", "1-12:30:30")] == [
        45, 45.5, 150, 2160, 2190, 2190.5
    ]
    for bad in ("1h", "2:61:00", "1:00:75", "1-2-3", "", "0"):
        with pytest.raises(ValueError):
            time_limit_minutes(bad)


def test_site_file_errors_name_the_key(tmp_path):
    site = load_site(SITE_EXAMPLE)
    assert site.time_for("train") == "1-00:00:00" and site.time_for("scan") == "1:00:00"
    assert site.directives() == ["--partition=gpu", "--account=m1234", "--qos=regular", "--constraint=gpu", "--mail-type=FAIL"]
    assert load_site(SITE_LOCAL).partition == "debug"

    bad = tmp_path / "site.yaml"
    bad.write_text("partition: debug\ntime: {train: '1:75:00'}\n")
    with pytest.raises(ConfigError, match=r"invalid Slurm site file\n  time: train: '1:75:00' is not a Slurm time limit: use MM, MM:SS, HH:MM:SS"):
        load_site(bad)
    bad.write_text("partition: debug\nwalltime: 10\n")
    with pytest.raises(ConfigError, match="walltime: unknown key; valid keys here: partition, account"):
        load_site(bad)
    bad.write_text("partition: my partition\n")
    with pytest.raises(ConfigError, match="partition: must be one Slurm name"):
        load_site(bad)
    bad.write_text("signal: {name: KILL}\n")
    with pytest.raises(ConfigError, match="signal.name"):
        load_site(bad)
    with pytest.raises(ConfigError, match="site file .*nope.yaml' does not exist"):
        load_site(tmp_path / "nope.yaml")


def test_fill_refuses_a_missing_value():
    assert slurm_site.fill("a={{x}} b=${y}", {"x": "1"}) == "a=1 b=${y}"
    with pytest.raises(ConfigError, match="no value for x"):
        slurm_site.fill("a={{x}}", {})


# ---------------------------------------------------------------------- dry-run scripts
def _sbatch_options(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ").strip() for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_dry_run_scripts(make_study, tmp_path):
    study, path = _study_file(make_study, tmp_path)
    site = load_site(SITE_EXAMPLE)
    jobs = submit_mod.submit(study, path, site, "all", dry_run=True)
    assert [j.stage for j in jobs] == ["generate", "preprocess", "train", "evaluate"]
    assert not any(j.path.exists() for j in jobs)  # a dry run writes nothing
    by = {j.stage: j for j in jobs}
    for job in jobs:
        opts = _sbatch_options(job.text)
        assert f"--job-name=jetscan-tiny-{job.stage}" in opts
        assert {"--open-mode=append", "--requeue", "--signal=B:USR2@300", "--partition=gpu", "--account=m1234",
                "--qos=regular", "--constraint=gpu", "--mail-type=FAIL"} <= set(opts), opts
        assert not re.search(r"\{\{\w+\}\}", job.text) and "module load python/3.11" in job.text
        assert 'PYTHON="$HOME/jetscan/.venv/bin/python"' in job.text
        assert f"STUDY={path.resolve()}" in job.text
        assert "SLURM_RESTART_COUNT" in job.text and 'scontrol requeue "$SLURM_JOB_ID"' in job.text
        assert "trap on_warning USR2" in job.text
        r = subprocess.run(["bash", "-n"], input=job.text, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # Ray stages: nodes from the site file, ports from the job id, a short temp dir, workers by srun
    gen = _sbatch_options(by["generate"].text)
    assert {"--nodes=4", "--ntasks-per-node=1", "--cpus-per-task=64", "--time=4:00:00"} <= set(gen)
    assert "--nodes=2" in _sbatch_options(by["preprocess"].text)
    assert "port=$(( 30000 + (SLURM_JOB_ID % 270) * 10 ))" in by["generate"].text
    assert "ray_tmp=/tmp/ray-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}" in by["generate"].text
    assert 'srun --nodes=$((n_nodes - 1)) --ntasks=$((n_nodes - 1)) --ntasks-per-node=1 --exclude="$head_node"' in by["generate"].text
    assert '-m jetscan.jobs.cli generate "$STUDY" --address "$head_ip:$port"' in by["generate"].text
    assert '-m jetscan.jobs.cli preprocess "$STUDY" --address "$head_ip:$port"' in by["preprocess"].text
    # training: an array over the runs, one task per GPU, srun'd workers, USR2 passed on
    tr = _sbatch_options(by["train"].text)
    assert {"--array=0-1%8", "--ntasks=4", "--cpus-per-task=8", "--gpus-per-task=1", "--time=1-00:00:00",
            "--output=/scratch/jetscan/logs/%x-%A_%a.out"} <= set(tr), tr
    assert "runs=(pca dense)" in by["train"].text
    assert re.search(r'srun --kill-on-bad-exit=1 .*\n\s+"\$PYTHON" -m jetscan.jobs.cli train "\$STUDY" --model "\$run" --backend ddp &', by["train"].text)
    assert 'kill -USR2 "$srun_pid"' in by["train"].text and "export JETSCAN_STOP_SIGNALS=USR2" in by["train"].text
    # the chain
    assert [j.sbatch_command() for j in jobs] == [
        ["sbatch", "--parsable", "/scratch/jetscan/logs/tiny-generate.sbatch"],
        ["sbatch", "--parsable", "--dependency=afterok:${JOB_generate}", "/scratch/jetscan/logs/tiny-preprocess.sbatch"],
        ["sbatch", "--parsable", "--dependency=afterok:${JOB_preprocess}", "/scratch/jetscan/logs/tiny-train.sbatch"],
        ["sbatch", "--parsable", "--dependency=afterok:${JOB_train}", "/scratch/jetscan/logs/tiny-evaluate.sbatch"],
    ]
    assert by["evaluate"].sbatch_command({"train": "42"})[2] == "--dependency=afterok:42"


def test_dry_run_on_the_command_line_and_stage_errors(make_study, tmp_path):
    study, path = _study_file(make_study, tmp_path)
    cli = [sys.executable, "-m", "jetscan.jobs.cli", "submit", str(path), "--site", str(SITE_LOCAL)]
    r = subprocess.run([*cli, "--stage", "train", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --array=0-1\n" in r.stdout and "#SBATCH --partition=debug" in r.stdout
    assert f"# sbatch --parsable {tmp_path / 'slurm-logs' / 'tiny-train.sbatch'}" in r.stdout
    assert "--gpus-per-task" not in r.stdout  # no GPUs on this site
    for stage, why in (("scan", "a scan starts its own Slurm worker jobs (dask-jobqueue): run `jetscan scan STUDY.yaml NAME --cluster slurm`"), ("search", "name the search with --search NAME (study 'tiny' has: none)"),
                       ("everything", "stages are generate, preprocess")):
        r = subprocess.run([*cli, "--stage", stage, "--dry-run"], capture_output=True, text=True, timeout=120, env=WIDE)
        assert r.returncode == 2 and why in r.stderr, r.stderr
    bad = tmp_path / "bad-site.yaml"
    bad.write_text("time: {generate: '90 minutes'}\n")
    r = subprocess.run([*cli[:-1], str(bad), "--dry-run"], capture_output=True, text=True, timeout=120, env=WIDE)
    assert r.returncode == 2 and "time: generate: '90 minutes' is not a Slurm time limit" in r.stderr, r.stderr


def test_dry_run_search_workers_as_an_array_then_the_driver(tmp_path):
    from jetscan.core.study import Study

    path = REPO / "studies" / "search-bottleneck.yaml"
    study = Study.from_yaml(path)
    site = load_site(SITE_EXAMPLE)
    jobs = submit_mod.submit(study, path, site, "search", dry_run=True, search="bottleneck")
    assert [j.stage for j in jobs] == ["search", "search-driver"]
    workers, driver = jobs
    assert {"--array=0-1%8", "--ntasks=1", "--cpus-per-task=8", "--requeue", "--signal=B:USR2@300",
            "--job-name=jetscan-search-search"} <= set(_sbatch_options(workers.text))
    journal = str(Path(study.store) / "_search" / "bottleneck.journal")
    assert f'search-worker "$STUDY" bottleneck --storage {journal}' in workers.text
    assert '--worker-index "$SLURM_ARRAY_TASK_ID"' in workers.text
    assert f'-m jetscan.jobs.cli search "$STUDY" bottleneck --storage {journal} &' in driver.text
    assert driver.sbatch_command({"search": "7"})[2] == "--dependency=afterany:7"
    for job in jobs:
        assert not re.search(r"\{\{\w+\}\}", job.text)
        assert subprocess.run(["bash", "-n"], input=job.text, capture_output=True, text=True).returncode == 0
    with pytest.raises(ConfigError, match="name the search with --search NAME .*has: bottleneck, lambda"):
        submit_mod.plan_jobs(study, path, site, "search")
    with pytest.raises(ConfigError, match="nope"):
        submit_mod.plan_jobs(study, path, site, "search", search="nope")


def test_the_scripts_node_list_and_ports_in_bash(make_study, tmp_path):
    """The Ray script's own lines, run by bash with a fake scontrol: the head is the first node
    of the list, the others get srun'd workers, and the ports follow the job id."""
    study, path = _study_file(make_study, tmp_path)
    text = submit_mod.plan_jobs(study, path, Site(), "generate")[0].text
    start = text.index("mapfile -t nodes")
    stop = text.index("export RAY_USAGE_STATS_ENABLED")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/bash\n[[ "$1 $2 $3" == "show hostnames gpu[07-09]" ]] && printf "gpu07\\ngpu08\\ngpu09\\n"\n')
    (fake / "scontrol").chmod(0o755)
    snippet = text[start:stop] + 'echo "$head_node $n_nodes $port ${node_ports[*]} $ray_tmp"\n'
    for job, want in ((1234, 30000 + 1234 % 270 * 10), (1235, 30000 + 1235 % 270 * 10)):
        env = {"PATH": f"{fake}:/usr/bin:/bin", "SLURM_JOB_ID": str(job), "SLURM_JOB_NODELIST": "gpu[07-09]",
               "SLURM_RESTART_COUNT": "2"}
        r = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[:3] == ["gpu07", "3", str(want)] and want == slurm_site.ray_port(job)
        assert f"--node-manager-port={want + 1}" in r.stdout and f"--metrics-export-port={want + 6}" in r.stdout
        assert r.stdout.split()[-1] == f"/tmp/ray-{job}-2"
    assert slurm_site.ray_port(1234) != slurm_site.ray_port(1235)
    assert len({slurm_site.ray_port(j) for j in range(270)}) == 270  # 270 consecutive jobs never share a port


def test_preempt_flag_from_the_environment():
    import signal

    from jetscan.cluster import preempt
    from jetscan.core.errors import RunnerError

    assert preempt.from_env({}) is None
    old = signal.getsignal(signal.SIGUSR2)
    try:
        flag = preempt.from_env({preempt.ENV: "USR2"})
        assert not flag()
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert flag() and flag.received == signal.SIGUSR2
    finally:
        signal.signal(signal.SIGUSR2, old)
    with pytest.raises(RunnerError, match="'NOPE' is not a signal name"):
        preempt.from_env({preempt.ENV: "nope"})


# ---------------------------------------------------------------------- real submissions
TIME_COLUMNS = {"seconds", "created_utc", "host"}


def _cli(cluster, *args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "jetscan.jobs.cli", *args], env=env or cluster.env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _tasks(cluster, job_id: str) -> list[dict]:
    return slurm_site.job_states(job_id, env=cluster.env)


def _wait_all(cluster, ids: list[str], logs: Path, timeout: float = 600) -> dict[str, list[dict]]:
    """Wait until every job (and array task) of ``ids`` has ended; fail at once, with the job
    logs, when one fails or can never start."""
    deadline = time.monotonic() + timeout
    while True:
        states = {j: _tasks(cluster, j) for j in ids}
        flat = [t for ts in states.values() for t in ts]
        bad = [t for t in flat if t["state"] in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
               or "DependencyNeverSatisfied" in t["reason"]]
        if bad or time.monotonic() > deadline:
            text = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.out")))
            pytest.fail(f"jobs {bad or 'not done in time'}: {flat}\n{text}\n{cluster.logs()}")
        if all(t["state"] == "COMPLETED" for t in flat):
            return states
        time.sleep(1)


def _same_catalog(a, b):
    keep = [c for c in a.column_names if c not in TIME_COLUMNS]
    assert a.select(keep).sort_by([("sample", "ascending"), ("shard", "ascending")]).equals(
        b.select(keep).sort_by([("sample", "ascending"), ("shard", "ascending")]))


def _same_arrays(store_a: str, store_b: str, groups: list[str]):
    import zarr

    za, zb = zarr.open_group(store_a, mode="r"), zarr.open_group(store_b, mode="r")
    n = 0
    for group in groups:
        for name, arr in za[group].arrays():
            np.testing.assert_array_equal(arr[...], zb[f"{group}/{name}"][...], err_msg=f"{group}/{name}")
            n += 1
    assert n >= 5


SAMPLES = {"qcd": {"process": "qcd_dijet", "n_jets": 100}, "top": {"process": "top_hadronic", "n_jets": 50}}


def _write_study(folder: Path, **data):
    """The tiny study (3 shards: qcd 2, top 1) with its store and YAML in ``folder``."""
    from jetscan.core.study import Study

    folder.mkdir(parents=True, exist_ok=True)
    d = {
        "name": "tiny", "store": str(folder / "tiny.zarr"), "seed": 7, "sqrt_s_gev": 13000.0,
        "jet": {"r": 0.8, "pt_window_gev": [800.0, 900.0], "abs_eta_max": 1.0, "max_constituents": 120},
        "generation": {"shard_jets": 50, "batch_events": 100},
        "preprocess": {"representations": ["heimel40"]},
        "data": {"batch_size": 16, "shuffle_buffer_jets": 100, "splits": {"train": 0.5, "val": 0.25, "test": 0.25}, **data},
        "samples": SAMPLES,
        "train": {"runs": TINY_RUNS, "threads": 1, "device": "cpu"},
    }
    study = Study.from_dict(d)
    (folder / "tiny.yaml").write_text(study.to_yaml())
    return study, folder / "tiny.yaml"


class _Reference:
    """``jetscan run`` of the tiny study on this machine (local Ray), started at once and
    waited for by ``wait()`` (it runs while the Slurm jobs do)."""

    def __init__(self, folder: Path, env: dict):
        self.study, self.path = _write_study(folder)
        self.proc = subprocess.Popen([sys.executable, "-m", "jetscan.jobs.cli", "run", str(self.path), "--workers", "2"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out = None

    def wait(self):
        if self.out is None:
            self.out, _ = self.proc.communicate(timeout=900)
            assert self.proc.returncode == 0, self.out[-5000:]
        return self.study


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_env):
    ref = _Reference(tmp_path_factory.mktemp("ref"), ray_env())
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


def _submit(cluster, study_yaml: Path, *args, site=SITE_LOCAL) -> list[str]:
    r = _cli(cluster, "submit", str(study_yaml), "--site", str(site), *args)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert ids and all(i.isdigit() for i in ids), r.stdout
    return ids


def _committed(store: str) -> dict:
    from jetscan.storage import catalog

    try:
        return {(r["sample"], r["shard"]): r["created_utc"] for r in catalog.read_catalog(store).to_pylist()}
    except Exception:  # noqa: BLE001 - no store yet
        return {}


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.pythia
@pytest.mark.ray
def test_submit_all_survives_a_preempted_generation_and_ends_with_the_store_of_jetscan_run(slurm_cluster, reference, tmp_path):
    """The whole chain under Slurm, with the generation job stopped mid-shard (USR2, as
    --signal=B:USR2 sends before a time limit): it requeues, makes only the missing shards, and
    the chain ends with the store that ``jetscan run`` makes on this machine."""
    from jetscan.storage import catalog
    from jetscan.storage.results import read_results

    sub, sub_yaml = _write_study(tmp_path / "sub")
    ids = _submit(slurm_cluster, sub_yaml)
    assert len(ids) == 4
    logs = tmp_path / "sub" / "slurm-logs"
    # the chain as Slurm holds it: each job waits on the one before
    for before, job in zip(ids, ids[1:]):
        fields = _tasks(slurm_cluster, job)
        info = slurm_cluster.run(["scontrol", "-o", "show", "job", job]).stdout
        assert f"Dependency=afterok:{before}" in info or fields[0]["state"] != "PENDING", info

    # stop the generation job once its first shard is committed
    deadline = time.monotonic() + 400
    while not (before := _committed(sub.store)):
        assert time.monotonic() < deadline, f"no shard committed: {_tasks(slurm_cluster, ids[0])}"
        time.sleep(0.2)
    assert len(before) < 3, "every shard was made before the signal: make the study bigger"
    r = slurm_cluster.run(["scancel", "--signal=USR2", "--batch", ids[0]])
    assert r.returncode == 0, r.stderr

    ref = reference.wait()
    states = _wait_all(slurm_cluster, ids, logs)
    assert states[ids[0]][0]["restarts"] == 1, states
    gen_log = next(logs.glob("jetscan-tiny-generate-*.out")).read_text()
    assert "restart 0" in gen_log and "restart 1" in gen_log and "stopping and requeueing" in gen_log, gen_log
    assert "with 1 of 1 node(s)" in gen_log, gen_log
    after = _committed(sub.store)
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())  # only the missing shards were made
    # the training array: two tasks, one per run, both completed
    assert {t["job_id"] for t in states[ids[2]]} == {f"{ids[2]}_0", f"{ids[2]}_1"}

    for table in ("jets", "inputs/heimel40"):
        _same_catalog(catalog.read_catalog(sub.store, table=table), catalog.read_catalog(ref.store, table=table))
    _same_arrays(sub.store, ref.store, ["qcd/jets", "qcd/constituents", "qcd/truth", "top/jets", "top/constituents",
                                        "qcd/inputs", "top/inputs"])
    a, b = read_results(sub.store), read_results(ref.store)
    assert a.num_rows == b.num_rows == 2  # (pca, dense) x top
    import pandas as pd

    keep = [c for c in a.column_names if c not in TIME_COLUMNS and not c.endswith("seconds")]  # wall times differ
    pd.testing.assert_frame_equal(a.select(keep).to_pandas(), b.select(keep).to_pandas(), check_exact=True)

    # status: every job completed, every shard committed, every run finished
    st = _cli(slurm_cluster, "status", str(sub_yaml), "--site", str(SITE_LOCAL))
    assert st.returncode == 0, st.stderr
    assert st.stdout.count("COMPLETED") == 5, st.stdout  # generate, preprocess, 2 array tasks, evaluate
    assert re.search(r"qcd\s+│\s+2/2", st.stdout) and re.search(r"dense\s+│\s+2/2\s+│\s+yes", st.stdout), st.stdout


def _copy_store(ref_store: str, folder: Path, **data):
    """A study like the reference with its generated and preprocessed jets (no runs, no results)."""
    study, path = _write_study(folder, **data)
    shutil.rmtree(study.store, ignore_errors=True)
    shutil.copytree(ref_store, study.store, ignore=shutil.ignore_patterns("_runs", "_results", "results"))
    return study, path


def _checkpoint(study, run: str) -> dict | None:
    from jetscan.jobs.submit import _store_status

    return _store_status(study)["runs"].get(run)


LONG = {"long": {"model": "dense_ae", "samples": ["qcd"], "epochs": 12, "patience": 1000, "batch_size": 16,
                 "optimizer": "adam", "lr": 1e-3}}


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.pythia
@pytest.mark.ray
def test_a_preempted_training_job_requeues_and_reaches_the_uninterrupted_weights(slurm_cluster, reference, tmp_path):
    import torch

    from jetscan.cluster.distributed import SingleProcess
    from jetscan.core.study import Study
    from jetscan.jobs.train import load_trained, train

    ref = reference.wait()
    studies = {}
    for name in ("one", "slurm"):  # virtual ranks 2: 2 srun workers take the steps of 1 process
        s, path = _copy_store(ref.store, tmp_path / name, virtual_ranks=2)
        s = Study.from_dict({**s.model_dump(mode="json"), "train": {"runs": LONG, "threads": 1, "device": "cpu"}})
        path.write_text(s.to_yaml())
        studies[name] = (s, path)
    site = tmp_path / "site.yaml"
    site.write_text(SITE_LOCAL.read_text().replace("train_tasks: 1\n", "train_tasks: 2\n"))
    (job,) = _submit(slurm_cluster, studies["slurm"][1], "--stage", "train", site=site)

    # the run in this process, uninterrupted, while the job starts
    train(studies["one"][0], "long", comm=SingleProcess())

    # preempt once a few epochs are checkpointed: USR2 to the batch shell, as --signal=B:USR2 would
    deadline = time.monotonic() + 300
    while True:
        ck = _checkpoint(studies["slurm"][0], "long")
        if ck and ck["epochs_done"] >= 2:
            break
        assert time.monotonic() < deadline, f"no checkpoint: {_tasks(slurm_cluster, job)}"
        time.sleep(0.2)
    assert not ck["finished"], "the job ended before it could be preempted: make the run longer"
    r = slurm_cluster.run(["scancel", "--signal=USR2", "--batch", f"{job}_0"])
    assert r.returncode == 0, r.stderr
    states = _wait_all(slurm_cluster, [job], tmp_path / "slurm" / "slurm-logs")
    assert states[job][0]["restarts"] == 1, states

    log = next((tmp_path / "slurm" / "slurm-logs").glob("jetscan-tiny-train-*.out")).read_text()
    stopped = re.search(r"long: stopped on request after epoch (\d+)", log)
    assert stopped and "restart 0" in log and "restart 1" in log and "requeueing job" in log, log
    assert 2 <= int(stopped.group(1)) < 12, log  # stopped mid-run, after an epoch's checkpoint (counted from 1)
    m1, _, c1 = load_trained(studies["one"][0], "long")
    m2, _, c2 = load_trained(studies["slurm"][0], "long")
    assert c2["summary"]["world_size"] == 2 and c2["summary"]["epochs_run"] == c1["summary"]["epochs_run"] == 12
    torch.testing.assert_close(m2.state_dict(), m1.state_dict(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(c2["history"]["val_loss"], c1["history"]["val_loss"], rtol=1e-4)
