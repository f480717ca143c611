"""What every benchmark script shares: its revision, its device tag, and the results file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results.jsonl"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    except OSError:
        return "unknown"


def cpu_device() -> str:
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} (cpu)"


def append_result(result: dict, *, quick: bool = False) -> None:
    """Append one JSON line to benchmarks/results.jsonl (never for --quick runs)."""
    if quick:
        print("(--quick: nothing appended to benchmarks/results.jsonl)")
        return
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"git": git_rev(), **result}) + "\n")
