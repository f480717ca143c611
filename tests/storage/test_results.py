"""Evaluation results: summary numbers against closed forms, the zarr/parquet round trip,
re-evaluation, schema unification across model kinds, and clear errors."""

from __future__ import annotations

import math
import os
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pytest

from jetscan.core.errors import StorageError
from jetscan.storage import results as res

PHI = NormalDist()
N = 20_000  # jets per sample; bands use 10 subsamples of 2000 + 2000


def make_evaluation(
    run="cnn_ae",
    *,
    shift=1.5,
    correlated=False,
    kind="autoencoder",
    n=N,
    seed=1,
    config=None,
    gluino_shift=None,
    history=True,
    images=True,
):
    """Background scores ~ N(0, 1), signal ~ N(shift, 1); background masses ~ exponential(60 GeV).

    ``correlated``: the background score also grows with the jet mass (a sculpting model).
    ``kind='tagger'``: scores are sigmoid(N(-1, 1)) and sigmoid(N(+1, 1)), i.e. p(signal).
    """
    rng = np.random.default_rng(seed)
    mass = rng.exponential(60.0, n).astype(np.float32)
    if kind == "tagger":
        b = 1.0 / (1.0 + np.exp(-rng.normal(-1.0, 1.0, n)))
        s = 1.0 / (1.0 + np.exp(-rng.normal(1.0, 1.0, n)))
    else:
        b = rng.normal(0.0, 1.0, n)
        if correlated:
            b = b + 0.03 * (mass - 60.0)
        s = rng.normal(shift, 1.0, n)
    samples = {
        "qcd": {"score": b, "mass": mass, "label": np.zeros(n, np.int64)},
        "top": {"score": s, "mass": rng.normal(175.0, 20.0, n).astype(np.float32), "label": np.ones(n, np.int64)},
    }
    signals = ["top"]
    if gluino_shift is not None:
        samples["gluino"] = {
            "score": rng.normal(gluino_shift, 1.0, n // 2),
            "mass": rng.normal(400.0, 40.0, n // 2).astype(np.float32),
            "label": np.ones(n // 2, np.int64),
        }
        signals.append("gluino")
    ev = {
        "run": run,
        "study": "quickstart",
        "config": config
        if config is not None
        else {
            "model": "cnn_ae",
            "representation": "heimel40",
            "bottleneck": 6,
            "adv_lambda": None,
            "lr": 1e-3,
            "epochs": 3,
            "contamination_signal": "top",
            "contamination_fraction": 0.0,
            "seed": 7,
            "early_stopping": True,
        },
        "kind": kind,
        "background": "qcd",
        "samples": samples,
        "signals": signals,
    }
    if history:
        ev["history"] = {"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.5], "val_loss": [3.2, 2.4, 1.9]}
    if images:
        ev["images"] = {
            name: {"input": rng.random((8, 8)).astype(np.float32), "reconstruction": rng.random((8, 8)).astype(np.float32)}
            for name in ("qcd", "top")
        }
    return ev


@pytest.fixture(scope="module")
def independent():
    ev = make_evaluation(gluino_shift=3.0)
    return ev, res.summarise(ev)


@pytest.fixture(scope="module")
def correlated():
    ev = make_evaluation("sculpting_ae", correlated=True)
    return ev, res.summarise(ev)


# --------------------------------------------------------------------------------------
# summary numbers


def test_one_row_per_signal_with_all_columns(independent):
    ev, rows = independent
    assert [r["signal"] for r in rows] == ["top", "gluino"]
    for row in rows:
        for col in res.RESULT_COLUMNS:
            assert col in row
        for key, value in ev["config"].items():
            assert row[key] == value
        assert row["run"] == "cnn_ae" and row["study"] == "quickstart" and row["background"] == "qcd"
        assert row["n_background"] == N
    assert rows[0]["n_signal"] == N and rows[1]["n_signal"] == N // 2


def test_metrics_match_closed_forms_within_bands(independent):
    _, rows = independent
    top = rows[0]
    shift = 1.5
    expected = {
        "auc": PHI.cdf(shift / math.sqrt(2.0)),
        # cut c with eps_B = 1 - Phi(c): eps_S = 1 - Phi(c - shift)
        "e10": 1.0 - PHI.cdf(PHI.inv_cdf(0.9) - shift),
        "e100": 1.0 - PHI.cdf(PHI.inv_cdf(0.99) - shift),
        "inv_eb_at_0p3": 1.0 / (1.0 - PHI.cdf(shift + PHI.inv_cdf(0.7))),
    }
    for name, value in expected.items():
        std = top[f"{name}_std"]
        assert 0 < std, name
        # the band is the spread of one tenth of the test set: the full set is sqrt(10) tighter
        assert abs(top[name] - value) < 3 * std, (name, top[name], value, std)
    assert abs(top["auc"] - expected["auc"]) < 0.01
    assert top["auc_std"] < 0.02
    assert top["e10_std"] < 0.05
    # a better-separated signal scores higher
    gluino = rows[1]
    assert abs(gluino["auc"] - PHI.cdf(3.0 / math.sqrt(2.0))) < 3 * gluino["auc_std"]
    assert gluino["auc"] > top["auc"] and gluino["e100"] > top["e100"]


def test_bands_depend_on_seed_and_subsample_count(independent):
    ev, rows = independent
    other = res.summarise(ev, n_subsamples=5, seed=3)
    assert other[0]["auc"] == rows[0]["auc"]  # central value: the whole test set
    assert other[0]["auc_std"] != rows[0]["auc_std"]
    assert math.isnan(res.summarise(ev, n_subsamples=1)[0]["auc_std"])


def test_accuracy_for_taggers_only(independent):
    _, rows = independent
    assert all(math.isnan(r["accuracy"]) for r in rows)
    tagger = res.summarise(make_evaluation("tagger", kind="tagger", config={"model": "macaluso_shih", "lr": 0.3}))
    # p > 0.5  <=>  logit > 0: each class is right with probability Phi(1)
    assert tagger[0]["accuracy"] == pytest.approx(PHI.cdf(1.0), abs=0.01)
    assert tagger[0]["auc"] == pytest.approx(PHI.cdf(2.0 / math.sqrt(2.0)), abs=0.01)


def test_sculpting_jsd_small_for_independent_large_for_correlated(independent, correlated):
    _, ind = independent
    _, cor = correlated
    names = ["jsd_50", "jsd_80", "jsd_95"]
    for name in names:
        assert 0 <= ind[0][name] < 0.01, (name, ind[0][name])
        assert ind[0][name] == ind[1][name]  # background-only quantity: same for every signal
    assert cor[0]["jsd_95"] > 0.1
    assert cor[0]["jsd_50"] < cor[0]["jsd_80"] < cor[0]["jsd_95"]
    for name in names:
        assert cor[0][name] > 5 * ind[0][name]


def test_config_clashes_and_bad_values():
    rows = res.summarise(make_evaluation(config={"run": "x", "signal": 3, "bottleneck": np.int64(6)}))
    assert rows[0]["run"] == "cnn_ae" and rows[0]["config_run"] == "x"
    assert rows[0]["signal"] == "top" and rows[0]["config_signal"] == 3
    assert rows[0]["bottleneck"] == 6 and type(rows[0]["bottleneck"]) is int
    assert res.summarise(make_evaluation(n=200, config={"window": (550, 650)}))[0]["window"] == "[550, 650]"
    with pytest.raises(StorageError, match=r"config\['jet'\].*str/int/float/bool/None"):
        res.summarise(make_evaluation(n=200, config={"jet": {"r": 0.8}}))


def test_bad_evaluations_are_refused():
    ev = make_evaluation(n=200)
    ev["samples"]["qcd"]["score"] = ev["samples"]["qcd"]["score"].copy()
    ev["samples"]["qcd"]["score"][3] = np.nan
    with pytest.raises(StorageError, match="1 NaN score"):
        res.summarise(ev)
    ev = make_evaluation(n=200)
    ev["signals"] = ["top", "wprime"]
    with pytest.raises(StorageError, match="wprime"):
        res.summarise(ev)
    ev = make_evaluation(n=200)
    ev["samples"]["top"]["mass"] = ev["samples"]["top"]["mass"][:10]
    with pytest.raises(StorageError, match="differ in length"):
        res.summarise(ev)
    with pytest.raises(StorageError, match="run name"):
        res.summarise(make_evaluation("../escape", n=200))
    with pytest.raises(StorageError, match="kind"):
        res.summarise({**make_evaluation(n=200), "kind": "gan"})


# --------------------------------------------------------------------------------------
# storage


def test_write_read_round_trip(tmp_path, independent):
    ev, rows = independent
    store = str(tmp_path / "store.zarr")
    res.write_run(store, ev, rows)
    assert os.path.exists(tmp_path / "store.zarr" / "_results" / "cnn_ae.parquet")
    assert not [p for p in os.listdir(tmp_path / "store.zarr" / "_results") if p.endswith(".tmp")]

    got = res.read_run(store, "cnn_ae")
    assert got["run"] == "cnn_ae" and got["kind"] == "autoencoder" and got["signals"] == ["top", "gluino"]
    assert got["config"] == ev["config"]
    for name, arrays in ev["samples"].items():
        np.testing.assert_array_equal(got["samples"][name]["score"], arrays["score"])
        np.testing.assert_array_equal(got["samples"][name]["mass"], arrays["mass"])
        np.testing.assert_array_equal(got["samples"][name]["label"], arrays["label"])
    for sig in ("top", "gluino"):
        eb, es = got["roc"][sig]["eps_b"], got["roc"][sig]["eps_s"]
        assert len(eb) <= res.MAX_ROC_POINTS and len(eb) == len(es) == len(got["roc"][sig]["threshold"])
        assert (eb[0], es[0]) == (0.0, 0.0) and (eb[-1], es[-1]) == (1.0, 1.0)
        assert np.all(np.diff(eb) >= 0) and np.all(np.diff(es) >= 0)
        # the downsampled curve keeps the AUC
        assert np.trapezoid(es, eb) == pytest.approx(rows[0 if sig == "top" else 1]["auc"], abs=2e-3)

    mass = got["mass"]
    m = ev["samples"]["qcd"]["mass"]
    np.testing.assert_array_equal(mass["bins"], res.MASS_BINS)
    assert mass["inclusive"].sum() == np.sum((m >= 0) & (m <= 400))
    assert sorted(mass["selections"]) == ["reject_50", "reject_80", "reject_95"]
    sel = mass["selections"]["reject_95"]
    assert sel["keep_fraction"] == 0.05 and sel["rejection"] == 0.95
    assert sel["jsd"] == pytest.approx(rows[0]["jsd_95"])
    assert sel["hist"].sum() == pytest.approx(0.05 * N, rel=0.05)

    mvs = got["mass_vs_score"]["qcd"]
    assert len(mvs["edges"]) == 11 and len(mvs["count"]) == 10
    assert mvs["count"].sum() == N and np.all(np.abs(mvs["count"] - N / 10) <= 1)
    assert np.all(np.abs(mvs["mean_mass"] - 60.0) < 6.0)  # independent: flat at the mean mass

    np.testing.assert_array_equal(got["history"]["val_loss"], [3.2, 2.4, 1.9])
    img = ev["images"]["top"]
    np.testing.assert_array_equal(got["images"]["top"]["input"], img["input"])
    np.testing.assert_allclose(got["images"]["top"]["error"], np.abs(img["input"] - img["reconstruction"]))

    assert len(got["rows"]) == 2
    for a, b in zip(got["rows"], rows):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(b[k], float) and math.isnan(b[k]):
                assert math.isnan(a[k])
            else:
                assert a[k] == b[k], k

    table = res.read_results(store)
    assert table.num_rows == 2
    assert table.column("signal").to_pylist() == ["gluino", "top"]  # sorted by run, signal
    assert set(ev["config"]) <= set(table.column_names)
    assert table.column_names[: len(res.RESULT_COLUMNS)] == res.RESULT_COLUMNS


def test_correlated_mean_mass_rises_with_score(tmp_path, correlated):
    ev, rows = correlated
    store = str(tmp_path / "s.zarr")
    res.write_run(store, ev, rows)
    mean_mass = res.read_run(store, "sculpting_ae")["mass_vs_score"]["qcd"]["mean_mass"]
    assert np.all(np.diff(mean_mass) > 0) and mean_mass[-1] > 2 * mean_mass[0]


def test_reevaluation_overwrites(tmp_path):
    store = str(tmp_path / "s.zarr")
    first = make_evaluation(n=2000, shift=0.5)
    first["history"]["optimizer"] = "adam"  # not a per-epoch series: skipped
    res.write_run(store, first, res.summarise(first))
    assert sorted(res.read_run(store, "cnn_ae")["history"]) == ["epoch", "train_loss", "val_loss"]
    second = make_evaluation(n=3000, shift=2.5, history=False, images=False, seed=2)
    res.write_run(store, second, res.summarise(second))
    table = res.read_results(store)
    assert table.num_rows == 1
    assert table.column("auc")[0].as_py() == pytest.approx(PHI.cdf(2.5 / math.sqrt(2)), abs=0.02)
    assert table.column("n_background")[0].as_py() == 3000
    got = res.read_run(store, "cnn_ae")
    assert len(got["samples"]["qcd"]["score"]) == 3000
    assert got["history"] is None and got["images"] is None  # nothing stale survives
    assert res.list_runs(store) == ["cnn_ae"]


def test_runs_with_different_config_keys_unify(tmp_path):
    store = str(tmp_path / "s.zarr")
    ae = make_evaluation("ae", n=1000, config={"model": "cnn_ae", "bottleneck": 6, "lr": 1, "tag": 5})
    tagger = make_evaluation(
        "tagger", n=1000, kind="tagger", config={"model": "macaluso_shih", "lr": 0.3, "optimizer": "adadelta", "tag": "v2"}
    )
    pca = make_evaluation("pca", n=1000, kind="pca", config={"model": "pca", "bottleneck": None})
    for ev in (tagger, ae, pca):
        res.write_run(store, ev, res.summarise(ev))
    table = res.read_results(store)
    assert table.column("run").to_pylist() == ["ae", "pca", "tagger"]
    assert {"bottleneck", "optimizer", "lr", "tag", "model"} <= set(table.column_names)
    rows = {r["run"]: r for r in table.to_pylist()}
    assert rows["ae"]["bottleneck"] == 6 and rows["tagger"]["bottleneck"] is None and rows["pca"]["bottleneck"] is None
    assert rows["ae"]["optimizer"] is None and rows["tagger"]["optimizer"] == "adadelta"
    assert table.schema.field("lr").type == pa.float64()  # int 1 and float 0.3 promote
    assert rows["ae"]["lr"] == 1.0 and rows["tagger"]["lr"] == 0.3
    assert rows["ae"]["tag"] == "5" and rows["tagger"]["tag"] == "v2"  # int vs str: strings
    assert math.isnan(rows["ae"]["accuracy"]) and 0.5 < rows["tagger"]["accuracy"] < 1


def test_missing_store_and_run_errors(tmp_path):
    missing = str(tmp_path / "nowhere.zarr")
    with pytest.raises(StorageError, match="no jetscan store"):
        res.read_results(missing)
    with pytest.raises(StorageError, match="no jetscan store"):
        res.read_run(missing, "cnn_ae")

    store = str(tmp_path / "s.zarr")
    os.makedirs(store)
    empty = res.read_results(store)
    assert empty.num_rows == 0 and empty.column_names == res.RESULT_COLUMNS

    ev = make_evaluation("ae_b6", n=500, history=False, images=False)
    res.write_run(store, ev, res.summarise(ev))
    with pytest.raises(StorageError, match=r"no results for run 'ae_b7'.*ae_b6"):
        res.read_run(store, "ae_b7")
    with pytest.raises(StorageError, match="run name"):
        res.read_run(store, "../ae_b6")
    with pytest.raises(StorageError, match="rows"):
        res.write_run(store, ev, [])


def test_bad_input_to_write_run_keeps_the_stored_run(tmp_path):
    """write_run validates everything before it touches the stored run: a refused
    re-evaluation leaves the earlier results listed, readable and unchanged."""
    store = str(tmp_path / "s.zarr")
    first = make_evaluation("ae_b6", n=500)
    res.write_run(store, first, res.summarise(first))
    before = res.read_results(store)

    bad_shapes = make_evaluation("ae_b6", n=600, seed=3)
    bad_shapes["images"]["top"]["reconstruction"] = np.zeros((4, 4), np.float32)
    lacking = make_evaluation("ae_b6", n=600, seed=3)
    del lacking["images"]["qcd"]["reconstruction"]
    not_numbers = make_evaluation("ae_b6", n=600, seed=3)
    not_numbers["images"]["qcd"]["input"] = [["a", "b"], ["c", "d"]]
    cases = [
        (bad_shapes, r"images of 'top': input \(8, 8\) and reconstruction \(4, 4\) differ"),
        (lacking, r"images of 'qcd' lack \['reconstruction'\]"),
        (not_numbers, r"images of 'qcd': input is not an array of numbers"),
    ]
    for ev, message in cases:
        rows = res.summarise(ev)
        with pytest.raises(StorageError, match=message):
            res.write_run(store, ev, rows)
        assert res.list_runs(store) == ["ae_b6"]
        assert res.read_results(store).to_pandas().equals(before.to_pandas())  # NaN == NaN here
        got = res.read_run(store, "ae_b6")
        assert len(got["samples"]["qcd"]["score"]) == 500
        np.testing.assert_array_equal(got["images"]["top"]["input"], first["images"]["top"]["input"])


# --------------------------------------------------------------------------------------
# object store


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory):
    """An empty bucket on a local S3 server (moto), with the environment's credentials."""
    from jetscan.storage import blobs
    from tests.conftest import moto_bucket

    with moto_bucket("jetscan-results") as (endpoint, _):
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        blobs.use_storage_options("s3://jetscan-results/s.zarr", {"client_kwargs": {"endpoint_url": endpoint}})
        yield {"fs": fs, "url": "s3://jetscan-results/s.zarr", "local": tmp_path_factory.mktemp("local") / "s.zarr"}


def test_reevaluation_on_s3_matches_local_and_writes_each_object_once(s3_store, monkeypatch):
    """A re-evaluated run on S3 leaves no object of the old run (history/, images/ gone), holds
    exactly the objects and bytes the same run has on a local disk, and the rewrite costs one PUT
    per object plus a few requests however many arrays the run has (zarr's per-array existence
    checks, listings and deletes made it ~600 requests for this run)."""
    from tests.conftest import s3_requests

    fs, url, local = s3_store["fs"], s3_store["url"], str(s3_store["local"])
    first = make_evaluation(n=2000, shift=0.5, gluino_shift=2.0)
    second = make_evaluation(n=3000, shift=2.5, history=False, images=False, seed=2)
    first_rows, second_rows = res.summarise(first), res.summarise(second)
    res.write_run(local, first, first_rows)
    res.write_run(local, second, second_rows)
    res.write_run(url, first, first_rows)
    requests = s3_requests(monkeypatch)
    res.write_run(url, second, second_rows)
    monkeypatch.undo()

    bucket_run = "jetscan-results/s.zarr/results/cnn_ae"
    fs.invalidate_cache()
    in_bucket = {k[len(bucket_run) + 1 :]: fs.cat_file(k) for k in fs.find(bucket_run)}
    on_disk = {
        os.path.relpath(os.path.join(d, f), f"{local}/results/cnn_ae"): open(os.path.join(d, f), "rb").read()
        for d, _, files in os.walk(f"{local}/results/cnn_ae")
        for f in files
    }
    assert sorted(in_bucket) == sorted(on_disk)
    assert not [k for k in in_bucket if k.startswith(("history/", "images/", "samples/gluino", "roc/gluino"))]
    assert [k for k in in_bucket if in_bucket[k] != on_disk[k]] == []
    assert fs.cat_file("jetscan-results/s.zarr/_results/cnn_ae.parquet") == open(f"{local}/_results/cnn_ae.parquet", "rb").read()

    assert requests.get("PutObject") == len(in_bucket) + 1  # the run's objects and the parquet commit
    others = sum(requests.values()) - requests["PutObject"]
    assert others <= 20, f"{others} requests besides the PUTs: {requests}"

    got, want = res.read_run(url, "cnn_ae"), res.read_run(local, "cnn_ae")
    assert got["signals"] == want["signals"] == ["top"] and got["history"] is None and got["images"] is None
    for group in ("samples", "roc", "mass_vs_score"):
        for name, arrays in want[group].items():
            for key, values in arrays.items():
                np.testing.assert_array_equal(got[group][name][key], values, err_msg=f"{group}/{name}/{key}")
    assert res.list_runs(url) == ["cnn_ae"] and res.read_results(url).num_rows == 1
