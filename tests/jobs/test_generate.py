"""The generate stage end to end: real Pythia8 + FastJet on Ray into zarr.

Physics on the session store (``pythia_store``), then determinism across worker counts,
resume after a killed run and a killed actor, refusal of changed studies, bad inputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jetscan.core.errors import ConfigError, RunnerError, StorageError
from jetscan.jobs.generate import generate, plan
from jetscan.storage import catalog, layout
from jetscan.storage.reader import read_jets

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

ALL_FIELDS = sorted(set(layout.JET_FIELDS) | set(layout.CONSTITUENT_FIELDS))
TOP_MASS_GEV = 172.5


def jets(study, sample, *fields):
    return read_jets(study.store, sample, list(fields))


# ----------------------------------------------------------------------------- physics


def test_every_sample_is_complete(pythia_store):
    cat = catalog.read_catalog(pythia_store.store)
    for name, cfg in pythia_store.samples.items():
        rows = cat.filter(np.array(cat.column("sample").to_pylist()) == name)
        assert sum(rows.column("n_jets").to_pylist()) == cfg.n_jets
        assert set(rows.column("shard").to_pylist()) == set(range(len(layout.shard_ranges(cfg.n_jets, pythia_store.generation.shard_jets))))
        a = jets(pythia_store, name, "jets/pt", "jets/eta")
        assert ((a["jets/pt"] >= 800) & (a["jets/pt"] < 900)).all()
        assert (np.abs(a["jets/eta"]) < 1.0).all()


def test_top_jet_mass_peaks_at_the_top_mass(pythia_store):
    a = jets(pythia_store, "top", "jets/mass", "jets/sd_mass", "truth/matched", "truth/label")
    assert a["truth/matched"].all() and (a["truth/label"] == 1).all()
    counts, edges = np.histogram(a["jets/mass"], bins=np.arange(0, 400, 20))
    peak = 0.5 * (edges[counts.argmax()] + edges[counts.argmax() + 1])
    assert abs(peak - TOP_MASS_GEV) <= 25.0
    assert abs(np.median(a["jets/mass"]) - TOP_MASS_GEV) < 20.0
    # grooming removes soft wide-angle radiation, so it never adds mass
    assert (a["jets/sd_mass"] <= a["jets/mass"] + 1e-3).all()


def test_qcd_jets_are_mostly_light(pythia_store):
    a = jets(pythia_store, "qcd", "jets/mass", "truth/label")
    assert (a["truth/label"] == 0).all()
    assert np.median(a["jets/mass"]) < 120.0
    assert np.mean(a["jets/mass"] < 140.0) > 0.7


def test_gluino_jets_sit_near_400_gev(pythia_store):
    a = jets(pythia_store, "gluino", "jets/mass")
    assert abs(np.median(a["jets/mass"]) - 400.0) < 50.0


def test_tops_are_three_prong(pythia_store):
    def tau32(sample):
        a = jets(pythia_store, sample, "jets/tau2", "jets/tau3")
        return np.mean(a["jets/tau3"] / a["jets/tau2"])

    assert tau32("top") < tau32("qcd") - 0.05


def test_constituents_are_padded_pt_ordered_and_add_up(pythia_store):
    a = jets(pythia_store, "top", "constituents/pt", "constituents/eta", "constituents/phi", "constituents/e",
             "constituents/kind", "jets/n_constituents", "jets/pt")
    pt, kind = a["constituents/pt"], a["constituents/kind"]
    assert pt.shape == (200, 120) and pt.dtype == np.float32
    assert (np.diff(pt, axis=1) <= 0).all()
    n = np.minimum(a["jets/n_constituents"], 120)
    assert ((kind >= 0).sum(axis=1) == n).all()
    assert set(np.unique(kind)) <= {-1, 0, 1, 2}
    assert (kind == 0).any() and (kind == 1).any()  # tracks and towers
    px = (pt * np.cos(a["constituents/phi"])).sum(axis=1)
    py = (pt * np.sin(a["constituents/phi"])).sum(axis=1)
    full = a["jets/n_constituents"] <= 120
    np.testing.assert_allclose(np.hypot(px, py)[full], a["jets/pt"][full], rtol=2e-3)


def test_arrays_are_sharded_compressed_and_checksummed(pythia_store):
    root = layout.open_root(pythia_store.store)
    arr = layout.open_sample(root, "qcd")["constituents/pt"]
    names = [type(c).__name__ for c in arr.metadata.codecs]
    assert names == ["ShardingCodec"]
    inner = [type(c).__name__ for c in arr.metadata.codecs[0].codecs]
    assert inner[-2:] == ["ZstdCodec", "Crc32cCodec"]
    assert arr.shards == (pythia_store.generation.shard_jets, 120)
    # one file per array and shard, not one per chunk
    files = list(Path(pythia_store.store, "qcd", "constituents", "pt", "c").rglob("*"))
    assert len([f for f in files if f.is_file()]) == 300 // pythia_store.generation.shard_jets


# ----------------------------------------------------------------- determinism, resume


def qcd_study(tiny_study, **kw):
    return tiny_study(samples={"qcd": {"process": "qcd_dijet", "n_jets": 60}}, shard_jets=20, **kw)


def read_all(study):
    return {f: read_jets(study.store, "qcd", [f])[f] for f in ALL_FIELDS}


def test_same_arrays_whatever_the_number_of_workers(tmp_path, ray_local, make_study):
    one = make_study(tmp_path / "one.zarr", samples={"qcd": {"process": "qcd_dijet", "n_jets": 60}}, shard_jets=20)
    two = make_study(tmp_path / "two.zarr", samples={"qcd": {"process": "qcd_dijet", "n_jets": 60}}, shard_jets=20)
    generate(one, workers=1)
    generate(two, workers=2)
    a, b = read_all(one), read_all(two)
    for f in ALL_FIELDS:
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)
    # the in-process runner makes the same jets too
    local = make_study(tmp_path / "local.zarr", samples={"qcd": {"process": "qcd_dijet", "n_jets": 60}}, shard_jets=20)
    generate(local, use_ray=False)
    c = read_all(local)
    for f in ALL_FIELDS:
        np.testing.assert_array_equal(a[f], c[f], err_msg=f)
    # a re-run finds nothing to do
    assert generate(one, workers=2) == []


def _cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "jetscan.jobs.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def _write_study(path: Path, store: Path, n_jets=60) -> Path:
    path.write_text(
        f"""name: resume
store: {store}
seed: 7
sqrt_s_gev: 13000
jet: {{r: 0.8, pt_window_gev: [800, 900], abs_eta_max: 1.0, max_constituents: 120}}
generation: {{shard_jets: 20, batch_events: 100}}
samples:
  qcd: {{process: qcd_dijet, n_jets: {n_jets}}}
"""
    )
    return path


def test_resume_after_a_killed_run_and_a_torn_shard(tmp_path, ray_local, make_study):
    samples = {"qcd": {"process": "qcd_dijet", "n_jets": 120}}
    ref = make_study(tmp_path / "ref.zarr", samples=samples, shard_jets=20)
    generate(ref, use_ray=False)

    store = tmp_path / "killed.zarr"
    study_file = _write_study(tmp_path / "resume.yaml", store, n_jets=120)
    proc = _cli(["generate", str(study_file), "--workers", "1"])
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not catalog.committed_shards(str(store), "qcd"):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray workers, mid-run
    proc.wait()
    done = catalog.committed_shards(str(store), "qcd")
    assert 1 <= len(done) < 6, done
    before = catalog.read_catalog(str(store), "qcd").to_pylist()

    # a writer that died mid-shard: bytes in the arrays, no catalog row
    missing = sorted(set(range(6)) - done)[0]
    root = layout.open_root(str(store), mode="r+")
    grp = layout.open_sample(root, "qcd")
    grp["jets/mass"][missing * 20 : missing * 20 + 20] = -1.0
    assert -1.0 not in read_jets(str(store), "qcd", ["jets/mass"])["jets/mass"]  # not visible

    # the same settings as the YAML the killed run used, so resuming is allowed
    study = make_study(store, samples=samples, shard_jets=20)
    rows = generate(study, workers=2)
    assert sorted(r["shard"] for r in rows) == sorted(set(range(6)) - done)
    after = catalog.read_catalog(str(store), "qcd").to_pylist()
    kept = [r for r in after if r["shard"] in done]
    assert kept == before  # committed shards were not redone
    a, b = read_all(ref), read_all(study)
    for f in ALL_FIELDS:
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)


def _actor_pids(driver_pid: int, title: str) -> list[int]:
    """Pids of the processes under ``driver_pid`` (its Ray instance's workers) titled ``title``."""
    import psutil

    pids = []
    for child in psutil.Process(driver_pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith(title):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def test_a_killed_actor_is_replaced_and_its_shard_retried(tmp_path):
    store = tmp_path / "actor.zarr"
    study_file = _write_study(tmp_path / "actor.yaml", store)
    proc = _cli(["generate", str(study_file), "--workers", "1"])
    # find the Ray worker process hosting the ShardMaker actor and kill it mid-shard
    killed = False
    deadline = time.time() + 120
    while time.time() < deadline and not killed and proc.poll() is None:
        out = _actor_pids(proc.pid, "ray::ShardMaker")  # this run's, not another Ray's on the machine
        if out:
            time.sleep(1.0)
            for pid in out:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    killed = True
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
    assert killed, "never saw the actor process"
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert catalog.committed_shards(str(store), "qcd") == {0, 1, 2}


# ------------------------------------------------------------------------- bad inputs


def test_changed_study_is_refused_and_nothing_is_touched(tiny_study, ray_local):
    study = qcd_study(tiny_study)
    generate(study, use_ray=False)
    before = catalog.read_catalog(study.store).to_pylist()
    mass = read_jets(study.store, "qcd", ["jets/mass"])["jets/mass"]
    changed = qcd_study(tiny_study, seed=8)
    with pytest.raises(StorageError) as err:
        generate(changed, workers=1)
    msg = str(err.value)
    assert "already holds sample 'qcd' made with other settings" in msg
    assert "seed: 7 -> 8" in msg and "Nothing was changed" in msg
    more = tiny_study(samples={"qcd": {"process": "qcd_dijet", "n_jets": 80}}, shard_jets=20)
    with pytest.raises(StorageError, match=r"sample.n_jets: 60 -> 80"):
        plan(more)
    assert catalog.read_catalog(study.store).to_pylist() == before
    np.testing.assert_array_equal(read_jets(study.store, "qcd", ["jets/mass"])["jets/mass"], mass)
    # adding a new sample to the same store is fine
    added = tiny_study(
        samples={"qcd": {"process": "qcd_dijet", "n_jets": 60}, "top": {"process": "top_hadronic", "n_jets": 20}},
        shard_jets=20,
    )
    todo = plan(added)
    assert [(t.sample, t.shard) for t in todo] == [("top", 0)]


def test_bad_inputs_fail_before_any_work(tiny_study, tmp_path, make_study):
    study = qcd_study(tiny_study)
    with pytest.raises(ConfigError, match="--workers: must be at least 1"):
        generate(study, workers=0)
    with pytest.raises(ConfigError, match="no sample named 'top'"):
        generate(study, samples=["top"])
    bad = tiny_study(samples={"qcd": {"process": "qcd_dijet", "n_jets": 20, "pythia_settings": ["HardQCD:al = on"]}})
    with pytest.raises(ConfigError, match=r"samples.qcd.pythia_settings: Pythia does not accept 'HardQCD:al = on'"):
        generate(bad, use_ray=False)
    assert not Path(bad.store).exists()  # refused before the store was created
    t0 = time.time()
    with pytest.raises(RunnerError, match="cannot reach a Ray head"):
        from jetscan.cluster.ray import check_address

        check_address("127.0.0.1:1")
    assert time.time() - t0 < 10
    with pytest.raises(RunnerError, match="expected HOST:PORT"):
        check_address("nonsense")
    not_a_store = tmp_path / "notastore"
    not_a_store.mkdir()
    (not_a_store / "data.txt").write_text("precious")
    with pytest.raises(StorageError, match="exists and is not a jetscan store"):
        plan(make_study(not_a_store))
    assert (not_a_store / "data.txt").read_text() == "precious"


def test_an_impossible_selection_is_reported_not_looped_forever(tiny_study):
    study = tiny_study(
        samples={"qcd": {"process": "qcd_dijet", "n_jets": 10, "pthat_min_gev": 20.0, "pthat_max_gev": 40.0}},
        generation={"shard_jets": 10, "batch_events": 20},
    )
    with pytest.raises(RunnerError, match="no jet passed the selection in 1000 events"):
        generate(study, use_ray=False)


def test_cli_info_and_errors(pythia_store):
    out = subprocess.run(
        [sys.executable, "-m", "jetscan.jobs.cli", "info", pythia_store.store], capture_output=True, text=True, check=True
    ).stdout
    for name in ("qcd", "top", "gluino"):
        assert name in out
    assert "6/6" in out and "4/4" in out and "2/2" in out  # committed/planned shards of 50 jets
    bad = subprocess.run([sys.executable, "-m", "jetscan.jobs.cli", "info", "/nonexistent/x.zarr"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "no jetscan store at '/nonexistent/x.zarr'" in bad.stderr


def test_a_reused_pythia_instance_makes_the_same_shard_as_a_fresh_one(tiny_study):
    from jetscan.jobs.generate import ShardMaker, ShardSpec

    study = qcd_study(tiny_study)
    spec = ShardSpec("qcd", 1, 20, 40, 123)
    fresh, _ = ShardMaker(study).make_arrays(spec)
    maker = ShardMaker(study)
    maker.make_arrays(ShardSpec("qcd", 0, 0, 20, 999))  # another shard first
    reused, _ = maker.make_arrays(spec)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], reused[key], err_msg=key)


@pytest.mark.pythia
def test_workers_share_one_slha_file_and_leave_no_directory_each(make_study, tmp_path, monkeypatch):
    """Each worker used to make its own temporary SLHA directory, which a killed Ray actor
    never removed (205 of them piled up in /tmp over a few generations)."""
    import tempfile

    from jetscan.jobs.generate import ShardMaker

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    study = make_study(tmp_path / "s.zarr", samples={"gluino": {"process": "gluino_rpv", "n_jets": 10}})
    makers = [ShardMaker(study) for _ in range(2)]  # two live workers (a killed actor never cleans up)
    for seed, maker in enumerate(makers):
        maker._pythia_for("gluino", seed + 1)
    (folder,) = scratch.iterdir()
    (slha,) = folder.iterdir()
    assert folder.name == f"jetscan-slha-{os.getuid()}" and slha.suffix == ".slha"
    assert "1000021" in slha.read_text()  # the gluino's mass block entry
