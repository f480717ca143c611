"""Bad client options of a scan are one ConfigError before any work (no Pythia, no Dask)."""

from __future__ import annotations

import pytest
import yaml

from jetscan.core.errors import ConfigError
from jetscan.jobs import scan as scan_module

SAMPLES = {"qcd": {"process": "qcd_dijet", "n_jets": 100}, "top": {"process": "top_hadronic", "n_jets": 100}}
RUNS = {"pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 4}}}
SCANS = {"s": {"runs": ["pca"], "variations": {"res_up": {"detector": {"energy_resolution_scale": 2.0}}}}}


@pytest.fixture
def study(make_study, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the scan started work (planning / preparing samples) before checking its options")

    monkeypatch.setattr(scan_module, "plan_scan", no_work)
    monkeypatch.setattr(scan_module, "_prepare_samples", no_work)
    return make_study(tmp_path / "s.zarr", samples=SAMPLES, train={"runs": RUNS}, scan=SCANS)


@pytest.mark.parametrize("options, message", [
    ({"workers": 0}, "--workers: must be at least 1 \\(got 0\\)"),
    ({"workers": -2}, "--workers: must be at least 1 \\(got -2\\)"),
    ({"cluster": "pbs"}, "--cluster: unknown cluster 'pbs'; clusters: slurm"),
    ({"cluster": "slurm", "scheduler": "tcp://127.0.0.1:8786"}, "--scheduler and --cluster are exclusive"),
    ({"worker_timeout_s": -1.0}, "--worker-timeout: must be a positive number of seconds"),
])
def test_bad_client_options_are_refused_before_any_work(study, options, message):
    with pytest.raises(ConfigError, match=message):
        scan_module.scan(study, "s", **options)


def test_the_command_with_no_workers_says_so(study, tmp_path):
    from typer.testing import CliRunner

    from jetscan.jobs.cli import app

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study.model_dump(mode="json")))
    r = CliRunner().invoke(app, ["scan", str(path), "s", "--workers", "0"])
    assert r.exit_code != 0
    assert isinstance(r.exception, ConfigError) and "--workers: must be at least 1" in str(r.exception), r.exception
