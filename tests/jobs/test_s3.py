"""Every stage on an object store: a tiny study's store on ``s3://`` served by moto on loopback.

generate + preprocess + train (PCA) + evaluate write into the bucket, the results are read
back from it, the secret key appears in no object, the store verifies clean, and a writer
that dies between its data and its catalog row (S3 has no rename) leaves no visible shard
while the re-run completes the store bit-identically.
"""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core.errors import ConfigError
from jetscan.core.study import Study
from jetscan.storage.s3local import start_s3_server

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

SECRET = "jetscan-test-secret-9f3c1d"
BUCKET = "jetscan-s3-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    proc, endpoint = start_s3_server()
    try:
        with pytest.MonkeyPatch.context() as mp:
            # credentials from the environment only (what a cloud node's role or a user's shell gives)
            mp.setenv("AWS_ACCESS_KEY_ID", "jetscan-test-key")
            mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.delenv("AWS_ENDPOINT_URL", raising=False)
            import s3fs

            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
            fs.mkdir(BUCKET)
            yield {"endpoint": endpoint, "fs": fs}
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _study(make_study, store, endpoint):
    return make_study(
        store,
        samples={"qcd": {"process": "qcd_dijet", "n_jets": 80}, "top": {"process": "top_hadronic", "n_jets": 40}},
        shard_jets=40,
        seed=31,
        storage_options={"client_kwargs": {"endpoint_url": endpoint}},
        preprocess={"representations": ["heimel40"]},
        train={"runs": {"pca": {"model": "pca", "samples": ["qcd"], "representation": "heimel40", "hyper": {"bottleneck": 4}}}, "threads": 1},
    )


@pytest.fixture(scope="module")
def s3_study(s3):
    """The whole tiny study run with its store in the bucket (in this process, no Ray)."""
    from jetscan.jobs.evaluate import evaluate
    from jetscan.jobs.generate import generate
    from jetscan.jobs.preprocess import preprocess
    from jetscan.jobs.train import train
    from tests.conftest import make_study

    study = _study(make_study, f"s3://{BUCKET}/tiny.zarr", s3["endpoint"])
    generate(study, use_ray=False)
    preprocess(study, use_ray=False)
    train(study, "pca")
    evaluate(study)
    return study


def test_all_stages_write_into_the_bucket_and_results_read_back(s3_study, s3):
    from jetscan.storage import catalog
    from jetscan.storage.reader import read_jets
    from jetscan.storage.results import read_results, read_run

    fs = s3["fs"]
    keys = fs.find(f"{BUCKET}/tiny.zarr")
    assert any(k.endswith("_catalog/qcd/shard-000001.parquet") for k in keys)
    assert any("/qcd/inputs/heimel40/" in k for k in keys)
    assert any(k.endswith("_runs/pca/checkpoint.pt") for k in keys)
    assert any(k.endswith("_results/pca.parquet") for k in keys)

    assert sum(catalog.read_catalog(s3_study.store, "qcd").column("n_jets").to_pylist()) == 80
    masses = read_jets(s3_study.store, "top", ["jets/mass"])["jets/mass"]
    assert len(masses) == 40 and 120 < np.median(masses) < 220  # top jets, read back from the bucket
    table = read_results(s3_study.store)
    assert table.num_rows == 1 and table.column("signal").to_pylist() == ["top"]
    assert 0.0 <= table.column("auc").to_pylist()[0] <= 1.0
    run = read_run(s3_study.store, "pca")
    assert np.isfinite(run["samples"]["top"]["score"]).all()


def test_no_object_holds_the_secret_and_store_verifies(s3_study, s3):
    from jetscan.storage import integrity

    fs = s3["fs"]
    keys = fs.find(f"{BUCKET}/tiny.zarr")
    assert len(keys) > 50
    for key in keys:
        assert SECRET.encode() not in fs.cat_file(key), key
    report = integrity.verify(s3_study.store)
    assert report.ok, report.problems
    assert report.shards_checked == (2 + 1) * 2  # qcd 2 shards, top 1; jets and heimel40 each
    # a study may not carry credentials, and the error does not echo them
    with pytest.raises(ConfigError) as err:
        Study.from_dict({**s3_study.model_dump(mode="json"), "storage_options": {"secret": SECRET}})
    assert SECRET not in str(err.value) and "environment" in str(err.value)


def test_writer_dying_before_its_catalog_put_leaves_no_shard(s3_study, s3, make_study, monkeypatch):
    """S3 has no rename: the catalog row, written last as one PUT, is the commit."""
    from jetscan.jobs import generate as gen
    from jetscan.storage import catalog, integrity
    from jetscan.storage.reader import read_jets

    study = _study(make_study, f"s3://{BUCKET}/killed.zarr", s3["endpoint"])
    study = study.model_copy(update={"samples": {"qcd": study.samples["qcd"]}})
    real_commit, commits = catalog.commit_shard, []

    def dying_commit(store, row, **kw):
        if commits:  # the second shard's data is in the bucket; the writer dies before its row
            raise SystemExit("killed")
        commits.append(row["shard"])
        real_commit(store, row, **kw)

    monkeypatch.setattr(catalog, "commit_shard", dying_commit)
    with pytest.raises(SystemExit):
        gen.generate(study, use_ray=False)
    monkeypatch.setattr(catalog, "commit_shard", real_commit)

    fs = s3["fs"]
    assert fs.find(f"{BUCKET}/killed.zarr/qcd/jets/pt/c/")  # data objects of both shards exist...
    assert catalog.committed_shards(study.store, "qcd") == {0}  # ...but only shard 0 is visible
    assert len(read_jets(study.store, "qcd", ["jets/pt"])["jets/pt"]) == 40
    assert integrity.verify(study.store).not_generated == {"qcd": [1]}
    assert [s.shard for s in gen.plan(study)] == [1]

    gen.generate(study, use_ray=False)  # the re-run completes it
    fields = ["jets/pt", "jets/mass", "constituents/pt", "constituents/kind"]
    again = read_jets(study.store, "qcd", fields)
    reference = read_jets(s3_study.store, "qcd", fields)
    for f in fields:
        np.testing.assert_array_equal(again[f], reference[f], err_msg=f)


def test_missing_driver_names_the_package():
    from jetscan.core.errors import StorageError
    from jetscan.storage import blobs

    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StorageError, match="pip install gcsfs"):
            blobs.store_fs("gs://bucket/study.zarr")
    with pytest.raises(StorageError, match="not a storage protocol"):
        blobs.store_fs("nosuchproto://bucket/study.zarr")


def test_create_sample_writes_its_arrays_in_one_batch_and_replaces_old_ones(s3, tmp_path, monkeypatch):
    """layout.create_sample on S3 stores the objects a local disk gets, byte for byte; created
    again over a sample with data it replaces the arrays whole (old chunks gone, inputs/ and the
    group's other attrs kept); a new sample costs one PUT per zarr.json and a few other requests
    (zarr's checks and listings per array made it ~255)."""
    from jetscan.storage import layout
    from tests.conftest import s3_requests

    options = {"client_kwargs": {"endpoint_url": s3["endpoint"]}}
    rng = np.random.default_rng(5)
    rows = {p: rng.random(50).astype(dt) for p, dt in layout.JET_FIELDS.items()}
    rows.update({p: (rng.random((50, 8)) * 3).astype(dt) for p, dt in layout.CONSTITUENT_FIELDS.items()})
    sizes = {"shard_jets": 50, "max_constituents": 8}

    def build(store, storage_options=None):
        root = layout.open_root(store, mode="a", storage_options=storage_options)
        group = layout.create_sample(root, "qcd", n_jets=100, attrs={"process": "qcd_dijet"}, **sizes)
        layout.write_rows(group, 0, rows)
        layout.create_inputs(group, "img", shape=(2, 2), shard_jets=50, attrs={})
        group = layout.create_sample(root, "qcd", n_jets=150, attrs={"n_jets": 150}, **sizes)  # over the data
        layout.write_rows(group, 100, rows)
        return root

    build(str(tmp_path / "local.zarr"))
    root = build(f"s3://{BUCKET}/layout.zarr", options)
    requests = s3_requests(monkeypatch)
    layout.create_sample(root, "top", n_jets=100, attrs={"process": "top_hadronic"}, **sizes)
    monkeypatch.undo()

    fs = s3["fs"]
    fs.invalidate_cache()
    prefix = f"{BUCKET}/layout.zarr/"
    in_bucket = {k[len(prefix) :]: fs.cat_file(k) for k in fs.find(prefix)}
    on_disk = {str(p.relative_to(tmp_path / "local.zarr")): p.read_bytes() for p in (tmp_path / "local.zarr").rglob("*") if p.is_file()}
    top = {k for k in in_bucket if k.startswith("top/")}
    assert sorted(set(in_bucket) - top) == sorted(on_disk)
    assert [k for k in on_disk if in_bucket[k] != on_disk[k]] == []
    assert "qcd/jets/pt/c/0" not in on_disk and "qcd/jets/pt/c/2" in on_disk and "qcd/inputs/img/zarr.json" in on_disk
    assert dict(layout.open_sample(root, "qcd").attrs) == {"process": "qcd_dijet", "n_jets": 150}

    assert len(top) == 1 + 3 + len(layout.JET_FIELDS) + len(layout.CONSTITUENT_FIELDS)  # groups and arrays, no chunks
    assert requests.get("PutObject", 0) <= len(top) + 1  # the group's zarr.json twice: made, then its attrs
    others = sum(requests.values()) - requests.get("PutObject", 0)
    assert others <= 12, f"{others} requests besides the PUTs: {requests}"
