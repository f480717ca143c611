"""What every benchmark script shares: its revision, its device tag, and the results file.

A results line names the commit it measured. When the working tree has uncommitted changes
to tracked files, the commit alone would hide them, so the line records ``<rev>-dirty``, the
changed paths and a hash of their diff against HEAD (``git diff HEAD``), which identifies the
exact uncommitted state. ``benchmarks/results.jsonl`` itself is left out: every benchmark
appends to it, so it would mark every later run dirty. The state is read when a script
imports this module (before it imports and runs the code it measures) and again when it
appends; a tree that changed in between is recorded as such (``git_at_end``). Each line also
records the machine's load averages at start and end (``load_avg``), since a shared machine
disturbs every timing ratio.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results.jsonl"
_NOT_CODE = {"benchmarks/results.jsonl"}


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, cwd=HERE, check=False)


def git_state() -> dict:
    """``{"git": "abc1234"}`` for a clean tree; for a dirty one ``{"git": "abc1234-dirty",
    "git_dirty_files": [...], "git_dirty_diff_sha1": "..."}`` (tracked files only)."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        status = _git("status", "--porcelain=v1", "-z", "--untracked-files=no")
    except OSError:
        return {"git": "unknown"}
    rev = head.stdout.decode().strip() or "unknown"
    if head.returncode != 0 or status.returncode != 0:
        return {"git": "unknown"}
    files = []
    entries = iter(status.stdout.decode(errors="replace").split("\0"))
    for entry in entries:
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if "R" in code or "C" in code:  # a rename/copy is followed by its source path
            next(entries, None)
        if path not in _NOT_CODE:
            files.append(path)
    if not files:
        return {"git": rev}
    files.sort()
    diff = _git("diff", "HEAD", "--binary", "--", *(f":(top){f}" for f in files)).stdout
    return {
        "git": f"{rev}-dirty",
        "git_dirty_files": files,
        "git_dirty_diff_sha1": hashlib.sha1(diff).hexdigest()[:16],
    }


def git_rev() -> str:
    """The short commit, with ``-dirty`` appended when tracked files have uncommitted changes
    (as read when the script started)."""
    return _AT_START["git"]


_AT_START = git_state()
_LOAD_AT_START = os.getloadavg()


def drop_page_cache() -> str:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only): "dropped", or why not, so a "cold"
    figure can say whether it read from the page cache."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "dropped"
    except OSError as exc:
        return f"NOT dropped ({exc.strerror}): 'cold' measurements may read from the page cache"


def cpu_device() -> str:
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} (cpu)"


def append_result(result: dict, *, quick: bool = False) -> None:
    """Append one JSON line to benchmarks/results.jsonl (never for --quick runs).

    The git fields (:func:`git_state`) are taken at append time and override any the caller
    put in ``result``, so no line can claim a clean commit for a dirty tree."""
    if quick:
        print("(--quick: nothing appended to benchmarks/results.jsonl)")
        return
    state = dict(_AT_START)
    end = git_state()
    if end != _AT_START:
        state["git_at_end"] = end
    result = {k: v for k, v in result.items() if k not in ("git", "git_dirty_files", "git_dirty_diff_sha1")}
    if "-dirty" in state["git"]:
        print(f"(tree is dirty: results line records {state['git']} and {len(state['git_dirty_files'])} changed file(s))")
    # how busy the machine was: 1-, 5-, 15-minute load averages against the core count
    load = {"start": [round(x, 2) for x in _LOAD_AT_START], "end": [round(x, 2) for x in os.getloadavg()],
            "cores": os.cpu_count()}
    with open(RESULTS, "a") as f:
        f.write(json.dumps({**state, **result, "load_avg": load}) + "\n")


def score_store(path: Path, cells: int, jets: int) -> str:
    """``cells`` pairs of per-jet scores (``c<i>/bkg`` from N(0, 1), ``c<i>/sig`` from N(1, 1)),
    stored as the results store holds them (zarr, 4 chunks each), for the scan aggregation's
    benchmarks: they measure the reduction, not physics. Returns the store's path."""
    import numpy as np
    import zarr

    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(1)
    chunk = max(1, jets // 4)
    for c in range(cells):
        root.create_array(f"c{c}/bkg", data=rng.normal(0, 1, jets), chunks=(chunk,))
        root.create_array(f"c{c}/sig", data=rng.normal(1, 1, jets), chunks=(chunk,))
    return str(path)


def store_study(store: str, name: str) -> dict:
    """A minimal study (dict) describing an existing store, from its samples' settings attrs,
    with heimel40 images to preprocess."""
    import zarr

    root = zarr.open_group(store, mode="r")
    settings = root[next(iter(root.attrs["samples"]))].attrs["settings"]
    samples = {}
    for sample in root.attrs["samples"]:
        s = dict(root[sample].attrs["settings"]["sample"])
        s.pop("name")
        samples[sample] = s
    keys = ("seed", "sqrt_s_gev", "jet", "detector", "generation")
    return {"name": name, "store": store, **{k: settings[k] for k in keys}, "samples": samples,
            "preprocess": {"representations": ["heimel40"]}}


def worker_rounds(workers: int, rounds: int, measure, only=None) -> tuple[list[dict], int, int]:
    """The 1-vs-N-workers sides of the search and scan benchmarks, each measured once per round
    (the order alternating between rounds, so a drifting machine favours neither):
    ``1w_all`` 1 worker with every core as threads; ``1w_per`` 1 worker with cores // N threads,
    run on cores // N cores (equal cores per worker); ``Nw`` N workers of cores // N threads,
    pinned to their own cores (the default); ``Nw_unpinned`` the same left to the OS.
    ``measure(key, round, n_workers, threads, pin)`` returns one side's figures; ``only``: the
    sides to measure (default all). Returns the rounds (``{side: figures}``; ``1w_per`` is
    ``1w_all`` on one core), cores // N and the cores."""
    cores = os.cpu_count() or 1
    per = max(1, cores // workers)
    sides = {"1w_all": (1, cores, True), "1w_per": (1, per, True), "Nw": (workers, per, True),
             "Nw_unpinned": (workers, per, False)}
    if per == cores:
        sides.pop("1w_per")
        only = None if only is None else {"1w_all" if k == "1w_per" else k for k in only}
    sides = {k: v for k, v in sides.items() if only is None or k in only}
    out = []
    for r in range(rounds):
        got = {}
        for key in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            with on_cores(per if key == "1w_per" else cores):  # 1 worker on one worker's share of the cores
                got[key] = measure(key, r, *sides[key])
        if "1w_all" in got:
            got.setdefault("1w_per", got["1w_all"])
        out.append(got)
    return out, per, cores


def median_range(xs) -> str:
    """``median (min-max)`` of per-round ratios, two decimals (one value: just it)."""
    import statistics

    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else f"{xs[0]:.2f}"


@contextlib.contextmanager
def on_cores(n: int):
    """Run the block, and every process it starts, on the first ``n`` cores of this machine
    (CPU affinity of every thread of this process, inherited by children; restored after).

    "1 worker vs N workers on equal cores" then means what it says: a 1-worker run gets one
    worker's share of the cores, not the whole machine for its side threads (decode threads,
    the scheduler) to spill onto."""
    cores = sorted(os.sched_getaffinity(0))
    if n >= len(cores):
        yield cores
        return
    from jetscan.cluster.local import pin_threads

    pin_threads(cores[:n])
    try:
        yield cores[:n]
    finally:
        pin_threads(cores)
