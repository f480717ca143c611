"""``jetscan.cluster.local.run_processes``: the local worker processes of ``jetscan search``."""

import os
import signal
import subprocess
import sys
import textwrap
import time

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
