"""``jetscan cluster``: Ray clusters on cloud, and studies submitted to them.

    jetscan cluster up CLUSTER.yaml          ray up -y (after checking the YAML against Ray's schema)
    jetscan cluster down CLUSTER.yaml        ray down -y
    jetscan cluster status CLUSTER.yaml      ray status on the head
    jetscan cluster check CLUSTER.yaml       only the schema check
    jetscan cluster submit CLUSTER.yaml|ADDRESS [--no-wait] [--env NAME] -- jetscan run STUDY.yaml
    jetscan cluster job CLUSTER.yaml|ADDRESS JOB_ID [--stop] [--tail N]

``submit`` goes through the Ray Jobs API: it prints the job id, follows the job's log and
ends with its status (exit code 0 only when it SUCCEEDED); Ctrl-C stops following, not the
job (``jetscan cluster job ... --stop`` stops it). The working directory is uploaded without
``.git``, ``.venv``, stores and outputs. Inside the job, jetscan joins the cluster on its own
(Ray sets ``RAY_ADDRESS``), so ``jetscan run`` / ``generate`` / ``preprocess`` spread their
shards over the cluster's nodes.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from jetscan.cluster import cloud

__all__ = ["add_commands"]

cluster_app = typer.Typer(no_args_is_help=True, help="Ray clusters on cloud: up, down, status, submit, job.")


@cluster_app.command("check")
def check_cmd(config: str = typer.Argument(..., metavar="CLUSTER.yaml")) -> None:
    """Check a cluster YAML against Ray's own schema (nothing starts)."""
    cfg = cloud.load_cluster_config(config)
    types = ", ".join(cfg.get("available_node_types", {}))
    typer.echo(f"{config}: valid Ray cluster config ({cfg['provider']['type']}; node types {types})")


@cluster_app.command("up")
def up_cmd(config: str = typer.Argument(..., metavar="CLUSTER.yaml")) -> None:
    """Start (or update) the cluster: ray up -y."""
    cloud.ray_cluster("up", config)


@cluster_app.command("down")
def down_cmd(config: str = typer.Argument(..., metavar="CLUSTER.yaml")) -> None:
    """Tear the cluster down: ray down -y."""
    cloud.ray_cluster("down", config)


@cluster_app.command("status")
def status_cmd(config: str = typer.Argument(..., metavar="CLUSTER.yaml")) -> None:
    """Nodes and resources of the running cluster (ray status on its head)."""
    cloud.ray_cluster("status", config)


@cluster_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def submit_cmd(
    ctx: typer.Context,
    target: str = typer.Argument(..., metavar="CLUSTER.yaml|ADDRESS"),
    no_wait: bool = typer.Option(False, "--no-wait", help="print the job id and return"),
    env: Optional[list[str]] = typer.Option(None, "--env", help="also send this environment variable with the job"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="stop following after this many seconds"),
) -> None:
    """Submit a command (after --) as a Ray job: job id, log, final status."""
    command = list(ctx.args)
    client, job_id = cloud.submit(target, command, forward=env)
    typer.echo(f"job {job_id} submitted to {cloud.dashboard_address(target) if '://' in target or ':' in target else target}")
    if no_wait:
        return
    status = cloud.follow(client, job_id, timeout_s=timeout, on_lines=lambda text: sys.stdout.write(text))
    typer.echo(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


@cluster_app.command("job")
def job_cmd(
    target: str = typer.Argument(..., metavar="CLUSTER.yaml|ADDRESS"),
    job_id: str = typer.Argument(..., metavar="JOB_ID"),
    stop: bool = typer.Option(False, "--stop", help="stop the job"),
    tail: int = typer.Option(20, "--tail", help="log lines to print"),
) -> None:
    """Status and log tail of a submitted job; --stop stops it."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cloud.dashboard_address(target))
    if stop:
        typer.echo(f"job {job_id}: stop {'requested' if cloud.stop(client, job_id) else 'not needed (already ended)'}")
    typer.echo(cloud.log_tail(client, job_id, tail))
    typer.echo(f"job {job_id}: {client.get_job_status(job_id)}")


def add_commands(app) -> None:
    """Register ``jetscan cluster ...`` on the CLI's typer app."""
    app.add_typer(cluster_app, name="cluster")
