"""Waiting for Dask workers (``jetscan.cluster.dask.open_client``): work starts with the first
worker of an existing scheduler or of Slurm jobs; none in time is one clear error.

The Slurm jobs are stood in for by a LocalCluster whose ``scale(jobs=N)`` starts only some of
the N workers, as when the other jobs sit in the queue."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")
pytest.importorskip("dask_jobqueue")

from distributed import LocalCluster  # noqa: E402

from jetscan.cluster.dask import open_client  # noqa: E402
from jetscan.core.errors import ConfigError, RunnerError  # noqa: E402


class QueuedSlurm(LocalCluster):
    """A SLURMCluster of which only ``running`` jobs leave the queue."""

    made: list[QueuedSlurm] = []

    def __init__(self, running: int):
        self.running = running  # LocalCluster's __init__ scales already
        super().__init__(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=None)
        QueuedSlurm.made.append(self)

    def scale(self, n=None, jobs=0, **kw):
        return super().scale(min(jobs, self.running))


@pytest.fixture
def slurm_queue(monkeypatch):
    import dask_jobqueue

    def use(running: int):
        monkeypatch.setattr(dask_jobqueue, "SLURMCluster", lambda **kw: QueuedSlurm(running))

    QueuedSlurm.made.clear()
    return use


def test_work_starts_with_the_first_slurm_job_while_the_others_are_queued(slurm_queue):
    slurm_queue(running=1)
    with open_client(workers=3, cluster="slurm", worker_timeout_s=60) as client:
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


def test_no_slurm_job_started_in_time_is_one_clear_error(slurm_queue):
    slurm_queue(running=0)
    with pytest.raises(RunnerError, match=r"--cluster slurm \(2 job\(s\) submitted\): no Dask worker connected within "
                                          r"1 s \(the jobs may still be queued.*raise --worker-timeout"):
        with open_client(workers=2, cluster="slurm", worker_timeout_s=1):
            pass
    assert QueuedSlurm.made[0].status.name == "closed"  # the jobs are cancelled


def test_an_existing_scheduler_without_workers_is_one_clear_error():
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(RunnerError, match="no Dask worker connected within 1 s .*dask worker"):
            with open_client(scheduler=cluster.scheduler_address, worker_timeout_s=1):
                pass


@pytest.mark.parametrize("kw, message", [
    ({"workers": 0}, "--workers: must be at least 1"),
    ({"cluster": "pbs"}, "--cluster: unknown cluster 'pbs'; clusters: slurm"),
    ({"worker_timeout_s": 0}, "--worker-timeout: must be a positive number of seconds"),
])
def test_bad_options_are_one_clear_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        with open_client(**{"workers": 1, **kw}):
            pass
