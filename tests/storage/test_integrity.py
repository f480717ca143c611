"""Store integrity: jetscan verify finds damaged chunks, --repair makes them bit-identical again,
and a reader that meets a damaged chunk says where it is and how to mend it.

One real store (100 top jets in two shards, jets + two representations) is generated once
per module, in this process, and copied per test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jetscan.core.errors import ConfigError, StorageError
from jetscan.jobs import verify as verify_job
from jetscan.jobs.generate import generate
from jetscan.jobs.preprocess import preprocess
from jetscan.storage import catalog, integrity, layout

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

ALL = sorted(set(layout.JET_FIELDS) | set(layout.CONSTITUENT_FIELDS))
REPS = ["highlevel", "heimel40"]


def _study(make_study, store):
    return make_study(
        store, samples={"top": {"process": "top_hadronic", "n_jets": 100}}, shard_jets=50, seed=11,
        preprocess={"representations": REPS},
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from tests.conftest import make_study

    store = tmp_path_factory.mktemp("integrity") / "pristine.zarr"
    study = _study(make_study, store)
    generate(study, use_ray=False)
    preprocess(study, use_ray=False)
    return store


@pytest.fixture
def damaged_copy(pristine, tmp_path, make_study):
    store = tmp_path / "store.zarr"
    shutil.copytree(pristine, store)
    return _study(make_study, store)


def _all_arrays(store: Path) -> dict[str, np.ndarray]:
    root = layout.open_root(str(store))
    g = layout.open_sample(root, "top")
    out = {f: g[f][:] for f in ALL}
    out.update({f"inputs/{r}": g[f"inputs/{r}"][:] for r in REPS})
    return out


def _flip16(path: Path, offset: int = 2000) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(16)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in b))


def test_pristine_store_verifies_clean(pristine):
    report = integrity.verify(str(pristine))
    assert report.ok, report.problems
    assert report.shards_checked == 2 * (1 + len(REPS))
    assert report.not_generated == {}


def test_flipped_bytes_are_found_and_repair_is_bit_identical(damaged_copy, pristine):
    store = Path(damaged_copy.store)
    before = _all_arrays(pristine)
    chunk_file = store / "top" / "constituents" / "pt" / "c" / "1" / "0"
    _flip16(chunk_file)

    report = integrity.verify(str(store))
    assert not report.ok
    (p,) = report.problems
    assert (p.sample, p.table, p.array, p.shard, p.chunk, p.kind) == ("top", "jets", "constituents/pt", 1, 1, "corrupt")
    assert p.path == "top/constituents/pt/c/1/0"

    # a reader meeting the damage names store, array, chunk and shard, and the fix
    for rep in REPS:
        (store / "_catalog" / "top" / "inputs" / rep / "shard-000001.parquet").unlink()
    with pytest.raises(StorageError) as err:
        preprocess(damaged_copy, use_ray=False)
    msg = str(err.value)
    for part in (str(store), "top/constituents/pt", "chunk 1", "shard 1", "jetscan verify", "--repair"):
        assert part in msg, (part, msg)
    assert "InputSpec(" not in msg

    before_report, after = verify_job.repair(damaged_copy, use_ray=False)
    assert not before_report.ok and after.ok
    # only the damaged shard was made again
    assert catalog.read_catalog(str(store), "top").column("shard").to_pylist() == [0, 1]
    now = _all_arrays(store)
    for name, values in before.items():
        if name.startswith("inputs/"):
            continue  # their shard 1 rows are not committed yet (removed above): preprocess makes them
        np.testing.assert_array_equal(now[name], values, err_msg=name)
    assert chunk_file.read_bytes() == (pristine / "top" / "constituents" / "pt" / "c" / "1" / "0").read_bytes()
    preprocess(damaged_copy, use_ray=False)
    now = _all_arrays(store)
    for name, values in before.items():
        np.testing.assert_array_equal(now[name], values, err_msg=name)


def test_missing_file_bad_catalog_row_and_damaged_inputs(damaged_copy, pristine):
    store = Path(damaged_copy.store)
    (store / "top" / "jets" / "mass" / "c" / "0").unlink()
    (image_shard,) = [f for f in (store / "top" / "inputs" / "heimel40" / "c" / "1").rglob("*") if f.is_file()]
    _flip16(image_shard, offset=300)
    # a catalog row that disagrees with the layout
    row = catalog.read_catalog(str(store), "top").to_pylist()[1]
    catalog.commit_shard(str(store), {**row, "n_jets": 7})

    report = integrity.verify(str(store))
    kinds = {(p.table, p.shard, p.kind, p.array) for p in report.problems}
    assert ("jets", 0, "missing", "jets/mass") in kinds
    assert ("jets", 1, "inconsistent", None) in kinds
    assert any(t == "inputs/heimel40" and s == 1 and k == "corrupt" for t, s, k, _ in kinds)
    assert report.bad_shards() == {"top": {0, 1}}

    verify_job.repair(damaged_copy, use_ray=False)
    np.testing.assert_equal(_all_arrays(store), _all_arrays(pristine))
    assert integrity.verify(str(store)).ok


def test_cli_exit_codes_and_repair_needs_the_study(damaged_copy, tmp_path):
    store = damaged_copy.store
    _flip16(Path(store) / "top" / "jets" / "tau2" / "c" / "0", offset=20)
    cli = [sys.executable, "-m", "jetscan.jobs.cli", "verify", store]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "top/jets/tau2" in out.stdout and "shard 0" in out.stdout
    with pytest.raises(ConfigError, match="--study"):
        verify_job.verify_cmd(store, repair_=True)
    other = tmp_path / "other.yaml"
    other.write_text(_study_yaml(tmp_path / "elsewhere.zarr"))
    with pytest.raises(ConfigError, match="its store is"):
        verify_job.verify_cmd(store, repair_=True, study_path=other)


def _study_yaml(store) -> str:
    return (
        f"name: tiny\nstore: {store}\nseed: 11\nsamples:\n  top: {{process: top_hadronic, n_jets: 100}}\n"
    )


def test_ray_preprocess_reports_damage_without_retry_advice(damaged_copy, ray_local):
    store = Path(damaged_copy.store)
    _flip16(store / "top" / "constituents" / "eta" / "c" / "0" / "0")
    for rep in REPS:
        (store / "_catalog" / "top" / "inputs" / rep / "shard-000000.parquet").unlink()
    with pytest.raises(StorageError) as err:
        preprocess(damaged_copy, workers=1, representations=["heimel40"])
    msg = str(err.value)
    assert "top/constituents/eta" in msg and "shard 0" in msg and "jetscan verify" in msg
    assert "re-run the same command" not in msg and "InputSpec(" not in msg
