"""Quiet logs: a user of ``jetscan generate`` sees progress, results and real warnings only.

Two notices used to come with every run: FastJet's banner, printed by the C++ library on
the first clustering of every process (so once per Ray worker), and Ray's "Token
authentication is enabled" notice from every new local Ray instance.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

BANNER = ("FastJet release", "Please cite EPJC72", "#-----")
TOKEN_NOTICE = "Token authentication is enabled"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_AUTH_MODE", None)  # set, it would hide Ray's notice and the test could not fail
    env.pop("RAY_ADDRESS", None)
    env["COLUMNS"] = "200"
    return env


def test_cli_generate_prints_no_banner_and_no_token_notice(tmp_path):
    study = tmp_path / "quiet.yaml"
    study.write_text(
        f"""name: quiet
store: {tmp_path / 'quiet.zarr'}
seed: 7
sqrt_s_gev: 13000
jet: {{r: 0.8, pt_window_gev: [800, 900], abs_eta_max: 1.0, max_constituents: 120}}
generation: {{shard_jets: 10, batch_events: 100}}
samples:
  qcd: {{process: qcd_dijet, n_jets: 10}}
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "jetscan.jobs.cli", "generate", str(study), "--workers", "1"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "committed 1 new shard(s)" in out  # the results are still there
    for text in BANNER:
        assert text not in out, out
    assert TOKEN_NOTICE not in out, out
    assert "Started a local Ray instance" not in out, out


def test_in_process_clustering_prints_no_banner(tmp_path):
    """The same for clustering in the driver (``--no-ray``, notebooks): stdout at the fd level."""
    code = """
import awkward as ak
from jetscan.core.jets import cluster_fat_jets
from jetscan.core.study import JetConfig
ev = ak.Array([[{"px": 850.0, "py": 0.0, "pz": 10.0, "e": 851.0, "pt": 850.0, "eta": 0.01, "phi": 0.0, "kind": 0},
                {"px": 0.0, "py": 30.0, "pz": 5.0, "e": 31.0, "pt": 30.0, "eta": 0.17, "phi": 1.57, "kind": 1}]])
jets = cluster_fat_jets(ev, JetConfig(r=0.8, pt_window_gev=(800.0, 900.0), abs_eta_max=1.0))
print("jets", len(jets["pt"]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "jets 1" in proc.stdout  # it clustered
    for text in BANNER:
        assert text not in proc.stdout + proc.stderr, proc.stdout


def test_only_rays_default_notice_is_dropped(caplog):
    """The filter drops exactly Ray's token-auth notice, only inside ray.init, and lets every
    other record of that logger through (a cluster with auth *disabled* is a real warning)."""
    from jetscan.cluster.ray import _TOKEN_AUTH_LOGGER, _without_token_auth_notice

    logger = logging.getLogger(_TOKEN_AUTH_LOGGER)
    real = "Token authentication is disabled for this Ray cluster. Anyone with network access ..."
    with caplog.at_level(logging.WARNING, logger=_TOKEN_AUTH_LOGGER):
        with _without_token_auth_notice():
            logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
            logger.warning(real)
        logger.warning("Token authentication is enabled for this Ray cluster (outside ray.init)")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [real, "Token authentication is enabled for this Ray cluster (outside ray.init)"]
    assert not logger.filters  # nothing left behind
