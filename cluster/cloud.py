"""Ray clusters on cloud: the launcher YAMLs jetscan ships, and jobs submitted to a cluster.

- :func:`load_cluster_config` reads a Ray cluster launcher YAML and checks it against Ray's own
  schema (``fillout_defaults`` merges the provider's defaults, ``validate_config`` checks the
  result against ``ray-schema.json``) before anything starts: a typo is one clear error.
- :func:`ray_cluster` runs ``ray up -y`` / ``ray down -y`` / ``ray status`` / ``ray get-head-ip``
  on such a YAML (the fake multi-node provider gets ``RAY_FAKE_CLUSTER=1``).
- :func:`submit` sends a command to a cluster through the Ray Jobs API
  (``JobSubmissionClient``): the working directory is uploaded without ``.git``, ``.venv``,
  stores and outputs (runtime_env ``excludes``; ray #45602), a few non-secret variables
  (``AWS_ENDPOINT_URL``, regions) travel with the job, credentials stay on the nodes (instance
  roles, service accounts). :func:`follow` polls status and prints the log tail; :func:`stop`.

Shipped YAMLs (``cluster/cloud/``): ``aws.yaml``, ``gcp.yaml`` (head, spot/preemptible CPU
workers for generation and preprocessing, GPU workers for training, jetscan installed on every
node by the setup commands) and ``local-fake.yaml`` (Ray's fake multi-node provider).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from jetscan.core.errors import ConfigError, RunnerError

__all__ = [
    "SHIPPED",
    "UPLOAD_EXCLUDES",
    "FORWARDED_ENV",
    "load_cluster_config",
    "ray_cluster",
    "dashboard_address",
    "submit",
    "follow",
    "stop",
]

SHIPPED = Path(__file__).parent / "cloud"

# gitignore-style patterns, relative to the uploaded working directory (ray #45602: a bare
# ".venv" must be listed, not only "/.venv/", or its thousands of files are zipped and sent)
UPLOAD_EXCLUDES = [
    ".git", ".venv", "venv", "**/*.zarr", "*.zarr", "out", "**/__pycache__", "*.pyc",
    "**/*-report", ".pytest_cache", "**/.ipynb_checkpoints",
]

# variables a job needs to reach the store that are not secrets (credentials stay on the nodes)
FORWARDED_ENV = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "RAY_DEDUP_LOGS"]


def load_cluster_config(path: str | Path) -> dict:
    """The cluster YAML at ``path``, checked against Ray's schema (a ConfigError otherwise)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in SHIPPED.glob("*.yaml")))
        raise ConfigError(f"cluster file {str(path)!r} does not exist (jetscan ships {shipped} in {SHIPPED})")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cluster file {path}: not valid YAML ({exc})") from None
    validate_cluster_config(config, source=str(path))
    return config


def validate_cluster_config(config: dict, *, source: str = "cluster config") -> dict:
    """Ray's own checks: defaults merged in (``fillout_defaults``), then ``validate_config``
    (the JSON schema ``ray-schema.json`` and the node-type cross-checks). Returns the filled
    config. The fake multi-node provider's defaults file is missing from Ray's wheel, so a
    fake-cluster YAML must be complete and is validated as it is."""
    import jsonschema
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    if not isinstance(config, dict) or "provider" not in config or "type" not in (config.get("provider") or {}):
        raise ConfigError(f"{source}: a Ray cluster config needs provider.type (aws, gcp, fake_multinode, ...)")
    try:
        filled = config if config["provider"]["type"] == "fake_multinode" else fillout_defaults(config)
        validate_config(filled)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ConfigError(f"{source}: {where}: {exc.message} (Ray's cluster schema)") from None
    except (ValueError, RuntimeError, NotImplementedError, KeyError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return filled


def _ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise RunnerError("the 'ray' command is not installed here: pip install 'ray[default]'")
    return found


def ray_cluster(action: str, path: str | Path, *, capture: bool = False, extra: list[str] | None = None) -> str:
    """``ray up -y`` / ``ray down -y`` / ``ray status`` / ``ray get-head-ip`` on a checked YAML."""
    config = load_cluster_config(path)
    argv = {
        "up": ["up", "-y", str(path)],
        "down": ["down", "-y", str(path)],
        "head-ip": ["get-head-ip", str(path)],
        "status": ["exec", str(path), "~/jetscan-venv/bin/ray status 2>/dev/null || ray status"],
    }.get(action)
    if argv is None:
        raise ConfigError(f"cluster action {action!r}: expected up, down, status or head-ip")
    env = dict(os.environ)
    if config["provider"]["type"] == "fake_multinode":
        env["RAY_FAKE_CLUSTER"] = "1"
    proc = subprocess.run(
        [_ray_cli(), *argv, *(extra or [])], env=env, text=True,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
    )
    if proc.returncode:
        tail = (proc.stderr or "").strip().splitlines()[-5:] if capture else []
        raise RunnerError(f"'ray {' '.join(argv)}' failed with exit code {proc.returncode}" + (": " + " | ".join(tail) if tail else ""))
    return (proc.stdout or "").strip()


def dashboard_address(target: str) -> str:
    """The Jobs API address of ``target``: a cluster YAML (its head's IP, port 8265), or an
    address (``http://HOST:8265``, ``HOST:PORT``; a bare host gets port 8265)."""
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        ip = ray_cluster("head-ip", target, capture=True).splitlines()[-1].strip()
        return f"http://{ip}:8265"
    if "://" in target:
        return target
    return f"http://{target}" if ":" in target else f"http://{target}:8265"


def submit(
    target: str,
    entrypoint: list[str] | str,
    *,
    working_dir: str | Path = ".",
    env: dict[str, str] | None = None,
    forward: list[str] | None = None,
) -> tuple[object, str]:
    """Submit ``entrypoint`` (e.g. ``["jetscan", "run", "study.yaml"]``) as a Ray job; returns
    (client, job id). ``forward`` names extra environment variables to send with the job."""
    from ray.job_submission import JobSubmissionClient

    address = dashboard_address(target)
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ... from the client
        raise RunnerError(
            f"cannot reach the Ray Jobs API at {address} ({str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}); "
            "is the cluster up ('jetscan cluster up CLUSTER.yaml') and its dashboard reachable (port 8265)?"
        ) from None
    names = FORWARDED_ENV + list(forward or [])
    env_vars = {k: os.environ[k] for k in names if k in os.environ}
    env_vars.update(env or {})
    command = entrypoint if isinstance(entrypoint, str) else " ".join(_quote(a) for a in entrypoint)
    if not command.strip():
        raise ConfigError("cluster submit: give the command after '--', e.g. -- jetscan run study.yaml")
    runtime_env = {"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES, "env_vars": env_vars}
    deadline = time.monotonic() + 120
    while True:
        try:
            return client, client.submit_job(entrypoint=command, runtime_env=runtime_env)
        except RuntimeError as exc:  # a cluster just started: its job agent comes up a little later
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise RunnerError(f"the Ray Jobs API at {address} refused the job: {str(exc).strip()[:300]}") from None
            time.sleep(2)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def follow(
    client, job_id: str, *, timeout_s: float | None = None, poll_s: float = 2.0, on_lines: Callable[[str], None] | None = None
) -> str:
    """Poll the job until it ends (or ``timeout_s``); new log text goes to ``on_lines``.
    Returns the final status name (SUCCEEDED, FAILED, STOPPED) or the last one seen."""
    from ray.job_submission import JobStatus

    seen, start = 0, time.monotonic()
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if on_lines is not None and len(logs) > seen:
            on_lines(logs[seen:])
        seen = max(seen, len(logs))
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value if hasattr(status, "value") else status)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return str(status.value if hasattr(status, "value") else status)
        time.sleep(poll_s)


def stop(client, job_id: str) -> bool:
    return bool(client.stop_job(job_id))


def log_tail(client, job_id: str, lines: int = 20) -> str:
    return "\n".join(client.get_job_logs(job_id).splitlines()[-lines:])
