"""Query a study's metrics table: ``jetscan query URL|STORE "QUERY" [--columns ...] [--format ...]``.

The same command on a local store path, an object-store URL (``s3://bucket/study.zarr``) and a
served one (``http://HOST:PORT/stores/NAME``, token from ``--token-file`` or
``$JETSCAN_TOKEN``) prints the same rows; :func:`jetscan.connect` does the work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from jetscan.core.errors import ConfigError

__all__ = ["query_cmd", "write_table"]


def write_table(table, fmt: str, output: Optional[Path]) -> None:
    """``table`` as a rich table, CSV or parquet, to ``output`` or stdout."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        if output is None and sys.stdout.isatty():
            raise ConfigError("--format parquet writes binary: pass --output FILE.parquet or redirect stdout")
        pq.write_table(table, str(output) if output else sys.stdout.buffer)
        return
    if fmt == "csv":
        if output:
            pacsv.write_csv(table, str(output))
        else:
            pacsv.write_csv(table, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        return
    from rich.console import Console
    from rich.table import Table

    out = Table(*table.column_names)
    for row in table.to_pylist():
        out.add_row(*[_cell(v) for v in row.values()])
    console = Console(file=open(output, "w") if output else None, width=None if sys.stdout.isatty() else 250)
    console.print(out)
    console.print(f"{table.num_rows} row(s)")


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def query_cmd(
    source: str = typer.Argument(..., metavar="URL|STORE", help="store path, s3:// URL, or http://HOST:PORT/stores/NAME"),
    query: Optional[str] = typer.Argument(None, metavar="QUERY", help="filter, e.g. \"model == 'pca' and signal == 'top'\""),
    columns: Optional[list[str]] = typer.Option(None, "--columns", "-c", help="columns to show (repeat, or comma-separated)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or parquet"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write to this file instead of stdout"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="bearer token for a served URL (default: $JETSCAN_TOKEN)"),
) -> None:
    """Rows of the metrics table matching QUERY (and/or/not, == != < <= > >=, in)."""
    from jetscan.jobs.serve import read_token
    from jetscan.storage.remote import connect

    if fmt not in ("table", "csv", "parquet"):
        raise ConfigError(f"--format {fmt!r}: use table, csv or parquet")
    cols = [c.strip() for part in (columns or []) for c in part.split(",") if c.strip()] or None
    served = source.startswith(("http://", "https://"))
    token = read_token(token_file) if served else None
    table = connect(source, token=token).results(query, cols)
    write_table(table, fmt, output)
