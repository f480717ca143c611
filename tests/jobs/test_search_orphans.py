"""Journal storages: which RUNNING trials the driver takes for a dead worker's (and retries),
and the heartbeat a worker writes into its running trial (an Optuna journal, no training)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import optuna
import pytest

from jetscan.jobs.search import HEARTBEAT, _beating, recover_orphans

STALE_S = 300


@pytest.fixture
def journal(tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return storage, optuna.create_study(storage=storage, study_name="s")


def _running(ostudy, x: int, worker: str, heartbeat: float | None):
    ostudy.enqueue_trial({"x": x})
    trial = ostudy.ask()
    assert trial.suggest_int("x", 0, 100) == x
    trial.set_user_attr("worker", worker)
    if heartbeat is not None:
        trial.set_user_attr(HEARTBEAT, heartbeat)
    return trial.number


def test_only_dead_workers_trials_are_recovered(journal):
    storage, ostudy = journal
    here = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    try:
        trials = {
            "remote, beating": _running(ostudy, 1, "node17:4242", now),  # e.g. another Slurm array task
            "remote, just started": _running(ostudy, 2, "node18:4242", None),
            "here, live process": _running(ostudy, 3, f"{here}:{live.pid}", now),
            "remote, stale": _running(ostudy, 4, "node19:4242", now - 2 * STALE_S),
            "here, process gone": _running(ostudy, 5, f"{here}:{gone.pid}", now),
        }
        recovered = recover_orphans(ostudy, storage, stale_seconds=STALE_S)
    finally:
        live.kill()
        live.wait()
    assert sorted(recovered) == sorted([trials["remote, stale"], trials["here, process gone"]])
    state = {t.number: t.state.name for t in ostudy.get_trials(deepcopy=False)}
    for what, number in trials.items():
        assert state[number] == ("FAIL" if number in recovered else "RUNNING"), what
    # the dead workers' points are enqueued again, the live workers' are not
    waiting = [t for t in ostudy.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    assert sorted(t.system_attrs["fixed_params"]["x"] for t in waiting) == [4, 5]


def test_a_trial_goes_stale_when_its_heartbeat_stops(journal):
    storage, ostudy = journal
    number = _running(ostudy, 1, "node17:4242", time.time() - 10)
    assert recover_orphans(ostudy, storage, stale_seconds=60) == []
    assert recover_orphans(ostudy, storage, stale_seconds=5) == [number]


def test_a_running_trial_beats_until_it_ends(journal):
    storage, ostudy = journal
    trial = ostudy.ask()

    def beat() -> float:
        return storage.get_trial(trial._trial_id).user_attrs[HEARTBEAT]

    t0 = time.time()
    with _beating(storage, trial._trial_id, 0.05):
        first = beat()
        assert first >= t0
        time.sleep(0.5)
        assert beat() > first  # still beating mid-trial
    last = beat()
    time.sleep(0.3)
    assert beat() == last  # stopped with the trial
