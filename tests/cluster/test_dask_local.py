"""The local Dask cluster jetscan starts (``jetscan.cluster.dask.open_client``): its workers'
settings, checked in the worker processes themselves."""

import os

import pytest

pytest.importorskip("distributed")


def _worker_settings():
    import dask

    return {"profile": dask.config.get("distributed.worker.profile.enabled"),
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "pid": os.getpid()}


def test_local_workers_run_without_the_profiler_and_dasks_malloc_trim():
    """No dashboard is started, so the statistical profiler (a thread taking the GIL every 10 ms)
    is off in the workers; glibc's adaptive malloc thresholds are left alone (see _worker_environ)."""
    import dask

    from jetscan.cluster.dask import open_client

    with open_client(workers=2) as client:
        got = client.run(_worker_settings)
    assert len(got) == 2 and len({s["pid"] for s in got.values()} | {os.getpid()}) == 3  # worker processes
    assert all(s["profile"] is False and s["malloc_trim"] is None for s in got.values()), got
    assert dask.config.get("distributed.worker.profile.enabled") is True  # this process's config is untouched


def _affinities():
    return {"tids": {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")},
            "pid": os.getpid()}


def _task_cpus(_):
    return sorted(os.sched_getaffinity(0))  # the executor thread running a task


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable CPUs")
def test_local_workers_each_run_on_their_own_cpus_unless_told_not_to():
    """Two workers of one thread each on 2+ CPUs: every thread of each worker process (and the
    thread running its tasks) is on one block of CPUs, the blocks disjoint; --no-pin-cores
    leaves them on every CPU."""
    from jetscan.cluster.dask import open_client
    from jetscan.cluster.local import core_sets

    every = sorted(os.sched_getaffinity(0))
    with open_client(workers=2, threads_each=1) as client:
        threads = client.run(_affinities)
        tasks = {addr: client.submit(_task_cpus, addr, workers=[addr], pure=False).result() for addr in threads}
    blocks = {addr: {tuple(c) for c in got["tids"].values()} for addr, got in threads.items()}
    assert all(len(b) == 1 for b in blocks.values()), blocks  # all of a worker's threads alike
    pinned = sorted(list(next(iter(b))) for b in blocks.values())
    assert pinned == core_sets(2, 1), pinned
    assert all([cpus] == [list(next(iter(blocks[addr])))] for addr, cpus in tasks.items()), (tasks, blocks)
    with open_client(workers=2, threads_each=1, pin_cores=False) as client:
        threads = client.run(_affinities)
    assert all(c == every for got in threads.values() for c in got["tids"].values()), threads
    assert sorted(os.sched_getaffinity(0)) == every  # this process is never pinned


def _freeze_count():
    import gc

    return gc.get_freeze_count()


def test_a_closing_local_worker_freezes_its_objects_so_it_exits_quickly():
    """A local worker's interpreter skips its final garbage collections when it exits (the
    FreezeAtClose plugin, whose teardown runs as the worker closes; here as it is removed): a
    worker that had imported torch took ~0.9 s to exit, 0.2 s frozen."""
    from jetscan.cluster.dask import FreezeAtClose, open_client

    with open_client(workers=1) as client:
        before = client.run(_freeze_count)
        client.unregister_worker_plugin(FreezeAtClose.name)
        after = client.run(_freeze_count)
    assert list(before.values()) == [0], before
    assert all(n > 10_000 for n in after.values()), after  # every object the worker holds
