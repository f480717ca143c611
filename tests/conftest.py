"""Shared fixtures.

- ``tiny_study``: builds a small, valid study (a real Pythia study, sizes in the hundreds).
- ``ray_local``: one local Ray instance (2 CPUs) for the whole session; ``generate`` joins
  it instead of starting its own.
- ``pythia_store``: one real generation (QCD, tops, gluinos at 13 TeV, 800-900 GeV jets)
  made once per session on Ray and shared by the physics tests.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_study(store, *, samples=None, shard_jets=50, seed=7, **overrides):
    from jetscan.core.study import Study

    data = {
        "name": "tiny",
        "store": str(store),
        "seed": seed,
        "sqrt_s_gev": 13000.0,
        "jet": {"r": 0.8, "pt_window_gev": [800.0, 900.0], "abs_eta_max": 1.0, "max_constituents": 120},
        "generation": {"shard_jets": shard_jets, "batch_events": 100},
        "preprocess": {"representations": ["heimel40", "heimel40_max", "ms37x4", "lola40", "highlevel"]},
        "data": {"batch_size": 32, "shuffle_buffer_jets": 100, "splits": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "samples": samples or {"qcd": {"process": "qcd_dijet", "n_jets": 100}},
    }
    data.update(overrides)
    return Study.from_dict(data)


def _forget_object_store_clients() -> None:
    """Drop s3fs's cached filesystems and the storage options jetscan put into fsspec's config.

    s3fs keeps one filesystem per set of arguments, and botocore reads ``AWS_ENDPOINT_URL`` when
    it makes its client: a module that starts its own local S3 server must not be handed a
    client (or options) pointing at an earlier module's server, stopped since."""
    import sys

    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()
    if "jetscan.storage.blobs" in sys.modules:
        import fsspec.config

        applied = sys.modules["jetscan.storage.blobs"]._APPLIED
        for proto in list(applied):
            fsspec.config.conf.pop(proto, None)
            applied.pop(proto)


@contextmanager
def moto_bucket(bucket: str, *, endpoint_in_env: bool = False):
    """A local S3 server (moto on 127.0.0.1, its own process) holding an empty ``bucket``, with
    test credentials in the environment (and ``AWS_ENDPOINT_URL`` when ``endpoint_in_env``,
    else none); yields ``(endpoint, options)``, ``options`` being s3fs's keyword arguments for
    it. The server is stopped at the end."""
    pytest.importorskip("moto")
    s3fs = pytest.importorskip("s3fs")
    from jetscan.storage.s3local import start_s3_server

    proc, endpoint = start_s3_server()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            if endpoint_in_env:
                mp.setenv("AWS_ENDPOINT_URL", endpoint)
            else:
                mp.delenv("AWS_ENDPOINT_URL", raising=False)
            options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
            s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(bucket)
            yield endpoint, options
    finally:
        proc.kill()
        proc.wait(timeout=30)


def s3_requests(monkeypatch) -> dict:
    """{operation: count} of every S3 request this process makes from now on (any s3fs client)."""
    from aiobotocore.client import AioBaseClient

    counts: dict = {}
    real = AioBaseClient._make_api_call

    async def counted(self, operation_name, api_params):
        counts[operation_name] = counts.get(operation_name, 0) + 1
        return await real(self, operation_name, api_params)

    monkeypatch.setattr(AioBaseClient, "_make_api_call", counted)
    return counts


@pytest.fixture(autouse=True, scope="module")
def fresh_object_store_clients():
    """Every test module starts and ends without object-store clients of another module's."""
    _forget_object_store_clients()
    yield
    _forget_object_store_clients()


@pytest.fixture(name="make_study")
def make_study_fixture():
    """``make_study(store, samples=..., shard_jets=..., seed=...)``: a valid small study."""
    return make_study


@pytest.fixture
def tiny_study(tmp_path):
    def _make(**kw):
        return make_study(tmp_path / "store.zarr", **kw)

    return _make


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def pythia_store(tmp_path_factory, ray_local):
    """A real tiny study: 300 QCD, 200 top and 100 gluino jets in 50-jet shards, generated on 2 Ray actors.

    The gluino shards go first: a 400 GeV gluino rarely makes one contained jet at 800-900 GeV,
    so one gluino shard costs as much as all the QCD and top shards together (about 37 s against
    16 s on 2 cores); last in the queue, they would leave one actor idle."""
    from jetscan.jobs.generate import generate

    store = tmp_path_factory.mktemp("physics") / "physics.zarr"
    study = make_study(
        store,
        shard_jets=50,
        seed=20260101,
        samples={
            "qcd": {"process": "qcd_dijet", "n_jets": 300},
            "top": {"process": "top_hadronic", "n_jets": 200},
            "gluino": {"process": "gluino_rpv", "n_jets": 100},
        },
    )
    generate(study, workers=2, samples=["gluino", "top", "qcd"])
    return study
