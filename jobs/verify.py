"""``jetscan verify STORE [--repair --study STUDY.yaml]``: check a store, and mend it.

The whole story of the command:

1. :func:`jetscan.storage.integrity.verify` reads every chunk of every committed shard
   (zstd and crc32c catch damaged bytes), checks that each committed shard has its files
   and that the catalog agrees with the arrays, and lists the damaged shards by sample,
   array, chunk and shard.
2. With ``--repair`` (which needs the study file, since it regenerates) the damaged shards
   are dropped from the catalog, and exactly those shards are made again through the normal
   paths: :class:`jetscan.jobs.generate.ShardMaker` for the jets, then
   :func:`jetscan.jobs.preprocess.process` for the network inputs of those shards (and for
   damaged inputs). Seeds derive from (master seed, sample, shard index), so a repaired shard
   is bit-identical to the one that was lost (tested). Shards never generated are left to
   ``jetscan generate``: repair mends, it does not extend.
3. The store is verified again; the returned report is that second one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.study import Study
from jetscan.storage import blobs, integrity

__all__ = ["verify", "repair"]


def verify(store: str, storage_options: dict | None = None) -> integrity.Report:
    blobs.use_storage_options(store, storage_options)
    return integrity.verify(store)


def repair(
    study: Study, *, workers: int | None = None, address: str | None = None, use_ray: bool = True
) -> tuple[integrity.Report, integrity.Report]:
    """Regenerate the damaged shards of ``study``'s store; returns (report before, report after)."""
    from jetscan.jobs import generate as gen
    from jetscan.jobs import preprocess as pre

    before = verify(study.store, study.storage_options)
    if before.ok:
        return before, before
    unknown = sorted(set(s.sample for s in before.problems) - set(study.samples))
    if unknown:
        raise ConfigError(
            f"--study: the store holds damaged sample(s) {unknown} that this study does not define; "
            "pass the study file that made the store"
        )
    jets_bad = before.bad_shards("jets")
    inputs_bad = {
        (p.sample, p.table.removeprefix("inputs/"), p.shard) for p in before.problems if p.table.startswith("inputs/")
    }
    integrity.drop_shards(study.store, before.problems)

    todo = [s for s in gen.plan(study, sorted(jets_bad)) if s.shard in jets_bad.get(s.sample, ())] if jets_bad else []
    if todo:
        if use_ray:
            from jetscan.cluster.ray import run_actors

            run_actors(gen.ShardMaker, (study,), "make", todo, workers=workers, address=address)
        else:
            from jetscan.cluster.local import run_local

            run_local(gen.ShardMaker, (study,), "make", todo)
    if inputs_bad:
        samples = sorted({s for s, _, _ in inputs_bad})
        reps = sorted({r for _, r, _ in inputs_bad})
        unknown_reps = [r for r in reps if r not in study.preprocess.representations]
        if unknown_reps:
            raise ConfigError(
                f"--study: the store holds damaged inputs {unknown_reps} that this study's "
                "preprocess.representations does not define; pass the study file that made the store"
            )
        units, _ = pre.plan(study, samples, reps)
        units = [u for u in units if (u.sample, u.representation, u.shard) in inputs_bad]
        if units:
            if use_ray:
                from jetscan.cluster.ray import run_tasks

                run_tasks(pre.process, units, workers=workers, address=address)
            else:
                from jetscan.cluster.local import run_tasks

                run_tasks(pre.process, units)
    after = integrity.verify(study.store)
    if not after.ok:
        lines = "\n".join(f"  {p}" for p in after.problems[:20])
        raise StorageError(f"store {study.store!r} still has {len(after.problems)} problem(s) after repair:\n{lines}")
    return before, after


def verify_cmd(
    store: str,
    repair_: bool = False,
    study_path=None,
    workers: int | None = None,
    address: str | None = None,
    no_ray: bool = False,
) -> int:
    """Print the report; returns the exit code (0 sound, 1 damaged and not repaired)."""
    from rich.console import Console

    out = Console()
    if repair_:
        if study_path is None:
            raise ConfigError("--repair regenerates shards, so it needs the study file that made the store: add --study STUDY.yaml")
        study = Study.from_yaml(study_path)
        if study.store.rstrip("/") != str(store).rstrip("/") and not _same_local(study.store, store):
            raise ConfigError(f"--study {study_path}: its store is {study.store!r}, not {store!r}; pass the study that made this store")
        before, after = repair(study, workers=workers, address=address, use_ray=not no_ray)
        _print(out, before)
        if not before.ok:
            out.print(f"repaired {sum(len(v) for v in before.bad_shards().values())} shard(s); the store now verifies clean")
        return 0
    options = None
    if study_path is not None:
        options = Study.from_yaml(study_path).storage_options
    report = verify(store, options)
    _print(out, report)
    return 0 if report.ok else 1


def _same_local(a: str, b: str) -> bool:
    from pathlib import Path

    if "://" in a or "://" in b:
        return False
    return Path(a).resolve() == Path(b).resolve()


def _print(out, report: integrity.Report) -> None:
    from rich.markup import escape

    out.print(
        f"[bold]{report.store}[/]: {report.shards_checked} committed shard(s) checked, {report.chunks_read} chunk(s) read"
    )
    for sample, shards in report.not_generated.items():
        out.print(f"  {sample}: shard(s) {shards} not generated yet (not damage: 'jetscan generate' makes them)")
    if report.ok:
        out.print("  no damage found")
        return
    for p in report.problems:
        out.print(f"  [red]{escape(str(p))}[/]")
    out.print(
        f"{len(report.problems)} problem(s) in {sum(len(v) for v in report.bad_shards().values())} shard(s); "
        f"repair with 'jetscan verify {report.store} --repair --study STUDY.yaml'"
    )


def add_commands(app) -> None:
    """Register ``jetscan verify`` on the CLI's typer app."""
    @app.command("verify")
    def verify_command(
        store: str = typer.Argument(..., metavar="STORE", help="store path or URL"),
        repair_: bool = typer.Option(False, "--repair", help="regenerate the damaged shards (needs --study)"),
        study: Optional[Path] = typer.Option(None, "--study", help="the study file that made the store"),
        workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors for --repair"),
        address: Optional[str] = typer.Option(None, "--address", help="repair on the Ray cluster at HOST:PORT"),
        no_ray: bool = typer.Option(False, "--no-ray", help="repair in this process, without Ray"),
    ) -> None:
        """Read every chunk of the store (checksums) and check its catalog; --repair mends it."""
        code = verify_cmd(store, repair_, study, workers, address, no_ray)
        if code:
            raise typer.Exit(code)
