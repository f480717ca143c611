"""Reading jets back: a sample the store does not hold is one error naming the store, the
samples it holds and the fix."""

from __future__ import annotations

import pytest

from jetscan.core.errors import StorageError
from jetscan.storage import layout
from jetscan.storage.reader import read_jets


def test_a_missing_sample_names_the_store_its_samples_and_the_fix(tmp_path):
    store = tmp_path / "s.zarr"
    root = layout.open_root(str(store), mode="w")
    for name in ("qcd", "top"):
        layout.create_sample(root, name, n_jets=20, shard_jets=10, max_constituents=4, attrs={})
    (store / "_catalog" / "qcd").mkdir(parents=True)  # the catalog folder is not a sample
    with pytest.raises(StorageError) as err:
        read_jets(str(store), "gluino", ["jets/mass"])
    assert str(err.value) == (
        f"store '{store}' has no sample 'gluino' (its samples: qcd, top); "
        "generate it with 'jetscan generate STUDY.yaml --sample gluino', or check the name"
    )
    empty = layout.open_root(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(StorageError, match=r"has no sample 'qcd' \(its samples: none\)"):
        layout.open_sample(empty, "qcd")
