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
