"""Listings of an object store are never stale: runs another process commits after a reader's
first listing are seen by the next call (results.list_runs / read_results / rows_with_results
and remote.StoreReader on ``s3://``, a moto server on loopback).

s3fs keeps every folder listing it made (its dircache) for the life of the filesystem object,
and fsspec hands the same object to every call with the same options: without dropping those
listings a long-lived reader (``jetscan.connect``, a search driver) never sees new runs."""

from __future__ import annotations

import pytest

from jetscan.storage import blobs, remote
from jetscan.storage import results as res
from tests.storage.test_results import make_evaluation

BUCKET = "jetscan-listing"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from tests.conftest import moto_bucket

    with moto_bucket(BUCKET, endpoint_in_env=True) as (_, options):
        import s3fs

        # the other process's writes: a filesystem object of its own (no shared listing cache)
        writer = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        yield {"options": options, "writer": writer, "local": tmp_path_factory.mktemp("local") / "s.zarr"}


def _commit_elsewhere(s3, run: str) -> None:
    """Evaluate ``run`` into a local store and copy its arrays, then its parquet commit
    record, into the bucket with the writer's own filesystem (as another process would)."""
    ev = make_evaluation(run, n=300, history=False, images=False, config={"model": "pca", "run_settings_hash": f"hash-{run}"})
    local = str(s3["local"])
    res.write_run(local, ev, res.summarise(ev))
    dest = f"{BUCKET}/study.zarr"
    if not s3["writer"].exists(f"{dest}/zarr.json"):
        s3["writer"].put_file(f"{local}/zarr.json", f"{dest}/zarr.json")
    s3["writer"].put(f"{local}/results/{run}", f"{dest}/results/", recursive=True)
    s3["writer"].put_file(f"{local}/_results/{run}.parquet", f"{dest}/_results/{run}.parquet")


def test_runs_committed_after_the_first_listing_are_seen(s3):
    url = f"s3://{BUCKET}/study.zarr"
    _commit_elsewhere(s3, "first")
    reader = remote.StoreReader(url, storage_options=s3["options"])
    assert reader.run_names() == ["first"]
    assert reader.results().column("run").to_pylist() == ["first"]
    assert reader.runs().column("run").to_pylist() == ["first"]
    assert res.list_runs(url) == ["first"]
    assert res.read_results(url).column("run").to_pylist() == ["first"]
    assert res.rows_with_results(url, "second", "hash-second") is None

    _commit_elsewhere(s3, "second")
    assert reader.run_names() == ["first", "second"]
    assert reader.results().column("run").to_pylist() == ["first", "second"]
    assert reader.runs().column("run").to_pylist() == ["first", "second"]
    assert reader.roc("second", "top").num_rows > 2
    assert res.list_runs(url) == ["first", "second"]
    assert res.read_results(url).column("run").to_pylist() == ["first", "second"]
    rows = res.rows_with_results(url, "second", "hash-second")
    assert rows is not None and rows[0]["run"] == "second"
