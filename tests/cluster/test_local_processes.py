"""``jetscan.cluster.local.run_processes``: the local worker processes of ``jetscan search``."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

_DRIVER = textwrap.dedent("""
    import sys
    from jetscan.cluster.local import run_processes
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    print(run_processes([sleeper, sleeper]), flush=True)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split(")")[-1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_sigterm_to_the_driver_ends_its_workers_too():
    """``kill`` or ``timeout`` on a ``jetscan search`` driver must not leave its workers training
    on their own (they would keep writing trials into the storage)."""
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER])
    try:
        deadline = time.monotonic() + 60
        while len(_children(driver.pid)) < 2:
            assert time.monotonic() < deadline, "the driver did not start its two workers"
            time.sleep(0.1)
        workers = _children(driver.pid)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=30) == 128 + signal.SIGTERM
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their driver"
    finally:
        if driver.poll() is None:
            driver.kill()


def test_core_sets_split_the_cpus_into_disjoint_blocks_or_leave_scheduling_to_the_os():
    from jetscan.cluster.local import core_sets

    assert core_sets(2, 1, [0, 1]) == [[0], [1]]
    assert core_sets(2, 4, range(16)) == [list(range(8)), list(range(8, 16))]  # spare CPUs go to the workers
    assert core_sets(3, 2, range(8)) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert core_sets(2, 1, [4, 9]) == [[4], [9]]  # an affinity mask (taskset, Slurm) is kept
    assert core_sets(3, 3, range(8)) is None  # too few CPUs for 3 threads each
    assert core_sets(1, 1, range(8)) is None  # one worker: nothing to keep apart


_CPUS_OF = "import os, sys; open(sys.argv[1], 'w').write(' '.join(map(str, sorted(os.sched_getaffinity(0)))))"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable CPUs")
def test_each_process_runs_on_the_cpus_it_was_given(tmp_path):
    from jetscan.cluster.local import core_sets, run_processes

    sets = core_sets(2, 1)
    files = [tmp_path / f"cpus{i}" for i in range(2)]
    assert run_processes([[sys.executable, "-c", _CPUS_OF, str(f)] for f in files], cpus=sets) == []
    assert [[int(c) for c in f.read_text().split()] for f in files] == sets
    # without cpus a process keeps this one's affinity
    assert run_processes([[sys.executable, "-c", _CPUS_OF, str(files[0])]]) == []
    assert [int(c) for c in files[0].read_text().split()] == sorted(os.sched_getaffinity(0))
