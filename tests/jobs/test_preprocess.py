"""The preprocess stage on real generated jets: images, LoLa inputs, resume, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core import representations as reps
from jetscan.core.errors import ConfigError, StorageError
from jetscan.jobs.preprocess import bytes_per_jet, plan, preprocess
from jetscan.storage import catalog, layout

pytestmark = [pytest.mark.slow, pytest.mark.pythia]


@pytest.fixture(scope="module")
def preprocessed(pythia_store, ray_local):
    rows, waiting = preprocess(pythia_store, workers=2)
    assert waiting == {}
    return pythia_store, rows


def inputs(study, sample, name):
    root = layout.open_root(study.store)
    return layout.open_sample(root, sample)[f"inputs/{name}"][:]


def test_one_row_per_shard_and_representation(preprocessed):
    study, rows = preprocessed
    n_shards = {"qcd": 6, "top": 4, "gluino": 2}  # 50 jets per shard
    committed = set()
    for sample, n in n_shards.items():
        shards = [(i, 50 * i, 50 * (i + 1), 50) for i in range(n)]
        jets = catalog.read_catalog(study.store, sample).to_pylist()
        assert [(r["shard"], r["start"], r["stop"], r["n_jets"]) for r in jets] == shards
        for name in study.preprocess.representations:
            table = catalog.read_catalog(study.store, sample, table=f"inputs/{name}").to_pylist()
            # one row per jet shard, over the same jets (whichever module of a full run preprocessed the store)
            assert [(r["shard"], r["start"], r["stop"], r["n_jets"]) for r in table] == shards
            assert {r["representation"] for r in table} == {name}
            committed |= {(r["sample"], r["representation"], r["shard"], r["start"], r["stop"], r["n_jets"]) for r in table}
    # the rows this call made, if another module did not preprocess the shared store first
    assert {(r["sample"], r["representation"], r["shard"], r["start"], r["stop"], r["n_jets"]) for r in rows} <= committed
    # a re-run finds nothing to do
    assert preprocess(study, use_ray=False) == ([], {})


def test_heimel_images_are_normalised_and_top_jets_spread_wider(preprocessed):
    study, _ = preprocessed
    top, qcd = inputs(study, "top", "heimel40"), inputs(study, "qcd", "heimel40")
    assert top.shape == (200, 1, 40, 40)
    np.testing.assert_allclose(top.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(qcd.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    lit_top = (top > 0).sum(axis=(1, 2, 3)).mean()
    assert 10 <= lit_top <= 150  # the paper quotes 10-70 lit pixels of 1600
    # centred on the pT-weighted centroid: the image's centre of mass is the middle pixel corner
    grid = np.arange(40) + 0.5
    cy = (top[:, 0].sum(axis=2) * grid).sum(axis=1)
    cx = (top[:, 0].sum(axis=1) * grid).sum(axis=1)
    assert np.median(np.abs(cy - 20.0)) < 1.0 and np.median(np.abs(cx - 20.0)) < 1.0
    # tops are three-prong: their pT is less concentrated in the brightest pixel than QCD's
    assert top.max(axis=(1, 2, 3)).mean() < qcd.max(axis=(1, 2, 3)).mean()


def test_lola_vectors_sit_in_the_jet_rest_frame(preprocessed):
    study, _ = preprocessed
    lola = inputs(study, "top", "lola40")
    hl = inputs(study, "top", "highlevel")
    assert lola.shape == (200, 40, 4)
    # 40 leading constituents carry most of a top jet: their summed 3-momentum is small
    p = lola[:, :, 1:].sum(axis=1)
    assert np.median(np.linalg.norm(p, axis=1) / hl[:, 0]) < 0.15
    # and their summed energy approaches the jet mass from below
    e_over_m = lola[:, :, 0].sum(axis=1) / hl[:, 0]
    assert np.median(e_over_m) == pytest.approx(1.0, abs=0.1)


def test_stored_equals_recomputed(preprocessed):
    study, _ = preprocessed
    root = layout.open_root(study.store)
    group = layout.open_sample(root, "qcd")
    for name in study.preprocess.representations:
        cfg = study.representation(name)
        # the second shard, as its worker computed it (float32 sums may round differently in another batch)
        lo, hi = study.generation.shard_jets, 2 * study.generation.shard_jets
        fields = layout.read_rows(group, reps.required_fields(cfg), lo, hi)
        np.testing.assert_array_equal(reps.compute(cfg, fields), group[f"inputs/{name}"][lo:hi])


def test_sparse_images_stay_small_on_disk(preprocessed):
    study, _ = preprocessed
    per_jet = bytes_per_jet(study.store, "top", "heimel40")
    assert 0 < per_jet < 1000  # 6400 bytes raw


def test_changed_recipe_is_refused(preprocessed, make_study):
    study, _ = preprocessed
    changed = study.model_copy(
        update={
            "preprocess": study.preprocess.model_validate(
                {"representations": {"heimel40": {"preset": "heimel40", "n_pixels": [20, 20]}}}
            )
        }
    )
    with pytest.raises(StorageError, match="already holds qcd/inputs/heimel40 made with other settings"):
        plan(changed)


def test_bad_inputs(preprocessed, tiny_study):
    study, _ = preprocessed
    with pytest.raises(ConfigError, match="no representation named 'jets40'"):
        plan(study, names=["jets40"])
    with pytest.raises(ConfigError, match="no sample named 'wprime'"):
        plan(study, samples=["wprime"])
    with pytest.raises(StorageError, match="no jetscan store"):
        plan(tiny_study())
    with pytest.raises(ConfigError, match="--workers: must be at least 1"):
        preprocess(study, workers=0)


def test_shards_not_generated_yet_wait(tiny_study):
    from jetscan.jobs.generate import generate

    study = tiny_study(samples={"qcd": {"process": "qcd_dijet", "n_jets": 40}}, shard_jets=20)
    generate(study, use_ray=False)
    # forget shard 1, as if its generation had not finished
    cat = f"{study.store}/_catalog/qcd/shard-000001.parquet"
    import os

    os.remove(cat)
    rows, waiting = preprocess(study, use_ray=False, representations=["heimel40"])
    assert waiting == {"qcd": [1]}
    assert [r["shard"] for r in rows] == [0]
