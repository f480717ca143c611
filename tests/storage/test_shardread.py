"""Direct shard reads (jetscan.storage.shardread): the same values as zarr, or zarr's own errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from jetscan.storage import layout, shardread
from jetscan.storage.loader import JetStream

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

SAMPLES = ("qcd", "top", "gluino")


@pytest.fixture(scope="module")
def study(pythia_store, ray_local):
    from jetscan.jobs.preprocess import preprocess

    preprocess(pythia_store, workers=2)  # done already when test_loader ran first
    return pythia_store


def _sample_arrays(store: str, sample: str) -> dict[str, zarr.Array]:
    g = layout.open_sample(layout.open_root(store), sample)
    paths = [*layout.JET_FIELDS, *layout.CONSTITUENT_FIELDS]
    paths += [f"inputs/{name}" for name in g["inputs"].array_keys()]
    return {p: g[p] for p in paths}


def _slices(n: int, chunk: int, shard: int, rng) -> list[slice]:
    out = [slice(0, chunk), slice(chunk, 2 * chunk), slice(shard - 7, shard + 9), slice(n - 13, n), slice(0, n),
           slice(5, 5)]
    for _ in range(4):
        a = int(rng.integers(0, n))
        out.append(slice(a, int(rng.integers(a, n + 1))))
    return out


def test_every_sample_array_is_read_directly_and_equals_zarr(study):
    rng = np.random.default_rng(3)
    for sample in SAMPLES:
        arrays = _sample_arrays(str(study.store), sample)
        assert any(p.startswith("inputs/") for p in arrays)  # the blosc-compressed inputs are covered too
        for path, arr in arrays.items():
            direct = shardread.reader(arr)
            assert direct is not None, f"{sample}/{path}: no direct reader for a jetscan layout array"
            n = arr.shape[0]
            for sl in _slices(n, direct.chunk_rows, direct.shard_rows, rng):
                want, got = arr[sl], direct.read(sl)
                assert got.dtype == want.dtype and got.shape == want.shape, (sample, path, sl)
                np.testing.assert_array_equal(got, want, err_msg=f"{sample}/{path}[{sl}]")


def test_empty_chunks_and_missing_shards_read_as_the_fill_value(study, tmp_path):
    """zarr stores no chunk that holds only the fill value, and no shard file with no chunks."""
    images = layout.open_sample(layout.open_root(str(study.store)), "top")["inputs/heimel40"][:]
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    template = _sample_arrays(str(study.store), "top")["inputs/heimel40"]
    arr = root.create_array("x", shape=(5000, *images.shape[1:]), dtype="float32", chunks=(1000, *images.shape[1:]),
                            shards=(2000, *images.shape[1:]), compressors=template.compressors, fill_value=0.0)
    values = np.zeros(arr.shape, np.float32)
    values[:1000] = np.resize(images, (1000, *images.shape[1:]))  # shard 0: chunk 0 stored, chunk 1 empty
    values[4000:4100] = images[:100]  # shard 2 (the array's short last one): its chunk padded
    arr[:] = values
    assert not (tmp_path / "s.zarr" / "x" / "c" / "1").exists()  # shard 1: nothing stored
    direct = shardread.reader(arr)
    for sl in (slice(0, 5000), slice(900, 2100), slice(1000, 2000), slice(2500, 3000), slice(3990, 4200),
               slice(4000, 5000)):
        np.testing.assert_array_equal(direct.read(sl), values[sl])
    np.testing.assert_array_equal(direct.read(slice(0, 5000)), arr[:])


def _flip_a_byte(path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_chunk_is_refused_and_the_stream_raises_zarrs_error(study, tmp_path):
    """The direct reader checks the checksums; the loader then reads through zarr, so the error a
    user sees is zarr's, as before direct reads."""
    store = tmp_path / "damaged.zarr"
    shutil.copytree(study.store, store)
    damaged = study.model_copy(update={"store": str(store)})
    arr = _sample_arrays(str(store), "top")["inputs/heimel40"]
    direct = shardread.reader(arr)
    shard_file = store / "top" / "inputs" / "heimel40" / arr.metadata.encode_chunk_key((0, 0, 0, 0))
    _flip_a_byte(shard_file, 100)  # inside the first chunk's compressed bytes
    with pytest.raises(shardread.ShardReadError, match="checksum"):
        direct.read(slice(0, direct.chunk_rows))
    with pytest.raises(Exception) as from_zarr:
        arr[: direct.chunk_rows]
    stream = JetStream(damaged, ["top"], "heimel40", split="train", shuffle=False)
    with pytest.raises(type(from_zarr.value)) as from_stream:
        list(stream.iter_numpy(epoch=0))
    assert str(from_zarr.value) in str(from_stream.value)
    stream.close()

    _flip_a_byte(shard_file, shard_file.stat().st_size - 2)  # the shard index's checksum
    with pytest.raises(shardread.ShardReadError, match="index"):
        direct.read(slice(0, direct.chunk_rows))


def test_no_direct_reader_for_other_stores_or_layouts(tmp_path):
    mem = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    assert shardread.reader(mem.create_array("a", shape=(100,), dtype="float32", chunks=(10,), shards=(50,))) is None
    local = zarr.open_group(str(tmp_path / "l.zarr"), mode="w", zarr_format=3)
    unsharded = local.create_array("u", shape=(100,), dtype="float32", chunks=(10,))
    gzip = local.create_array("g", shape=(100,), dtype="float32", chunks=(10,), shards=(50,),
                              compressors=[zarr.codecs.GzipCodec()])
    across = local.create_array("c", shape=(100, 8), dtype="float32", chunks=(10, 4), shards=(50, 8))
    assert [shardread.reader(a) for a in (unsharded, gzip, across)] == [None, None, None]
    ours = local.create_array("o", shape=(100, 8), dtype="float32", chunks=(10, 8), shards=(50, 8),
                              compressors=[zarr.codecs.ZstdCodec(level=5), zarr.codecs.Crc32cCodec()])
    assert shardread.reader(ours) is not None
