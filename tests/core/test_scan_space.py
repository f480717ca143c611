"""The scan: section: validated with the study, one clear ConfigError per problem, before any work."""

from __future__ import annotations

import pytest

from jetscan.core.errors import ConfigError
from jetscan.core.scan_space import (
    NOMINAL,
    ScanConfig,
    base_sample,
    cell_name,
    cell_study_data,
    variant_sample,
    variant_study_data,
)
from jetscan.core.study import Study

RUNS = {
    "pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 6}},
    "adv": {"model": "dense_ae", "samples": ["qcd"], "epochs": 1, "adversary": {"adv_lambda": 5e-4}},
}


def study(make_study, tmp_path, scan: dict, **kw) -> Study:
    return make_study(
        tmp_path / "s.zarr",
        samples={"qcd": {"process": "qcd_dijet", "n_jets": 1000}, "top": {"process": "top_hadronic", "n_jets": 100}},
        train={"runs": RUNS},
        scan=scan,
        **kw,
    )


def error(make_study, tmp_path, scan: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        study(make_study, tmp_path, scan)
    return str(exc.value)


def test_a_valid_scan_lists_its_axes(make_study, tmp_path):
    s = study(make_study, tmp_path, {"c": {
        "runs": ["adv"], "signal": "top", "fractions": [0, 0.01, 0.05], "repeats": 2,
        "params": {"adversary.lambda": [0, 1e-3]},
        "variations": {"vincia": {"shower": "vincia"}, "tune4": {"tune": 4}, "mpi": {"mpi": True},
                       "res_up": {"detector": {"energy_resolution_scale": 1.5, "track_efficiency_scale": 0.9}}},
        "matrix": True}})
    cfg = s.scan["c"]
    assert cfg.variants == [NOMINAL, "vincia", "tune4", "mpi", "res_up"]
    assert cfg.param_points() == [{"adversary.lambda": 0}, {"adversary.lambda": 1e-3}]


@pytest.mark.parametrize(
    ("scan", "words"),
    [
        ({"runs": ["pca"], "lambdas": [1]}, ["scan.c.lambdas: unknown key", "valid keys here", "fractions"]),
        ({"runs": ["nope"]}, ["scan.c.runs: no run named 'nope'", "pca, adv"]),
        ({"runs": ["pca"], "variations": {"dire": {"shower": "dire"}}}, ["cannot run shower 'dire'", "simple, vincia"]),
        ({"runs": ["pca"], "variations": {"h": {"shower": "herwig"}}}, ["cannot run shower 'herwig'"]),
        ({"runs": ["pca"], "variations": {"t": {"tune": 99}}}, ["Tune:pp takes 1..32", "got 99"]),
        ({"runs": ["pca"], "variations": {"d": {"detector": {"resolution": 2}}}}, ["detector.resolution", "energy_resolution_scale"]),
        ({"runs": ["pca"], "variations": {"d": {"detector": {"energy_resolution_scale": -1}}}}, ["positive number"]),
        ({"runs": ["pca"], "variations": {"e": {}}}, ["empty variation changes nothing"]),
        ({"runs": ["pca"], "variations": {"nominal": {"mpi": True}}}, ["not be 'nominal'"]),
        ({"runs": ["pca"], "fractions": [0, 0.1]}, ["add signal: <signal sample>"]),
        ({"runs": ["pca"], "signal": "qcd", "fractions": [0.1]}, ["'qcd' is background, not a signal"]),
        ({"runs": ["pca"], "signal": "top", "fractions": [1.5]}, ["in [0, 1)", "1.5"]),
        # 500 training QCD jets at 20 %: 125 tops needed, the training split holds 50 of 100
        ({"runs": ["pca"], "signal": "top", "fractions": [0.01, 0.2]},
         ["scan.c.fractions: 0.2 needs 125 'top' jets in the train split", "(500 background jets)", "holds 50 of its 100",
          "n_jets to at least 250"]),
        ({"runs": ["pca"], "params": {"hyper.nope": [1]}}, ["scan.c.params.hyper.nope", "no hyperparameter 'nope'"]),
        ({"runs": ["pca"], "params": {"adversary.lambda": [1e-3]}}, ["scan.c.params.adversary.lambda", "has no adversary"]),
        ({"runs": ["adv"], "params": {"epochs": [0]}}, ["scan.c.params.epochs", "value 0 is not valid"]),
        ({"runs": ["pca"], "matrix": True}, ["matrix: true needs variations"]),
    ],
)
def test_bad_scan_sections_are_one_clear_error(make_study, tmp_path, scan, words):
    msg = error(make_study, tmp_path, {"c": scan})
    for w in words:
        assert w in msg, msg


def test_a_test_only_signal_cannot_contaminate_and_its_own_splits_count(make_study, tmp_path):
    """The fraction check reads each sample's own splits: a signal that only tests cannot be
    mixed in at all, and one with a larger train share holds more jets than data.splits gives."""
    def with_top_splits(splits, fractions):
        return make_study(
            tmp_path / "s.zarr",
            samples={"qcd": {"process": "qcd_dijet", "n_jets": 1000},
                     "top": {"process": "top_hadronic", "n_jets": 100, "splits": splits}},
            train={"runs": RUNS}, scan={"c": {"runs": ["pca"], "signal": "top", "fractions": fractions}})

    with pytest.raises(ConfigError, match="samples.top.splits gives its train split no jets"):
        with_top_splits({"train": 0, "val": 0, "test": 1}, [0, 0.01])
    with_top_splits({"train": 0, "val": 0, "test": 1}, [0])  # uncontaminated cells only: fine
    # 500 training / 250 validation QCD jets at 10 %: 56 / 28 tops; data.splits would hold 50 of
    # the 100 in training, these splits 60 (and 30 in validation)
    with_top_splits({"train": 0.6, "val": 0.3, "test": 0.1}, [0.1])
    with pytest.raises(ConfigError, match="needs 56 'top' jets in the train split"):
        with_top_splits(None, [0.1])


def test_variant_study_renames_samples_and_varies_generation_and_detector(make_study, tmp_path):
    s = study(make_study, tmp_path, {"c": {"runs": ["pca"], "signal": "top", "fractions": [0.05], "variations": {
        "v": {"shower": "vincia", "tune": 4, "mpi": True, "detector": {"energy_resolution_scale": 2.0, "hcal_threshold_gev": 3.0}}}}})
    cfg = s.scan["c"]
    data = cell_study_data(s.model_dump(mode="json"), cfg, run="pca", params={}, fraction=0.05, train_variant="v", name="c-1")
    v = Study.from_dict(data)
    assert sorted(v.samples) == ["qcd__v", "top__v"]
    assert v.generation.shower == "vincia" and v.generation.mpi is True
    assert v.samples["qcd__v"].pythia_settings[-1] == "Tune:pp = 4"
    assert v.detector.ecal_resolution_abc == tuple(2 * x for x in s.detector.ecal_resolution_abc)
    assert v.detector.hcal_threshold_gev == 3.0 and v.detector.track_efficiency == s.detector.track_efficiency
    assert list(v.train.runs) == ["c-1"] and v.run("c-1").samples == ("qcd__v",) and v.run("c-1").contaminated
    assert v.data.contamination.signal == "top__v" and v.data.contamination.fraction == 0.05
    # a variant sample has its own generation settings (so its own hash), the base sample keeps its own
    assert v.generation_settings("qcd__v")["detector"] != s.generation_settings("qcd")["detector"]
    nominal = Study.from_dict(variant_study_data(s.model_dump(mode="json"), cfg, NOMINAL))
    assert nominal.generation_settings("qcd") == s.generation_settings("qcd")


def test_pythia_accepts_every_variation(make_study, tmp_path):
    pytest.importorskip("pythia8mc")
    from jetscan.jobs.generate import check_pythia_settings

    s = study(make_study, tmp_path, {"c": {"runs": ["pca"], "variations": {
        "vincia": {"shower": "vincia"}, "tune": {"tune": 7}, "mpi": {"mpi": True}}}})
    for v in s.scan["c"].variants:
        check_pythia_settings(Study.from_dict(variant_study_data(s.model_dump(mode="json"), s.scan["c"], v)))


def test_cells_differ_per_repeat_and_axis_but_not_per_call():
    a = cell_name("s", "pca", {"x": 1}, 0.1, 0, NOMINAL, "h")
    assert a == cell_name("s", "pca", {"x": 1}, 0.1, 0, NOMINAL, "h")
    others = {cell_name("s", "pca", {"x": 1}, 0.1, 1, NOMINAL, "h"), cell_name("s", "pca", {"x": 2}, 0.1, 0, NOMINAL, "h"),
              cell_name("s", "pca", {"x": 1}, 0.0, 0, NOMINAL, "h"), cell_name("s", "pca", {"x": 1}, 0.1, 0, "v", "h"),
              cell_name("s", "pca", {"x": 1}, 0.1, 0, NOMINAL, "other settings")}
    assert a not in others and len(others) == 5


def test_a_variant_samples_base_name_comes_back_whole():
    for sample in ("top", "top__had", "w__lep__x"):
        for variant in (NOMINAL, "x", "res_up"):
            assert base_sample(variant_sample(sample, variant), variant) == sample
    assert base_sample("top__had", NOMINAL) == "top__had"


def test_scan_config_alone_refuses_duplicates():
    with pytest.raises(ValueError, match="fractions repeat"):
        ScanConfig(runs=["a"], signal="t", fractions=[0.1, 0.1])
