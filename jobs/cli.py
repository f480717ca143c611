"""The ``jetscan`` command line: flags become config models here, at the edge.

    jetscan run STUDY.yaml         the whole study on local defaults (today: generation)
    jetscan generate STUDY.yaml    [--address HOST:PORT] [--workers N] [--sample NAME ...]
    jetscan preprocess STUDY.yaml  [--address HOST:PORT] [--workers N] [--representation NAME ...]
    jetscan train STUDY.yaml --model RUN [--restart] [--np N] [--backend horovod|ddp] [--address HOST:PORT [--min-np M]]
    jetscan evaluate STUDY.yaml    [--model RUN ...] [--report DIR]
    jetscan info STORE             samples, jet counts, stored inputs and the shard catalog
    jetscan submit STUDY.yaml      [--stage STAGE] [--site FILE] [--dry-run]   Slurm batch jobs
    jetscan status STUDY.yaml      [--site FILE]  what Slurm and the store say
    jetscan search STUDY.yaml NAME [--trials N] [--workers N] [--address HOST:PORT] [--storage URL]
    jetscan scan STUDY.yaml NAME   [--workers N] [--scheduler ADDR] [--cluster slurm [--dry-run]]
    jetscan serve STORE...         [--host H] [--port N] [--token-file F] [--no-auth]: read-only HTTP service
    jetscan query URL|STORE QUERY  [--columns ...] [--format table|csv|parquet]
    jetscan reproduce PRESET       [--shrink F] [--workers N]: a seed paper's figures next to ours (docs/results/)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from jetscan.core.errors import JetscanError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distributed jet-substructure studies.",
)
console = Console(stderr=True, soft_wrap=True)  # a message is one line in a log file too (rich folds at 80 columns)


def _study(path: Path):
    from jetscan.core.study import Study
    from jetscan.storage.blobs import use_storage_options

    study = Study.from_yaml(path)
    use_storage_options(study.store, study.storage_options)  # s3://, gs://: the study's fsspec options
    return study


def _generate(study, workers: Optional[int], address: Optional[str], samples: Optional[list[str]], use_ray: bool):
    from jetscan.jobs.generate import generate

    totals: dict[str, int] = {}
    for name in samples or study.samples:
        totals[name] = study.sample(name).n_jets
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("jets"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        from jetscan.storage import catalog

        bars = {}
        for name, total in totals.items():
            done = 0
            try:
                done = sum(catalog.read_catalog(study.store, name).column("n_jets").to_pylist())
            except Exception:  # noqa: BLE001 - a new store has no catalog yet
                done = 0
            bars[name] = progress.add_task(name, total=total, completed=done)

        def on_shard(row: dict) -> None:
            progress.advance(bars[row["sample"]], row["n_jets"])

        rows = generate(study, workers=workers, address=address, samples=samples, use_ray=use_ray, on_shard=on_shard)
    return rows


@app.command("generate")
def generate_cmd(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml", help="study file"),
    address: Optional[str] = typer.Option(None, "--address", help="join a Ray cluster at HOST:PORT"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors (default: one per core)"),
    sample: Optional[list[str]] = typer.Option(None, "--sample", help="only these samples"),
    no_ray: bool = typer.Option(False, "--no-ray", help="run in this process, without Ray"),
) -> None:
    """Generate every missing shard of the study's samples (re-running resumes)."""
    study = _study(study_path)
    rows = _generate(study, workers, address, sample, not no_ray)
    console.print(f"committed {len(rows)} new shard(s) into {study.store}")
    _print_info(study.store)


def _preprocess(study, workers, address, representations, use_ray: bool):
    from jetscan.jobs.preprocess import bytes_per_jet, plan, preprocess

    todo, _ = plan(study, None, representations)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        bar = progress.add_task("preprocess", total=len(todo))
        rows, waiting = preprocess(
            study, workers=workers, address=address, representations=representations, use_ray=use_ray,
            on_shard=lambda row: progress.advance(bar),
        )
    for sample, shards in waiting.items():
        console.print(f"[yellow]{sample}: shard(s) {shards} not generated yet; they are preprocessed once generated[/]")
    console.print(f"committed {len(rows)} input shard(s)")
    for name in representations or study.preprocess.representations:
        sizes = ", ".join(f"{s} {bytes_per_jet(study.store, s, name):.0f}" for s in study.samples)
        console.print(f"  {name}: stored bytes per jet: {sizes}")
    return rows


@app.command("preprocess")
def preprocess_cmd(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml", help="study file"),
    address: Optional[str] = typer.Option(None, "--address", help="join a Ray cluster at HOST:PORT"),
    workers: Optional[int] = typer.Option(None, "--workers", help="parallel Ray tasks (default: one per core)"),
    representation: Optional[list[str]] = typer.Option(None, "--representation", help="only these representations"),
    no_ray: bool = typer.Option(False, "--no-ray", help="run in this process, without Ray"),
) -> None:
    """Store the study's network inputs (jet images, LoLa 4-vectors) beside the jets."""
    study = _study(study_path)
    _preprocess(study, workers, address, representation, not no_ray)


def _train(study, runs, restart: bool) -> None:
    from jetscan.jobs.train import train

    for run in runs:
        study.run(run)  # check every name before training any
    for run in runs:
        cfg = study.run(run)
        with Progress(
            TextColumn(f"[bold]train {run}[/] ({cfg.model})"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
            TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=console,
        ) as progress:
            bar = progress.add_task(run, total=cfg.epochs, loss="")

            def on_epoch(e: dict) -> None:
                progress.update(bar, completed=e["epoch"] + 1, loss=f"val loss {e['val_loss']:.4g}")

            summary = train(study, run, restart=restart, on_epoch=on_epoch, should_stop=_stop_flag())
        _exit_if_preempted(summary)
        console.print(
            f"{run}: {summary['epochs_run']} epoch(s), best epoch {summary['best_epoch']}, "
            f"val loss {summary['best_val_loss']:.4g}, {summary['train_jets']} training jets, {summary['seconds']:.0f} s"
            + ("" if summary.get("precision", "float32") == "float32" else f", {summary['precision']} training steps")
        )


def _stop_flag():
    from jetscan.cluster import preempt

    return preempt.from_env()  # a Slurm batch script sets JETSCAN_STOP_SIGNALS


def _exit_if_preempted(summary: dict) -> None:
    from jetscan.cluster import preempt

    if summary.get("preempted"):
        done = summary["stopped_after_epoch"] + 1  # epochs are 0-based in the summary; the user counts from 1, as reproduce does
        console.print(f"{summary['run']}: stopped on request after epoch {done} (checkpoint written); the next call resumes it")
        sys.exit(preempt.PREEMPTED_EXIT)


@app.command("train")
def train_cmd(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
    model: list[str] = typer.Option(..., "--model", help="run name(s) from train.runs"),
    restart: bool = typer.Option(False, "--restart", help="ignore an existing checkpoint and train from scratch"),
    np_: int = typer.Option(1, "--np", help="data-parallel workers (processes here, or Ray actors with --address)"),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="horovod (the default: horovodrun / RayExecutor, gloo) or ddp (torch.distributed)"
    ),
    address: Optional[str] = typer.Option(None, "--address", help="run the workers as actors on the Ray cluster at HOST:PORT"),
    min_np: Optional[int] = typer.Option(
        None, "--min-np", metavar="M", help="elastic Horovod on Ray: keep training while at least M workers are alive"
    ),
) -> None:
    """Train runs of the study (resuming from their last checkpoint); --np N runs N workers.

    Inside a launcher (horovodrun, torchrun, or a Slurm srun step) each process is one worker
    and takes its rank and size from the launcher's environment. With --address, --min-np M
    makes the job elastic: it goes on while M of the N workers are alive, each loss resuming
    from the last checkpoint (horovod backend)."""
    from jetscan.cluster.distributed import inside_launcher
    from jetscan.core.errors import RunnerError

    if min_np is not None and address is None:
        raise RunnerError("--min-np: elastic training runs on a Ray cluster only; pass --address HOST:PORT too")
    study = _study(study_path)
    for run in model:
        study.run(run)  # every name is checked before any worker starts
    if inside_launcher():  # a worker: train, with the rank and size its launcher gave it
        from jetscan.jobs.train import train

        for run in model:
            _exit_if_preempted(train(study, run, restart=restart, backend=backend or "auto", should_stop=_stop_flag()))
        return
    if address is not None:
        from jetscan.cluster.launch import launch_ray
        from jetscan.jobs.train import train_runs

        launch_ray(
            study, list(model), np_, backend or "horovod", address=address, job=train_runs, restart=restart, min_np=min_np
        )
        workers = f"{np_}" if min_np is None else f"up to {np_} elastic"
        console.print(f"trained {', '.join(model)} on {workers} {backend or 'horovod'} workers of the Ray cluster at {address}")
        return
    if np_ == 1:
        _train(study, model, restart)
        return
    from jetscan.cluster.launch import launch_local

    launch_local(str(study_path), list(model), np_, backend or "horovod", restart=restart)
    console.print(f"trained {', '.join(model)} on {np_} {backend or 'horovod'} workers")


def _report_dir(study) -> Path:
    store = study.store
    if "://" in store:
        return Path.cwd() / f"{study.name}-report"
    return Path(store).parent / f"{Path(store).stem}-report"


@app.command("evaluate")
def evaluate_cmd(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
    model: Optional[list[str]] = typer.Option(None, "--model", help="runs to evaluate (default: all)"),
    report: Optional[Path] = typer.Option(None, "--report", help="report folder (default: beside the store)"),
) -> None:
    """Score the test split, write metrics (zarr + parquet), plots and the HTML report."""
    study = _study(study_path)
    _evaluate(study, model, report)


def _evaluate(study, runs, report) -> None:
    from jetscan.jobs.evaluate import evaluate
    from jetscan.jobs.report import metrics_table
    from jetscan.storage.results import read_results

    out = report or _report_dir(study)
    with console.status("evaluating"):
        evaluate(study, runs, report_dir=out)
    Console(width=None if sys.stdout.isatty() else 200).print(metrics_table(read_results(study.store)))
    console.print(f"report: {Path(out) / 'index.html'}")


@app.command("submit")
def submit_cmd(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
    stage: str = typer.Option("all", "--stage", help="generate|preprocess|train|search|scan|evaluate|all"),
    site: Optional[Path] = typer.Option(None, "--site", help="Slurm site file (see slurm/site.example.yaml)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the scripts and sbatch lines, submit nothing"),
    search: Optional[str] = typer.Option(None, "--search", help="--stage search: the search's NAME"),
    storage: Optional[str] = typer.Option(None, "--storage", help="--stage search: its Optuna storage (journal path or URL)"),
) -> None:
    """Submit the study (or one stage) as Slurm batch jobs, chained with afterok."""
    from jetscan.cluster.slurm_site import load_site
    from jetscan.jobs.submit import submit

    study = _study(study_path)
    jobs = submit(study, study_path, load_site(site), stage, dry_run=dry_run, search=search, storage=storage)
    for job in jobs:
        if dry_run:
            print(f"# ---- {job.path}\n{job.text}")
            print("# " + " ".join(job.sbatch_command()) + "\n")
        else:
            console.print(f"{job.stage}: job {job.job_id} ({job.path})")
    if not dry_run:
        print(" ".join(j.job_id for j in jobs))


@app.command("status")
def status_cmd(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
    site: Optional[Path] = typer.Option(None, "--site", help="the site file the study was submitted with"),
) -> None:
    """What Slurm says of the study's submitted jobs and what its store holds."""
    from rich.table import Table

    from jetscan.cluster.slurm_site import load_site
    from jetscan.jobs.submit import status

    st = status(_study(study_path), study_path, load_site(site))
    out = Console(width=None if sys.stdout.isatty() else 200)
    jobs = Table("stage", "job", "state", "reason", "exit code", "restarts", title="Slurm")
    for j in st["jobs"]:
        jobs.add_row(j["stage"], j["job_id"], j["state"], j["reason"], j["exit_code"], str(j["restarts"]))
    out.print(jobs if st["jobs"] else f"no jobs submitted yet ({st['jobs_file']})")
    store = Table("sample", "shards committed", title="store")
    for name, s in st["store"]["samples"].items():
        store.add_row(name, f"{s['shards_committed']}/{s['shards_planned']}")
    out.print(store)
    if st["store"]["runs"]:
        runs = Table("run", "epochs done", "finished")
        for name, r in st["store"]["runs"].items():
            runs.add_row(name, f"{r['epochs_done']}/{r['epochs']}", "yes" if r["finished"] else r.get("error", "no"))
        out.print(runs)


@app.command("info")
def info_cmd(store: str = typer.Argument(..., metavar="STORE", help="store path or URL")) -> None:
    """Samples, jet counts and the shard catalog of a store."""
    _print_info(store)


@app.command("run")
def run_cmd(
    study_path: Path = typer.Argument(..., metavar="STUDY.yaml"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    address: Optional[str] = typer.Option(None, "--address"),
) -> None:
    """Run the whole study on local defaults: generate, preprocess, train, evaluate, report."""
    study = _study(study_path)
    _generate(study, workers, address, None, True)
    _preprocess(study, workers, address, None, True)
    _print_info(study.store)
    _print_physics(study)
    if study.train.runs:
        _train(study, list(study.train.runs), restart=False)
        _evaluate(study, None, None)


def _print_info(store: str) -> None:
    from rich.table import Table

    from jetscan.storage import catalog, layout

    root = layout.open_root(store)
    samples = root.attrs.get("samples", {})
    cat = catalog.read_catalog(store)
    out = Console()
    out.print(f"[bold]{escape(str(store))}[/]  study={root.attrs.get('study')}  jetscan={root.attrs.get('jetscan')}")
    table = Table("sample", "process", "jets committed", "jets planned", "shards", "events", "jets/s/worker", "settings hash")
    for name, meta in samples.items():
        group = layout.open_sample(root, name)
        rows = cat.filter(cat.column("sample").to_numpy(zero_copy_only=False) == name) if cat.num_rows else cat
        n = sum(rows.column("n_jets").to_pylist())
        ev = sum(rows.column("n_events").to_pylist())
        sec = sum(rows.column("seconds").to_pylist())
        n_shards = -(-group.attrs["n_jets"] // group.attrs["shard_jets"])
        rate = f"{n / sec:.1f}" if sec else "-"
        table.add_row(
            name, meta["process"], str(n), str(group.attrs["n_jets"]), f"{rows.num_rows}/{n_shards}", str(ev), rate, meta["settings_hash"]
        )
    out.print(table)
    inputs = Table("sample", "representation", "shards", "bytes/jet")
    for name in samples:
        for rep in catalog.read_catalog(store, name, table="inputs/*").column("representation").unique().to_pylist():
            rows = catalog.read_catalog(store, name, table=f"inputs/{rep}")
            n = sum(rows.column("n_jets").to_pylist())
            b = sum(rows.column("nbytes_stored").to_pylist())
            inputs.add_row(name, rep, str(rows.num_rows), f"{b / n:.0f}" if n and b >= 0 else "-")
    if inputs.row_count:
        out.print(inputs)
    from jetscan.storage import blobs

    runs = [p.split("/")[1] for p in blobs.glob(store, "_runs/*/checkpoint.pt")]
    results = [p.split("/")[-1].removesuffix(".parquet") for p in blobs.glob(store, "_results/*.parquet")]
    if runs:
        out.print(f"trained runs: {', '.join(runs)}; evaluated: {', '.join(results) or 'none'}")


def _print_physics(study) -> None:
    import numpy as np
    from rich.table import Table

    from jetscan.storage import reader

    table = Table("sample", "jets", "mass median [GeV]", "mass 16-84% [GeV]", "sd mass median", "<tau32>", "<tau21>", "<n const>")
    for name in study.samples:
        arrays = reader.read_jets(study.store, name, ["jets/mass", "jets/sd_mass", "jets/tau1", "jets/tau2", "jets/tau3", "jets/n_constituents"])
        m = arrays["jets/mass"]
        if len(m) == 0:
            continue
        t1, t2, t3 = arrays["jets/tau1"], arrays["jets/tau2"], arrays["jets/tau3"]
        tau32 = np.divide(t3, t2, out=np.zeros_like(t3), where=t2 > 0)
        tau21 = np.divide(t2, t1, out=np.zeros_like(t2), where=t1 > 0)
        lo, hi = np.percentile(m, [16, 84])
        table.add_row(
            name,
            str(len(m)),
            f"{np.median(m):.1f}",
            f"{lo:.0f}-{hi:.0f}",
            f"{np.median(arrays['jets/sd_mass']):.1f}",
            f"{tau32.mean():.3f}",
            f"{tau21.mean():.3f}",
            f"{arrays['jets/n_constituents'].mean():.1f}",
        )
    Console().print(table)


def _register_serving() -> None:
    from jetscan.jobs.query import query_cmd
    from jetscan.jobs.serve import serve_cmd

    app.command("serve")(serve_cmd)
    app.command("query")(query_cmd)


_register_serving()


def _register_search() -> None:
    from jetscan.jobs.search import add_commands

    add_commands(app)  # jetscan search STUDY NAME, jetscan search-worker STUDY NAME --storage URL


_register_search()


def _register_scan() -> None:
    from jetscan.jobs.scan import add_commands

    add_commands(app)  # jetscan scan STUDY NAME [--workers N] [--scheduler ADDR] [--cluster slurm --dry-run]


_register_scan()


def _register_store_and_cloud() -> None:
    from jetscan.jobs.verify import add_commands as add_verify

    add_verify(app)  # jetscan verify STORE [--repair --study STUDY.yaml]
    from jetscan.jobs.cloud import add_commands as add_cluster

    add_cluster(app)  # jetscan cluster up|down|status|check|submit|job


_register_store_and_cloud()


def _register_reproduce() -> None:
    from jetscan.jobs.reproduce import add_commands

    add_commands(app)  # jetscan reproduce PRESET [--shrink F] [--workers N]


_register_reproduce()


def main() -> None:
    try:
        app()
    except JetscanError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")  # its text verbatim: "ray[default]", "[qcd, top]"
        sys.exit(2)


if __name__ == "__main__":
    main()
