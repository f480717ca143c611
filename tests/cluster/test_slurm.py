"""Training workers started by Slurm's srun (jetscan.cluster.slurm), against a real local Slurm.

- pure parts: an srun step's environment -> rank, size, hosts, Horovod / torchrun variables;
  tasks per node; the rendezvous port; an srun step told from a batch script (``sbatch``),
  which has SLURM_PROCID / SLURM_NTASKS too but no step;
- ``pick_backend`` / ``inside_launcher`` under srun, and the clear errors outside it;
- with the ``slurm_cluster`` fixture (tests/cluster/conftest.py: munged, slurmctld, slurmd on
  this machine): a batch script's process is not a worker, srun's tasks are; and
  ``srun -n 2 ... train --backend horovod|ddp`` reaches the 1-worker weights.
"""

from __future__ import annotations

import sys

import pytest

from jetscan.cluster import slurm
from jetscan.cluster.distributed import inside_launcher, pick_backend, world_from_env
from jetscan.core.errors import RunnerError

# the environment of task 1 of `srun -n 2` and of an `sbatch -n 2` script, as Slurm 22.05 sets them
# (trimmed to the variables that matter here)
SRUN_TASK = {
    "SLURMD_NODENAME": "vm", "SLURM_JOB_ID": "17", "SLURM_JOBID": "17", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
    "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_NTASKS": "2", "SLURM_NPROCS": "2",
    "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NODELIST": "vm",
    "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODELIST": "vm", "SLURM_TASKS_PER_NODE": "2",
    "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1", "SLURM_SRUN_COMM_HOST": "127.0.0.1",
}
BATCH_SCRIPT = {
    "SLURMD_NODENAME": "vm", "SLURM_JOB_ID": "18", "SLURM_JOBID": "18", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0", "SLURM_NTASKS": "2", "SLURM_NPROCS": "2", "SLURM_NODELIST": "vm",
    "SLURM_TASKS_PER_NODE": "2", "SLURM_GTIDS": "0",
}


def task(**kw):
    return {**SRUN_TASK, **{k: str(v) for k, v in kw.items()}}


# ----------------------------------------------------------------- srun step or batch script
def test_srun_step_or_batch_script():
    assert slurm.is_srun_step(SRUN_TASK)
    assert not slurm.is_srun_step(BATCH_SCRIPT)
    assert not slurm.is_srun_step({})
    # Slurm's special steps (slurm.h): batch 0xfffffffb, interactive 0xfffffffa, extern 0xfffffffc
    for special in (0xFFFFFFFB, 0xFFFFFFFA, 0xFFFFFFFC):
        assert not slurm.is_srun_step(task(SLURM_STEP_ID=special, SLURM_STEPID=special))
    assert not slurm.is_srun_step(task(SLURM_STEP_ID="batch", SLURM_STEPID="batch"))
    only_old_name = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_ID"}
    assert slurm.is_srun_step(only_old_name)

    assert inside_launcher(SRUN_TASK)
    assert not inside_launcher(BATCH_SCRIPT)
    assert not inside_launcher(task(SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NTASKS=1, SLURM_STEP_NUM_TASKS=1, SLURM_STEP_TASKS_PER_NODE=1))
    # horovodrun / torchrun inside a Slurm task (or a batch script) are launchers as before
    assert inside_launcher({**BATCH_SCRIPT, "HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"})
    assert inside_launcher({**BATCH_SCRIPT, "RANK": "0", "WORLD_SIZE": "2"})
    assert not inside_launcher({})


def test_step_from_the_environment():
    s = slurm.srun_step(SRUN_TASK)
    assert (s.job_id, s.step_id, s.rank, s.size, s.local_rank, s.tasks_per_node) == (17, 0, 1, 2, 1, (2,))
    assert world_from_env(SRUN_TASK) == (1, 2)
    assert slurm.srun_step(BATCH_SCRIPT) is None
    # a step's own counts win over the job's (an `srun -n 2` inside an `sbatch -n 4` job)
    s = slurm.srun_step(task(SLURM_NTASKS=4, SLURM_TASKS_PER_NODE=4))
    assert s.size == 2 and s.tasks_per_node == (2,)
    with pytest.raises(RunnerError, match="need 0 <= rank < size"):
        slurm.srun_step(task(SLURM_PROCID=2))
    with pytest.raises(RunnerError, match="do not add up"):
        slurm.srun_step(task(SLURM_STEP_TASKS_PER_NODE="3"))


def test_tasks_per_node():
    assert slurm.expand_tasks_per_node("2") == (2,)
    assert slurm.expand_tasks_per_node("2(x3),1") == (2, 2, 2, 1)
    assert slurm.expand_tasks_per_node("4(x2)") == (4, 4)
    with pytest.raises(RunnerError, match="tasks per node"):
        slurm.expand_tasks_per_node("2x3")


def test_rendezvous_port():
    p = slurm.rendezvous_port(SRUN_TASK)
    assert p == slurm.PORT_BASE + (17 * 32 + 0) % slurm.PORT_SPAN
    assert slurm.rendezvous_port(dict(SRUN_TASK)) == p  # every rank computes the same port
    others = {slurm.rendezvous_port(task(SLURM_STEP_ID=s, SLURM_STEPID=s)) for s in range(32)}
    others |= {slurm.rendezvous_port(task(SLURM_JOB_ID=j, SLURM_JOBID=j)) for j in range(18, 300)}
    assert len(others) == 32 + 282  # distinct for the steps of a job and for nearby jobs
    for env in (task(SLURM_JOB_ID=10**9 + 7, SLURM_STEP_ID=31), task(SLURM_JOB_ID=0)):
        assert slurm.PORT_BASE <= slurm.rendezvous_port(env) < slurm.PORT_BASE + slurm.PORT_SPAN < 32768
    assert slurm.rendezvous_port(task(JETSCAN_RENDEZVOUS_PORT=29500)) == 29500
    with pytest.raises(RunnerError, match="JETSCAN_RENDEZVOUS_PORT='http': must be a TCP port"):
        slurm.rendezvous_port(task(JETSCAN_RENDEZVOUS_PORT="http"))


def test_horovod_and_torchrun_variables_for_a_two_node_step():
    hosts = ["node01", "node02"]
    # `srun -n 3` over 2 nodes: 2 tasks on node01, 1 on node02; rank 2 is node02's only task
    env = task(SLURM_PROCID=2, SLURM_LOCALID=0, SLURM_NODEID=1, SLURMD_NODENAME="node02", SLURM_NTASKS=3,
               SLURM_STEP_NUM_TASKS=3, SLURM_STEP_NODELIST="node[01-02]", SLURM_STEP_TASKS_PER_NODE="2,1")
    s = slurm.srun_step(env)
    h = slurm.horovod_env(s, hosts, "node01", 20544)
    assert h == {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": "node01", "HOROVOD_GLOO_RENDEZVOUS_PORT": "20544",
        "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo", "HOROVOD_HOSTNAME": "node02",
        "HOROVOD_RANK": "2", "HOROVOD_SIZE": "3", "HOROVOD_LOCAL_RANK": "0", "HOROVOD_LOCAL_SIZE": "1",
        "HOROVOD_CROSS_RANK": "1", "HOROVOD_CROSS_SIZE": "2",
    }
    d = slurm.ddp_env(s, hosts, env)
    assert d == {"MASTER_ADDR": "node01", "MASTER_PORT": str(slurm.rendezvous_port(env)), "RANK": "2",
                 "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1"}
    kept = slurm.ddp_env(s, hosts, {**env, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert (kept["MASTER_ADDR"], kept["MASTER_PORT"]) == ("10.0.0.1", "1234")
    # node01's second task: cross rank 0 of 1 (only node01 has a local rank 1)
    s1 = slurm.srun_step({**env, "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURMD_NODENAME": "node01"})
    h1 = slurm.horovod_env(s1, hosts, "node01", 20544)
    assert (h1["HOROVOD_LOCAL_SIZE"], h1["HOROVOD_CROSS_RANK"], h1["HOROVOD_CROSS_SIZE"]) == ("2", "0", "1")


def test_horovod_plan_is_horovodruns():
    pytest.importorskip("horovod.runner")
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    for hosts, tasks in ((["a", "b"], (2, 2)), (["a", "b", "c"], (3, 1, 2)), (["a"], (4,))):
        ours = slurm.horovod_plan(hosts, tasks)
        theirs = get_host_assignments(parse_hosts(",".join(f"{h}:{n}" for h, n in zip(hosts, tasks))), sum(tasks))
        assert ours == theirs


def test_plain_hostlists_need_no_scontrol():
    assert slurm.expand_hostlist("vm") == ["vm"]
    assert slurm.expand_hostlist("a1,b2", scontrol="/nonexistent") == ["a1", "b2"]
    with pytest.raises(RunnerError, match="cannot expand the Slurm hostlist"):
        slurm.expand_hostlist("node[1-2]", scontrol="/nonexistent/scontrol")


# ------------------------------------------------------------------------- backend choice
def test_auto_backend_under_srun(monkeypatch):
    from jetscan.cluster import distributed

    monkeypatch.setattr(distributed, "_horovod_available", lambda: True)
    assert pick_backend("auto", SRUN_TASK) == "horovod"
    monkeypatch.setattr(distributed, "_horovod_available", lambda: False)
    assert pick_backend("auto", SRUN_TASK) == "ddp"
    assert pick_backend("ddp", SRUN_TASK) == "ddp" and pick_backend("horovod", SRUN_TASK) == "horovod"
    # a launcher inside the step wins
    assert pick_backend("auto", {**SRUN_TASK, "RANK": "0", "WORLD_SIZE": "4"}) == "ddp"
    # a one-task step is one process
    one = task(SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NTASKS=1, SLURM_STEP_NUM_TASKS=1, SLURM_STEP_TASKS_PER_NODE=1)
    assert pick_backend("auto", one) == "single"
    # a batch script is not a worker: a clear error pointing at srun
    with pytest.raises(RunnerError, match="not in an srun step .*start the workers with `srun"):
        pick_backend("auto", BATCH_SCRIPT)
    # MPI alone (mpirun without horovodrun): the clear error as before
    for mpi in ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, {"PMI_RANK": "1", "PMI_SIZE": "2"}):
        with pytest.raises(RunnerError, match="set by an MPI launcher.*neither horovodrun's HOROVOD_RANK nor torchrun's"):
            pick_backend("auto", mpi)


def test_setup_outside_a_step_is_an_error():
    with pytest.raises(RunnerError, match="not in a Slurm srun step"):
        slurm.setup("ddp", dict(BATCH_SCRIPT))


def test_setup_ddp_sets_torchrun_variables():
    env = dict(SRUN_TASK)
    step = slurm.setup("ddp", env)
    assert step.rank == 1
    assert {k: env[k] for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "MASTER_ADDR": "vm", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
    }
    assert env["MASTER_PORT"] == str(slurm.rendezvous_port(SRUN_TASK))
    assert inside_launcher(env) and pick_backend("auto", env) == "ddp"


# ------------------------------------------------------------------------ real Slurm
PROBE = (
    "from jetscan.cluster.distributed import inside_launcher, world_from_env; import os; "
    "print('probe', os.environ.get('SLURM_STEP_ID', '-'), inside_launcher(), *world_from_env())"
)


@pytest.mark.slurm
def test_hostlists_expand_with_scontrol(slurm_cluster):
    import os

    scontrol = next(p for p in (f"{d}/scontrol" for d in slurm_cluster.env["PATH"].split(":")) if os.path.exists(p))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = slurm_cluster.env["SLURM_CONF"]
    try:
        assert slurm.expand_hostlist("node[01-03,7],gpu[1-2]", scontrol=scontrol) == [
            "node01", "node02", "node03", "node7", "gpu1", "gpu2",
        ]
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = old


@pytest.mark.slurm
def test_a_batch_script_is_not_a_worker_its_srun_tasks_are(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(f'#!/bin/bash\n"{sys.executable}" -c "{PROBE}"\nsrun -n 2 "{sys.executable}" -c "{PROBE}"\n')
    r = slurm_cluster.run(["sbatch", "-n", "2", "--parsable", "-o", str(out), "-D", str(tmp_path), str(script)])
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{slurm_cluster.logs()}"
    job = r.stdout.strip().split(";")[0]
    state = slurm_cluster.wait_for_job(job, timeout=120)  # sbatch --wait polls every few seconds
    text = out.read_text() if out.exists() else ""
    assert state == "COMPLETED", f"job {job}: {state}\n{text}\n{slurm_cluster.logs()}"
    probes = sorted(line for line in text.splitlines() if line.startswith("probe"))
    # the batch script: SLURM_PROCID 0 of SLURM_NTASKS 2, but no step and not a worker
    assert probes == ["probe - False 0 2", "probe 0 True 0 2", "probe 0 True 1 2"], text


def _srun_launch(cluster, backend: str, cwd):
    def launch(yaml_path: str, runs: list[str]) -> None:
        cmd = ["srun", "-n", "2", "--kill-on-bad-exit=1", "--time=10", "-D", str(cwd),
               sys.executable, "-m", "jetscan.jobs.cli", "train", yaml_path, "--backend", backend]
        for run in runs:
            cmd += ["--model", run]
        r = cluster.run(cmd, timeout=300)
        assert r.returncode == 0, f"srun exited with {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}\n{cluster.logs()}"

    return launch


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.pythia
@pytest.mark.horovod
def test_srun_two_horovod_workers_reach_the_one_worker_weights(slurm_cluster, study, tmp_path, two_workers_equal_one):
    pytest.importorskip("horovod.torch")
    two_workers_equal_one(study, tmp_path, "dense", _srun_launch(slurm_cluster, "horovod", tmp_path))


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.pythia
def test_srun_two_ddp_workers_reach_the_one_worker_weights(slurm_cluster, study, tmp_path, two_workers_equal_one):
    two_workers_equal_one(study, tmp_path, "dense", _srun_launch(slurm_cluster, "ddp", tmp_path))
