"""jetscan's metrics recomputed with scikit-learn from a real evaluated run's stored per-jet scores.

A PCA run (Farina et al.'s d = 6) is trained on the session's real Pythia QCD jets and evaluated
against tops and gluinos; the per-jet scores and labels are read back from the results store
(``results/<run>/samples/<sample>/score``) and:

- AUC: ``sklearn.metrics.roc_auc_score`` (exact, ties counted half) against the stored ``auc``;
- E10, E100 (eps_S at eps_B = 0.1, 0.01) and 1/eps_B at eps_S = 0.3: jetscan interpolates
  linearly between the ROC points of distinct score thresholds (cut ``score >= t``), starting at
  (0, 0). ``sklearn.metrics.roc_curve(drop_intermediate=False)`` returns exactly those points
  (one per distinct threshold, with (0, 0) at threshold inf), so the same linear interpolation on
  sklearn's (fpr, tpr) -- ``np.interp(0.1, fpr, tpr)`` and ``1 / np.interp(0.3, tpr, fpr)`` -- is
  what is compared with the stored ``e10``, ``e100``, ``inv_eb_at_0p3``; not sklearn's stepwise
  reading of the curve;
- the bands: the same 10 disjoint subsamples (``jetscan.core.metrics.bands``' draw: seed 0, a
  permutation of the signal then of the background indices, ``array_split`` in 10), each metric
  from sklearn, their standard deviation (ddof 1) against the stored ``<metric>_std``.

All to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

TOL = 1e-6


@pytest.fixture(scope="module")
def evaluated(pythia_store, ray_local, tmp_path_factory):
    import shutil

    from jetscan.core.study import Study
    from jetscan.jobs.evaluate import evaluate
    from jetscan.jobs.preprocess import preprocess
    from jetscan.jobs.train import train

    preprocess(pythia_store, workers=2, representations=["heimel40"])
    data = pythia_store.model_dump(mode="json")
    # a copy of the session's jets: this run's results stay out of the shared store's results table
    data["store"] = str(tmp_path_factory.mktemp("sklearn") / "store.zarr")
    shutil.copytree(pythia_store.store, data["store"], ignore=shutil.ignore_patterns("_runs", "_results", "results"))
    data["train"] = {"runs": {"sk_pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 6}}}, "threads": 2}
    study = Study.from_dict(data)
    train(study, "sk_pca")
    rows = evaluate(study, ["sk_pca"])
    return study, rows


def _sk(scores, labels):
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
    eb = np.interp(0.3, tpr, fpr)
    return {
        "auc": sklearn_metrics.roc_auc_score(labels, scores),
        "e10": np.interp(0.1, fpr, tpr),
        "e100": np.interp(0.01, fpr, tpr),
        "inv_eb_at_0p3": np.inf if eb <= 0 else 1.0 / eb,
    }


def test_metrics_equal_sklearn_on_stored_scores(evaluated):
    from jetscan.storage.results import read_results, read_run

    study, _ = evaluated
    stored = read_run(study.store, "sk_pca")
    table = read_results(study.store).to_pylist()
    rows = {r["signal"]: r for r in table if r["run"] == "sk_pca"}
    assert sorted(rows) == ["gluino", "top"]
    b = stored["samples"]["qcd"]["score"]
    assert np.array_equal(stored["samples"]["qcd"]["label"], np.zeros(len(b)))  # QCD jets carry label 0
    for signal, row in rows.items():
        s = stored["samples"][signal]["score"]
        assert np.array_equal(stored["samples"][signal]["label"], np.ones(len(s)))
        scores = np.r_[b, s]
        labels = np.r_[np.zeros(len(b), np.int64), np.ones(len(s), np.int64)]
        assert (row["n_background"], row["n_signal"]) == (len(b), len(s))
        ref = _sk(scores, labels)
        for name, value in ref.items():
            assert row[name] == pytest.approx(value, abs=TOL, rel=TOL), (signal, name)
        # the stored ROC points are sklearn's curve (fewer than 2000 points: not down-sampled)
        fpr, tpr, _ = sklearn_metrics.roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(stored["roc"][signal]["eps_b"], fpr, atol=TOL)
        np.testing.assert_allclose(stored["roc"][signal]["eps_s"], tpr, atol=TOL)
        # a real separation, not a degenerate score: PCA finds tops and gluinos
        assert ref["auc"] > 0.6


def test_bands_equal_sklearn_over_the_same_subsamples(evaluated):
    from jetscan.storage.results import read_results, read_run

    study, _ = evaluated
    stored = read_run(study.store, "sk_pca")
    rows = {r["signal"]: r for r in read_results(study.store).to_pylist() if r["run"] == "sk_pca"}
    b = stored["samples"]["qcd"]["score"]
    for signal, row in rows.items():
        s = stored["samples"][signal]["score"]
        scores = np.r_[b, s]
        labels = np.r_[np.zeros(len(b), np.int64), np.ones(len(s), np.int64)]
        rng = np.random.default_rng(0)
        sig = rng.permutation(np.flatnonzero(labels == 1))
        bkg = rng.permutation(np.flatnonzero(labels == 0))
        per = [_sk(scores[np.r_[i, j]], labels[np.r_[i, j]]) for i, j in zip(np.array_split(sig, 10), np.array_split(bkg, 10))]
        for name in ("auc", "e10", "e100", "inv_eb_at_0p3"):
            values = np.array([p[name] for p in per])
            if not np.isfinite(values).all():  # a subsample with no background passing: jetscan stores NaN
                assert np.isnan(row[f"{name}_std"]), (signal, name)
                continue
            assert row[f"{name}_std"] == pytest.approx(np.std(values, ddof=1), abs=TOL, rel=TOL), (signal, name)
