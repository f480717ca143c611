"""The Slurm site file: everything about *a cluster* that a batch script needs.

A study says what to compute; the site file says where: partition, account, QOS, node
constraint, time limit per stage, the shell lines that set up the environment (``module
load ...``, ``source venv/bin/activate``), the scratch directory for logs, GPUs per node and
CPUs per task. The same study runs on another cluster by changing only this file::

    partition: gpu
    account: m1234
    qos: regular
    constraint: gpu
    scratch: /scratch/$USER/jetscan        # logs go to <scratch>/logs
    setup: ["module load python/3.11", "source $HOME/jetscan/.venv/bin/activate"]
    gpus_per_node: 4
    cpus_per_task: 8                       # per training worker; cpus_per_node: per Ray node
    time: {generate: "2:00:00", preprocess: "30:00", train: "1-00:00:00", evaluate: "30:00"}
    nodes: {generate: 4, preprocess: 2}
    train_tasks: 4                         # data-parallel workers per training run (one per GPU)
    signal: {name: USR2, seconds_before_end: 300}   # some sites only send TERM

Validated with pydantic (every problem named with its key). Time limits take Slurm's forms
(``sbatch(1)`` ``--time``): ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
``D-HH:MM:SS``. :func:`check_partition` asks the running cluster (``scontrol show
partition``) whether the partition exists before anything is submitted.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from jetscan.core.errors import ConfigError, RunnerError
from jetscan.core.study import _Frozen, config_error_from

__all__ = [
    "STAGES", "SignalConfig", "Site", "load_site", "time_limit_minutes", "check_partition", "fill", "ray_port",
    "sbatch", "job_states", "RAY_PORT_MIN", "RAY_PORT_SLOTS",
]

#: a Ray-in-allocation job takes 10 ports from RAY_PORT_MIN + (job id % RAY_PORT_SLOTS) * 10: below
#: Linux's ephemeral range (32768-60999) and above the srun rendezvous ports (20000-29999)
RAY_PORT_MIN = 30000
RAY_PORT_SLOTS = 270

#: the stages a site file can give a time limit (and node count) for
STAGES = ("generate", "preprocess", "train", "search", "scan", "evaluate")

_TIME_FORMS = (
    (re.compile(r"(\d+)"), ("m",)),
    (re.compile(r"(\d+):(\d{1,2})"), ("m", "s")),
    (re.compile(r"(\d+):(\d{1,2}):(\d{1,2})"), ("h", "m", "s")),
    (re.compile(r"(\d+)-(\d+)"), ("d", "h")),
    (re.compile(r"(\d+)-(\d+):(\d{1,2})"), ("d", "h", "m")),
    (re.compile(r"(\d+)-(\d+):(\d{1,2}):(\d{1,2})"), ("d", "h", "m", "s")),
)


def time_limit_minutes(value: str) -> float:
    """Minutes in a Slurm time limit (``"90"``, ``"1:30:00"``, ``"2-12"``, ...); a ValueError
    naming the accepted forms otherwise."""
    text = str(value).strip()
    for pattern, units in _TIME_FORMS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        parts = dict(zip(units, (int(g) for g in m.groups())))
        if parts.get("s", 0) >= 60 or ("h" in parts and parts.get("m", 0) >= 60):
            break
        minutes = parts.get("d", 0) * 1440 + parts.get("h", 0) * 60 + parts.get("m", 0) + parts.get("s", 0) / 60
        if minutes <= 0:
            raise ValueError(f"time limit {value!r} is zero")
        return minutes
    raise ValueError(
        f"{value!r} is not a Slurm time limit: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 30, 1:30:00, 2-00:00:00)"
    )


class SignalConfig(_Frozen):
    """The warning Slurm sends the batch shell before the time limit (``--signal=B:NAME@SECONDS``)."""

    name: Literal["USR1", "USR2", "TERM", "INT"] = "USR2"
    seconds_before_end: int = Field(120, ge=10, le=65535)


class Site(_Frozen):
    """One cluster's settings for the batch scripts (see the module docstring)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    scratch: str | None = None  #: logs go to <scratch>/logs (default: <store's folder>/slurm-logs)
    setup: list[str] = Field(default_factory=list)  #: shell lines run first in every script
    python: str | None = None  #: the interpreter on the compute nodes (default: the one submitting)
    gpus_per_node: int = Field(0, ge=0, le=64)
    cpus_per_task: int = Field(1, ge=1, le=1024)  #: per training worker (srun task) and for evaluate
    cpus_per_node: int | None = Field(None, ge=1, le=4096)  #: per Ray node (generate, preprocess); default cpus_per_task
    time: dict[str, str] = Field(default_factory=dict)  #: per stage; missing stages use default_time
    default_time: str = "1:00:00"
    nodes: dict[str, int] = Field(default_factory=dict)  #: nodes per Ray stage (generate, preprocess)
    train_tasks: int = Field(1, ge=1, le=4096)  #: data-parallel workers (srun tasks) per training run
    train_backend: Literal["horovod", "ddp"] = "ddp"
    array_parallel: int | None = Field(None, ge=1)  #: the %k of --array=0-N%k (default: no limit)
    search_workers: int = Field(2, ge=1, le=10_000)  #: array tasks of `--stage search` (each a search-worker)
    signal: SignalConfig = Field(default_factory=SignalConfig)
    extra_sbatch: list[str] = Field(default_factory=list)  #: more `#SBATCH` options, e.g. "--mail-type=FAIL"

    @field_validator("time")
    @classmethod
    def _times(cls, value: dict[str, str]) -> dict[str, str]:
        for stage, limit in value.items():
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
            try:
                time_limit_minutes(limit)
            except ValueError as exc:
                raise ValueError(f"{stage}: {exc}") from None
        return {k: str(v) for k, v in value.items()}

    @field_validator("default_time")
    @classmethod
    def _default_time(cls, value: str) -> str:
        time_limit_minutes(value)
        return str(value)

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, value: dict[str, int]) -> dict[str, int]:
        for stage, n in value.items():
            if stage not in ("generate", "preprocess"):
                raise ValueError(f"{stage!r}: nodes are set for the Ray stages generate and preprocess only")
            if n < 1:
                raise ValueError(f"{stage}: at least 1 node (got {n})")
        return value

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _word(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,&|*!\[\]-]+", value):
            raise ValueError("must be one Slurm name (letters, digits, _ . - and constraint operators), no spaces")
        return value

    @field_validator("extra_sbatch")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        for line in value:
            if not line.startswith("--") or "\n" in line:
                raise ValueError(f"{line!r}: each entry is one sbatch option starting with -- (e.g. --mail-type=FAIL)")
        return value

    @model_validator(mode="after")
    def _gpus(self) -> Site:
        if self.gpus_per_node and self.train_tasks > 1 and self.train_tasks % self.gpus_per_node and self.train_tasks > self.gpus_per_node:
            raise ValueError(
                f"train_tasks {self.train_tasks} must fill whole nodes of {self.gpus_per_node} GPUs "
                "(one task per GPU): make it a multiple of gpus_per_node"
            )
        return self

    def time_for(self, stage: str) -> str:
        return self.time.get(stage, self.default_time)

    def nodes_for(self, stage: str) -> int:
        return self.nodes.get(stage, 1)

    def directives(self) -> list[str]:
        """The site's own ``#SBATCH`` options (partition, account, qos, constraint, extras)."""
        out = []
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            if value:
                out.append(f"--{key}={value}")
        return out + list(self.extra_sbatch)


def load_site(path: str | Path | None) -> Site:
    """The site file at ``path`` (None: the defaults, for a cluster with a default partition)."""
    if path is None:
        return Site()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"site file {str(path)!r} does not exist: pass --site with a Slurm site YAML (see slurm/site.example.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"site file {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"site file {path}: must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        err = config_error_from(exc, Site, source=str(path))
        raise ConfigError(str(err).replace(": invalid study", ": invalid Slurm site file", 1)) from None


def check_partition(site: Site, env: dict | None = None, scontrol: str = "scontrol") -> None:
    """A ConfigError when the site's partition does not exist on the cluster (asked with
    ``scontrol show partition``), listing the partitions that do."""
    if site.partition is None:
        return
    try:
        r = subprocess.run([scontrol, "-o", "show", "partition"], capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(f"cannot ask Slurm for its partitions ({scontrol}: {exc}); is this a Slurm login node?") from None
    if r.returncode != 0:
        raise RunnerError(f"`scontrol show partition` failed ({r.returncode}): {r.stderr.strip()}")
    names = re.findall(r"PartitionName=(\S+)", r.stdout)
    if site.partition not in names:
        raise ConfigError(
            f"site file: partition {site.partition!r} does not exist on this cluster; partitions: "
            f"{', '.join(names) or 'none'} (set `partition:` in the site file)"
        )


def ray_port(job_id: int) -> int:
    """The Ray head's port of job ``job_id`` in ``slurm/ray.sbatch`` (its other ports follow it)."""
    return RAY_PORT_MIN + (int(job_id) % RAY_PORT_SLOTS) * 10


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(template: str, values: dict[str, str]) -> str:
    """The template with every ``{{name}}`` replaced by ``values[name]``; a missing value is an
    error (bash's own ``${...}`` are left alone)."""
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if missing:
        raise ConfigError(f"batch script template: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def sbatch(cmd: list[str], env: dict | None = None) -> str:
    """Run ``sbatch --parsable ...`` and return the job id; a RunnerError with sbatch's message."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(f"cannot run {shlex.join(cmd)}: {exc}; is this a Slurm login node?") from None
    if r.returncode != 0:
        raise RunnerError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip().split(";")[0]


def _fields(line: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in line.split() if "=" in f)


def job_states(job_id: str, env: dict | None = None) -> list[dict]:
    """What Slurm says of a job (one entry per array task): ``job_id``, ``state``, ``reason``,
    ``exit_code``, ``restarts``. ``scontrol show job`` while Slurm remembers the job; then
    ``sacct`` where accounting is kept; else one entry with state ``UNKNOWN``."""
    try:
        r = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(f"cannot ask Slurm about job {job_id} (scontrol: {exc})") from None
    out = []
    if r.returncode == 0:
        for line in r.stdout.splitlines():
            f = _fields(line)
            if not f:
                continue
            task = f.get("ArrayTaskId")
            jid = f"{f.get('ArrayJobId')}_{task}" if task and task != "(null)" else f.get("JobId", str(job_id))
            out.append({
                "job_id": jid, "state": f.get("JobState", "UNKNOWN"), "reason": f.get("Reason", "None"),
                "exit_code": f.get("ExitCode", ""), "restarts": int(f.get("Restarts", "0") or 0),
            })
        if out:
            return out
    try:
        a = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,Reason,ExitCode"],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        a = None
    if a is not None and a.returncode == 0 and a.stdout.strip():
        for line in a.stdout.strip().splitlines():
            jid, state, reason, code = (line.split("|") + ["", "", "", ""])[:4]
            out.append({"job_id": jid, "state": state, "reason": reason or "None", "exit_code": code, "restarts": 0})
        return out
    return [{"job_id": str(job_id), "state": "UNKNOWN", "reason": "no longer known to Slurm (no accounting)", "exit_code": "", "restarts": 0}]
