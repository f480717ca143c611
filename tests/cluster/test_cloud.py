"""Ray clusters on cloud, checked without a cloud account.

- every shipped cluster YAML passes Ray's own schema (``fillout_defaults`` + ``validate_config``),
  and a typo does not;
- the uploaded working directory leaves out .git, .venv and stores (Ray's own packager);
- a local multi-node Ray cluster (a head with no CPUs and two 1-CPU worker nodes, each a real
  ``ray start`` on 127.0.0.1, with the dashboard for the Jobs API) runs generate and
  preprocess of a tiny study submitted as one job through ``JobSubmissionClient`` (then
  train and evaluate from the bucket, in this process), the store on ``s3://`` served by moto;
  one worker node is SIGKILLed mid-generation: the job still finishes, its shards are made
  again on the surviving node, the store verifies and is bit-identical to an undisturbed
  generation, and the results are read back from the bucket.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from jetscan.cluster import cloud
from jetscan.core.errors import ConfigError, RunnerError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(cloud.SHIPPED.glob("*.yaml"))


# ------------------------------------------------------------------ YAMLs against Ray's schema


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_yaml_passes_rays_schema(path):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(path.read_text())
    if config["provider"]["type"] != "fake_multinode":  # its defaults file is missing from the wheel
        config = fillout_defaults(config)
    validate_config(config)  # Ray's own check, raising on any violation
    assert cloud.load_cluster_config(path)["cluster_name"].startswith("jetscan")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    if config["provider"]["type"] in ("aws", "gcp"):
        text = path.read_text()
        assert "-e ~/jetscan" in " ".join(config["setup_commands"])  # jetscan on every node
        assert any(k.startswith("cpu_") for k in types) and any(k.startswith("gpu_") for k in types)
        assert "spot" in text or "preemptible: true" in text
        assert {".git", ".venv"} <= set(config["rsync_exclude"])


def test_a_typo_fails_rays_schema_with_the_key():
    config = yaml.safe_load((cloud.SHIPPED / "aws.yaml").read_text())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["cpu_spot"]["max_worker"] = 3  # not max_workers
    with pytest.raises(ConfigError, match="available_node_types.cpu_spot"):
        cloud.validate_cluster_config(broken, source="aws.yaml")
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "nosuch"
    with pytest.raises(ConfigError, match="head_node_type"):
        cloud.validate_cluster_config(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        cloud.load_cluster_config("nosuch-cluster.yaml")


def test_upload_leaves_out_git_venv_and_stores(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    work = tmp_path / "work"
    for rel in [".git/HEAD", ".venv/lib/x.py", "out/quickstart.zarr/zarr.json", "s.zarr/zarr.json",
                "core/__pycache__/a.pyc", "study.yaml", "core/jets.py"]:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    target = tmp_path / "pkg.zip"
    create_package(str(work), target, include_gitignore=True, excludes=cloud.UPLOAD_EXCLUDES)
    names = set(zipfile.ZipFile(target).namelist())
    assert {"study.yaml", "core/jets.py"} <= names
    assert not [n for n in names if n.startswith((".git", ".venv", "out")) or ".zarr" in n or "__pycache__" in n]


def test_submit_to_nothing_fails_fast_and_clearly():
    t0 = time.monotonic()
    with pytest.raises(RunnerError, match="cannot reach the Ray Jobs API"):
        cloud.submit("127.0.0.1:9", ["jetscan", "run", "x.yaml"])
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------------ a real local cluster


def _spawn_node(ray_cli, env, log, args):
    return subprocess.Popen(
        [ray_cli, "start", "--block", "--num-gpus", "0", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", *args],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _await_node(proc, log):
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in Path(log).read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            pytest.fail(f"ray start failed:\n{Path(log).read_text()[-3000:]}")
        time.sleep(0.5)
    return proc


@pytest.mark.slow
@pytest.mark.pythia
def test_study_submitted_to_a_multinode_cluster_survives_a_killed_node(tmp_path, make_study, ray_env, free_ports):
    pytest.importorskip("s3fs")
    from ray.job_submission import JobStatus

    from jetscan.jobs.generate import generate
    from jetscan.storage import blobs, catalog, integrity
    from jetscan.storage.reader import read_jets
    from jetscan.storage.results import read_results
    from jetscan.storage.s3local import start_s3_server

    moto, endpoint = start_s3_server()
    secret = "jetscan-cluster-secret-5e1a"
    creds = {
        "AWS_ACCESS_KEY_ID": "jetscan-test-key", "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
    }
    temp = tempfile.mkdtemp(prefix="jscl", dir="/tmp")
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = ray_env(
        **creds, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
    )
    nodes = []
    saved = {k: os.environ.get(k) for k in creds}
    samples = {"qcd": {"process": "qcd_dijet", "n_jets": 120}, "top": {"process": "top_hadronic", "n_jets": 40}}
    # what an undisturbed generation makes, made here (no Ray, local disk) while the nodes start
    reference = make_study(tmp_path / "reference.zarr", samples=samples, shard_jets=20, seed=53)
    making_reference = ThreadPoolExecutor(1)
    reference_made = making_reference.submit(generate, reference, use_ray=False)
    try:
        os.environ.update(creds)  # this process reads the bucket with the same environment
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("cluster-test")
        p = free_ports(14)
        head = f"127.0.0.1:{p[0]}"
        agents = lambda i: ["--dashboard-agent-listen-port", str(p[4 + 3 * i]), "--dashboard-agent-grpc-port",
                            str(p[5 + 3 * i]), "--runtime-env-agent-port", str(p[6 + 3 * i])]  # noqa: E731
        nodes.append(_spawn_node(ray_cli, env, f"{temp}/head.log", [
            "--head", "--port", str(p[0]), "--num-cpus", "0", "--temp-dir", temp, "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(p[1]), "--ray-client-server-port", str(p[2]),
            *agents(0)]))
        _await_node(nodes[0], f"{temp}/head.log")
        for i in (1, 2):  # scale out: two 1-CPU worker nodes, one after the other (started together on
            # 2 cores, a node can time out in Ray's own start-up)
            nodes.append(_spawn_node(ray_cli, env, f"{temp}/worker{i}.log", ["--address", head, "--num-cpus", "1", *agents(i)]))
            _await_node(nodes[i], f"{temp}/worker{i}.log")

        store = "s3://cluster-test/tiny.zarr"
        study = make_study(
            store, samples=samples, shard_jets=20, seed=53, preprocess={"representations": ["heimel40"]},
            train={"runs": {"pca": {"model": "pca", "samples": ["qcd"], "representation": "heimel40", "hyper": {"bottleneck": 4}}}, "threads": 1},
        )
        study_file = tmp_path / "study.yaml"
        study_file.write_text(study.to_yaml())

        # generation and preprocessing as one job, spread over the worker nodes. Training runs
        # below, in this process, from the bucket: `jetscan train` inside a Ray job on this
        # machine stops at torch's first LAPACK call with "Intel oneMKL FATAL ERROR: Cannot load
        # libtorch_cpu.so" (not understood yet; the same command outside Ray works)
        s = str(study_file)
        client, job_id = cloud.submit(
            f"http://127.0.0.1:{p[1]}", f"jetscan generate {s} && jetscan preprocess {s}", working_dir=str(REPO)
        )
        # kill worker node 2 (raylet and its actors) once the first shard is committed
        deadline = time.monotonic() + 300
        while not blobs.glob(store, "_catalog/qcd/shard-*.parquet"):
            status = client.get_job_status(job_id)
            assert status not in (JobStatus.FAILED, JobStatus.STOPPED), client.get_job_logs(job_id)[-3000:]
            assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
            time.sleep(0.5)
        os.killpg(nodes[2].pid, signal.SIGKILL)
        nodes[2].wait(timeout=30)
        committed_at_kill = len(blobs.glob(store, "_catalog/qcd/shard-*.parquet"))

        status = cloud.follow(client, job_id, timeout_s=420, poll_s=2)
        logs = client.get_job_logs(job_id)
        assert status == "SUCCEEDED", logs[-4000:]
        assert committed_at_kill < 6, "the node was killed after generation ended: nothing was tested"

        # the store in the bucket: complete, sound, and what an undisturbed generation makes
        assert integrity.verify(store).ok
        assert sum(catalog.read_catalog(store, "qcd").column("n_jets").to_pylist()) == 120
        reference_made.result(timeout=300)
        fields = ["jets/pt", "jets/mass", "jets/tau3", "constituents/pt", "constituents/kind", "truth/label"]
        for sample in ("qcd", "top"):
            a, b = read_jets(store, sample, fields), read_jets(reference.store, sample, fields)
            for f in fields:
                np.testing.assert_array_equal(a[f], b[f], err_msg=f"{sample}/{f}")
        from jetscan.jobs.evaluate import evaluate
        from jetscan.jobs.train import train

        assert len(catalog.read_catalog(store, "top", table="inputs/heimel40")) == 2
        train(study, "pca")
        evaluate(study)
        results = read_results(store)
        assert results.num_rows == 1 and results.column("run").to_pylist() == ["pca"]
        keys = s3fs.S3FileSystem().find("cluster-test/tiny.zarr")
        assert not [k for k in keys if secret.encode() in s3fs.S3FileSystem().cat_file(k)]
    finally:
        making_reference.shutdown(wait=True)
        for proc in reversed(nodes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in nodes:  # a node drains for up to 30 s on SIGTERM: the test is over, so 5 s will do
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        moto.kill()
        moto.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
