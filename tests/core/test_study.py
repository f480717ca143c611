"""The study file: valid studies load, every bad input gets one clear error naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jetscan.core.errors import ConfigError
from jetscan.core.study import Study, settings_hash

ROOT = Path(__file__).parents[2]


def base(**overrides):
    data = {
        "name": "t",
        "store": "/tmp/x.zarr",
        "seed": 1,
        "samples": {"qcd": {"process": "qcd_dijet", "n_jets": 10}},
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_file_validates(path):
    """The study files users copy from (presets, searches, scans) load: from_yaml runs every
    cross-check (runs, samples, search and scan sections) and raises ConfigError on the first."""
    study = Study.from_yaml(path)
    assert study.name == yaml.safe_load(path.read_text())["name"]


def test_quickstart_loads_and_store_is_relative_to_the_file():
    study = Study.from_yaml(ROOT / "studies" / "quickstart.yaml")
    assert set(study.samples) == {"qcd", "top", "gluino"}
    assert study.samples["top"].is_signal and not study.samples["qcd"].is_signal
    assert Path(study.store).is_absolute()
    assert Path(study.store).parent == (ROOT / "out").resolve()


def test_defaults_follow_the_seed_papers():
    study = Study.from_dict(base())
    assert study.jet.r == 0.8 and study.jet.algorithm == "antikt"
    assert study.generation.mpi is False and study.generation.hadronization is True
    assert study.detector.tracker_abs_eta_max == 2.5


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"jet": {"pt_window_gev": [650, 550]}}, "jet.pt_window_gev: lower edge 650.0 must be below upper edge 550.0"),
        ({"jet": {"r": -1}}, "jet.r"),
        ({"samples": {"qcd": {"process": "qcd", "n_jets": 10}}}, "unknown process 'qcd'; valid processes: dark_shower"),
        ({"samples": {"qcd": {"process": "qcd_dijet", "n_jets": 0}}}, "samples.qcd.n_jets"),
        ({"samples": {}}, "at least one sample"),
        ({"samples": {"1bad": {"process": "qcd_dijet", "n_jets": 1}}}, "sample name '1bad'"),
        ({"generation": {"shower": "dire"}}, "generation.shower: 'dire' is not in pythia8mc"),
        ({"generation": {"shard_jets": 1}}, "generation.shard_jets"),
        ({"seed": -3}, "seed"),
        ({"detector": {"track_efficiency": 1.5}}, "detector.track_efficiency"),
        ({"detector": {"muon_abs_eta_max": 3.0}}, "muon_abs_eta_max 3.0 must not exceed tracker_abs_eta_max 2.5"),
    ],
)
def test_bad_values_name_key_and_value(overrides, needle):
    with pytest.raises(ConfigError) as err:
        Study.from_dict(base(**overrides))
    assert needle in str(err.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        Study.from_dict(base(jet={"radius": 1.0}))
    msg = str(err.value)
    assert "jet.radius: unknown key" in msg
    assert "valid keys here: algorithm, r, pt_window_gev" in msg


def test_unknown_key_inside_a_sample():
    with pytest.raises(ConfigError) as err:
        Study.from_dict(base(samples={"qcd": {"process": "qcd_dijet", "n_jets": 5, "njets": 5}}))
    assert "samples.qcd.njets: unknown key; valid keys here: process, n_jets" in str(err.value)


def test_missing_required_key():
    data = base()
    del data["seed"]
    with pytest.raises(ConfigError, match="seed: required key is missing"):
        Study.from_dict(data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Study.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Study.from_yaml(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        Study.from_yaml(bad)


def test_unknown_sample_lookup_names_the_samples():
    study = Study.from_dict(base())
    with pytest.raises(ConfigError, match="no sample named 'top'.*samples: qcd"):
        study.sample("top")


def test_settings_hash_tracks_what_makes_the_jets():
    a = Study.from_dict(base())
    b = Study.from_dict(base(seed=2))
    c = Study.from_dict(base(name="renamed"))
    h = lambda s: settings_hash(s.generation_settings("qcd"))  # noqa: E731
    assert h(a) != h(b)
    assert h(a) == h(c)  # the study's name does not change the jets


def test_a_sample_of_its_own_splits_keeps_its_jets_and_changes_its_runs():
    """A signal that only tests (samples.top.splits: {test: 1}) is the same jets, so its
    generation hash stays; the runs evaluated on it get a new settings hash (other test jets)."""
    from jetscan.jobs.train import run_settings

    runs = {"ae": {"model": "dense_ae", "samples": ["qcd"]}}
    top = {"process": "top_hadronic", "n_jets": 10}
    plain = Study.from_dict(base(samples={"qcd": base()["samples"]["qcd"], "top": top}, train={"runs": runs}))
    own = Study.from_dict(base(samples={"qcd": base()["samples"]["qcd"],
                                        "top": {**top, "splits": {"train": 0, "val": 0, "test": 1}}}, train={"runs": runs}))
    assert own.split_fractions("top") == (0.0, 0.0, 1.0)
    assert own.split_fractions("qcd") == plain.split_fractions("qcd") == (0.6, 0.2, 0.2)
    assert settings_hash(own.generation_settings("top")) == settings_hash(plain.generation_settings("top"))
    assert settings_hash(run_settings(own, "ae")) != settings_hash(run_settings(plain, "ae"))
    assert "sample_splits" not in run_settings(plain, "ae")["data"]  # runs made before the option keep their hash


@pytest.mark.parametrize(
    "qcd_splits, contamination, needle",
    [
        ({"train": 0, "val": 0.5, "test": 0.5}, None, "samples.qcd.splits: train is 0, but run 'ae' trains on it"),
        (None, {"train": 0, "val": 0, "test": 1},
         "samples.top.splits: train is 0, but run 'ae' mixes it into its training and validation sets"),
        (None, {"train": 0.5, "val": 0, "test": 0.5}, "samples.top.splits: val is 0, but run 'ae' mixes it"),
    ],
)
def test_a_split_a_run_needs_cannot_be_empty(qcd_splits, contamination, needle):
    qcd = {**base()["samples"]["qcd"], **({"splits": qcd_splits} if qcd_splits else {})}
    top = {"process": "top_hadronic", "n_jets": 10, **({"splits": contamination} if contamination else {})}
    data = base(samples={"qcd": qcd, "top": top}, train={"runs": {"ae": {"model": "dense_ae", "samples": ["qcd"],
                                                                         "contaminated": True}}},
                data={"contamination": {"signal": "top", "fraction": 0.1}})
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        Study.from_dict(data)


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "studies" / "x.yaml"
    bad.parent.mkdir()
    bad.write_text("name: t\nstore: s.zarr\nseed: 1: 2\nsamples: {qcd: {process: qcd_dijet, n_jets: 10}}\n")
    with pytest.raises(ConfigError) as err:
        Study.from_yaml(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}, line 3, column 8: not valid YAML: mapping values are not allowed here"), msg
    assert "<unicode string>" not in msg
    # an unclosed bracket: the problem where the file ends, and where the bracket opened
    bad.write_text("name: t\nsamples: [qcd\n")
    with pytest.raises(ConfigError) as err:
        Study.from_yaml(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}, line 3, column 1: not valid YAML: expected ',' or ']'"), msg
    assert msg.endswith("(while parsing a flow sequence, line 2, column 10)"), msg


def test_a_run_naming_a_missing_sample_names_the_run_the_sample_and_the_samples(tmp_path):
    runs = {"dense": {"model": "dense_ae", "samples": ["qcd", "wjets"]}}
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(base(train={"runs": runs})))
    for load in (lambda: Study.from_dict(base(train={"runs": runs})), lambda: Study.from_yaml(study)):
        with pytest.raises(ConfigError) as err:
            load()
        msg = str(err.value)
        assert msg.endswith(
            "invalid study\n  train.runs.dense.samples: no sample named 'wjets' (run 'dense' trains on it); "
            "the study's samples: qcd; fix the name, or add the sample under samples:"
        ), msg
        assert "got" not in msg and "sqrt_s_gev" not in msg  # not the whole study as the offending value
    two = {"dense": {"model": "dense_ae", "samples": ["wjets", "zjets"]}}
    with pytest.raises(ConfigError, match=r"no samples named 'wjets', 'zjets' \(run 'dense' trains on them\)"):
        Study.from_dict(base(train={"runs": two}))
