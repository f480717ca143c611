"""``jetscan submit`` and ``jetscan status``: a study as Slurm batch jobs.

The whole story of the stage:

1. :func:`plan_jobs` turns the study and a site file (:mod:`jetscan.cluster.slurm_site`) into
   batch scripts, filled from the templates in ``slurm/``: ``ray.sbatch`` for generate and
   preprocess (a Ray cluster inside one allocation), ``train.sbatch`` (an array with one
   training run per index, each data parallel over its srun tasks), ``single.sbatch`` for
   evaluate; ``--stage all`` chains them with ``--dependency=afterok``. ``--stage search
   --search NAME`` is ``search.sbatch`` (an array of ``jetscan search-worker`` s on the
   search, which the submitter creates once in its Optuna storage) and then the search driver
   (``jetscan search``, ``afterany``: it finishes what dead workers left and writes the report). Every script asks for a warning
   signal before its time limit (``--signal=B:USR2@300``), traps it, lets its stage stop at a
   safe point and requeues itself (``--requeue``, logs appended with ``--open-mode=append``):
   generation and preprocessing resume from the catalog, training from its last checkpoint.
2. :func:`submit` writes the scripts next to the logs and runs ``sbatch --parsable`` for each,
   passing the job ids of what it depends on; the ids are kept in ``<logs>/<study>.jobs.json``
   for ``jetscan status``. ``dry_run`` returns the scripts and sbatch lines without submitting.
3. :func:`status` reads both sides: what Slurm says of the recorded jobs (``scontrol show
   job``; ``sacct`` once Slurm has forgotten them, where accounting exists) and what the store
   says (shards committed per sample, epochs checkpointed per run).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jetscan.cluster import slurm_site
from jetscan.cluster.slurm_site import Site
from jetscan.core.errors import ConfigError
from jetscan.core.study import Study

__all__ = ["STAGES", "BatchJob", "plan_jobs", "submit", "status", "log_dir", "TEMPLATES"]

#: what ``--stage`` accepts
STAGES = ("generate", "preprocess", "train", "search", "scan", "evaluate", "all")
#: the templates: ``slurm/`` at the package root
TEMPLATES = Path(__file__).resolve().parent.parent / "slurm"


@dataclass
class BatchJob:
    """One batch script to submit: its stage, text, and the stages it waits for."""

    stage: str
    name: str
    text: str
    after: list[str] = field(default_factory=list)
    after_kind: str = "afterok"  #: afterok, or afterany for a job that follows workers that may fail
    path: Path | None = None
    job_id: str | None = None

    def sbatch_command(self, ids: dict[str, str] | None = None) -> list[str]:
        """``sbatch --parsable [--dependency=afterok:ID[:ID]] SCRIPT``; without ``ids`` the
        dependencies are shown as ``$JOB_<stage>`` (a dry run)."""
        cmd = ["sbatch", "--parsable"]
        if self.after:
            deps = [ids[s] if ids else f"${{JOB_{s}}}" for s in self.after]
            cmd.append(f"--dependency={self.after_kind}:" + ":".join(deps))
        return cmd + [str(self.path)]


def log_dir(study: Study, study_path: str | Path, site: Site) -> Path:
    """Where the scripts and logs go: ``<scratch>/logs``, or ``slurm-logs`` beside a local
    store (beside the study file for a remote one)."""
    if site.scratch:
        return Path(os.path.expandvars(os.path.expanduser(site.scratch))) / "logs"
    if "://" not in study.store:
        return Path(study.store).resolve().parent / "slurm-logs"
    return Path(study_path).resolve().parent / "slurm-logs"


def _python(site: Site) -> str:
    # double quotes: a site's "$HOME/venv/bin/python" expands on the compute node
    return '"' + (site.python or sys.executable).replace('"', '\\"') + '"'


def _common(study: Study, study_path: Path, site: Site, stage: str, logs: Path) -> dict[str, str]:
    return {
        "stage": stage,
        "job_name": f"jetscan-{study.name}-{stage}",
        "time": site.time_for(stage),
        "log_dir": str(logs),
        "signal": site.signal.name,
        "signal_seconds": str(site.signal.seconds_before_end),
        "setup": "\n".join(site.setup),
        "python": _python(site),
        "study": shlex.quote(str(study_path.resolve())),
    }


def _directives(site: Site, extra: list[str] = ()) -> str:
    return "\n".join(f"#SBATCH {d}" for d in [*site.directives(), *extra])


def _ray_job(study: Study, study_path: Path, site: Site, stage: str, logs: Path) -> BatchJob:
    values = _common(study, study_path, site, stage, logs)
    values.update(
        nodes=str(site.nodes_for(stage)),
        cpus_per_task=str(site.cpus_per_node or site.cpus_per_task),
        command=stage,
        port_min=str(slurm_site.RAY_PORT_MIN),
        port_slots=str(slurm_site.RAY_PORT_SLOTS),
        site_directives=_directives(site),
    )
    text = slurm_site.fill(_template("ray.sbatch"), values)
    return BatchJob(stage, values["job_name"], text)


def _train_job(study: Study, study_path: Path, site: Site, runs: list[str], logs: Path, stage: str = "train") -> BatchJob:
    values = _common(study, study_path, site, stage, logs)
    gpus = ["--gpus-per-task=1"] if site.gpus_per_node else []
    values.update(
        last_index=str(len(runs) - 1),
        array_limit=f"%{site.array_parallel}" if site.array_parallel else "",
        tasks=str(site.train_tasks),
        cpus_per_task=str(site.cpus_per_task),
        runs=" ".join(shlex.quote(r) for r in runs),
        backend=site.train_backend,
        site_directives=_directives(site, gpus),
    )
    text = slurm_site.fill(_template("train.sbatch"), values)
    return BatchJob(stage, values["job_name"], text)


def _single_job(study: Study, study_path: Path, site: Site, logs: Path, stage: str, command: str, arguments: str = "") -> BatchJob:
    values = _common(study, study_path, site, stage, logs)
    values.update(cpus_per_task=str(site.cpus_per_task), site_directives=_directives(site), command=command, arguments=arguments)
    return BatchJob(stage, values["job_name"], slurm_site.fill(_template("single.sbatch"), values))


def _search_jobs(study: Study, study_path: Path, site: Site, logs: Path, name: str, storage: str) -> list[BatchJob]:
    values = _common(study, study_path, site, "search", logs)
    values.update(
        last_index=str(site.search_workers - 1),
        array_limit=f"%{site.array_parallel}" if site.array_parallel else "",
        cpus_per_task=str(site.cpus_per_task),
        search=shlex.quote(name),
        storage=shlex.quote(storage),
        site_directives=_directives(site),
    )
    workers = BatchJob("search", values["job_name"], slurm_site.fill(_template("search.sbatch"), values))
    driver = _single_job(study, study_path, site, logs, "search-driver", "search",
                         f"{shlex.quote(name)} --storage {shlex.quote(storage)}")
    driver.after, driver.after_kind = ["search"], "afterany"
    return [workers, driver]


def search_storage(study: Study, name: str | None, storage: str | None) -> tuple[str, str]:
    """The search's name (checked against the study's ``search:`` section) and its storage URL."""
    from jetscan.jobs.search import default_storage, search_config

    if not name:
        raise ConfigError(
            f"--stage search: name the search with --search NAME (study {study.name!r} has: "
            f"{', '.join(study.search) or 'none'})"
        )
    search_config(study, name)
    return name, storage or default_storage(study, name)


def _template(name: str) -> str:
    path = TEMPLATES / name
    if not path.is_file():
        raise ConfigError(f"the batch script template {path} is missing: reinstall jetscan (it ships slurm/*.sbatch)")
    return path.read_text()


def plan_jobs(
    study: Study, study_path: str | Path, site: Site, stage: str = "all", *, search: str | None = None, storage: str | None = None
) -> list[BatchJob]:
    """The batch jobs for ``stage`` (``all``: generate -> preprocess -> train -> evaluate,
    chained with afterok; ``search``: the worker array of search ``search`` and its driver),
    in submission order; each job's ``after`` names its dependencies."""
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: stages are {', '.join(STAGES)}")
    if stage == "scan":
        raise ConfigError(
            "--stage scan: a scan starts its own Slurm worker jobs (dask-jobqueue): run "
            "`jetscan scan STUDY.yaml NAME --cluster slurm` on the login node (`--dry-run` shows the worker script)"
        )
    study_path = Path(study_path)
    logs = log_dir(study, study_path, site)
    if stage == "search":
        jobs = _search_jobs(study, study_path, site, logs, *search_storage(study, search, storage))
        for job in jobs:
            job.path = logs / f"{study.name}-{job.stage}.sbatch"
        return jobs
    runs = list(study.train.runs)
    if stage == "train" and not runs:
        raise ConfigError(f"--stage train: study {study.name!r} has no train.runs")
    jobs: list[BatchJob] = []
    if stage in ("generate", "all"):
        jobs.append(_ray_job(study, study_path, site, "generate", logs))
    if stage in ("preprocess", "all"):
        jobs.append(_ray_job(study, study_path, site, "preprocess", logs))
    if stage in ("train", "all") and runs:
        jobs.append(_train_job(study, study_path, site, runs, logs))
    if stage in ("evaluate", "all") and (runs or stage == "evaluate"):
        jobs.append(_single_job(study, study_path, site, logs, "evaluate", "evaluate"))
    if stage == "all":
        for before, job in zip(jobs, jobs[1:]):
            job.after = [before.stage]
    for job in jobs:
        job.path = logs / f"{study.name}-{job.stage}.sbatch"
    return jobs


def _jobs_file(study: Study, logs: Path) -> Path:
    return logs / f"{study.name}.jobs.json"


def submit(
    study: Study, study_path: str | Path, site: Site, stage: str = "all", *, dry_run: bool = False, env: dict | None = None,
    search: str | None = None, storage: str | None = None,
) -> list[BatchJob]:
    """Write and submit the batch jobs of ``stage`` (``dry_run``: only plan them); returns the
    jobs with their ``job_id`` (None in a dry run). ``--stage search`` creates the search in
    its Optuna storage first (once: concurrent creation corrupts storages, optuna #4621)."""
    jobs = plan_jobs(study, study_path, site, stage, search=search, storage=storage)
    if dry_run:
        return jobs
    slurm_site.check_partition(site, env=env)
    if stage == "search":
        from jetscan.jobs.search import create_search, open_storage, search_config

        name, url = search_storage(study, search, storage)
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
        create_search(study, name, open_storage(url, search_config(study, name)))
    logs = jobs[0].path.parent
    logs.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    for job in jobs:
        job.path.write_text(job.text)
        job.job_id = slurm_site.sbatch(job.sbatch_command(ids), env=env)
        ids[job.stage] = job.job_id
    record = _jobs_file(study, logs)
    history = json.loads(record.read_text()) if record.exists() else []
    history += [{"stage": j.stage, "job_id": j.job_id, "script": str(j.path)} for j in jobs]
    record.write_text(json.dumps(history, indent=1))
    return jobs


# ----------------------------------------------------------------------------- status
def _store_status(study: Study) -> dict:
    """Shards committed per sample and epochs checkpointed per run, from the store."""
    from jetscan.storage import blobs, catalog, layout

    samples, runs = {}, {}
    for name, cfg in study.samples.items():
        planned = len(layout.shard_ranges(cfg.n_jets, study.generation.shard_jets))
        try:
            done = len(catalog.committed_shards(study.store, name))
        except Exception:  # noqa: BLE001 - no store or catalog yet: nothing committed
            done = 0
        samples[name] = {"shards_committed": done, "shards_planned": planned}
    for run, cfg in study.train.runs.items():
        path = f"_runs/{run}/checkpoint.pt"
        entry = {"epochs_done": 0, "epochs": cfg.epochs, "finished": False}
        try:
            if blobs.exists(study.store, path):
                import torch

                ckpt = torch.load(io.BytesIO(blobs.read_blob(study.store, path)), map_location="cpu", weights_only=False)
                entry["epochs_done"] = len(ckpt.get("history", {}).get("epoch", [])) or (ckpt.get("epoch", -1) + 1)
                entry["finished"] = bool(ckpt.get("finished"))
        except Exception as exc:  # noqa: BLE001 - a status report shows what it cannot read
            entry["error"] = str(exc)
        runs[run] = entry
    return {"samples": samples, "runs": runs}


def status(study: Study, study_path: str | Path, site: Site, *, env: dict | None = None) -> dict:
    """What Slurm says of the study's submitted jobs (``jobs``: one entry per job or array
    task, with state, reason, exit code and restarts) and what its store says (``store``)."""
    logs = log_dir(study, Path(study_path), site)
    record = _jobs_file(study, logs)
    submitted = json.loads(record.read_text()) if record.exists() else []
    jobs = []
    for entry in submitted:
        for task in slurm_site.job_states(entry["job_id"], env=env):
            jobs.append({"stage": entry["stage"], **task})
    return {"jobs": jobs, "store": _store_status(study), "jobs_file": str(record)}
