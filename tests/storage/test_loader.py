"""The streaming loader: exactly-once per epoch across ranks, splits, contamination, on the fly."""

from __future__ import annotations

import numpy as np
import pytest

from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.study import ContaminationConfig
from jetscan.storage.loader import JetStream, split_assignment

pytestmark = [pytest.mark.slow, pytest.mark.pythia]


@pytest.fixture(scope="module")
def study(pythia_store, ray_local):
    from jetscan.jobs.preprocess import preprocess

    preprocess(pythia_store, workers=2)
    return pythia_store


def keys(batches):
    return np.concatenate([np.stack([b["sample"], b["index"]], 1) for b in batches])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_jet_exactly_once_per_epoch_across_ranks(study, world_size):
    seen = []
    sizes = []
    for rank in range(world_size):
        stream = JetStream(study, ["qcd", "top"], "heimel40", split="train", rank=rank, world_size=world_size)
        batches = list(stream.iter_numpy(epoch=5))
        sizes.append(sum(len(b["label"]) for b in batches))
        assert sizes[-1] == stream.jets_this_rank(5)
        seen.append(keys(batches))
    allk = np.concatenate(seen)
    assert len(allk) == len(np.unique(allk, axis=0)) == stream.n_jets_total == 150 + 100
    # ranks are disjoint
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not set(map(tuple, seen[a])) & set(map(tuple, seen[b]))


def test_epochs_reshuffle_the_same_jets(study):
    stream = JetStream(study, ["qcd"], "heimel40")
    e0, e1 = keys(stream.iter_numpy(epoch=0)), keys(stream.iter_numpy(epoch=1))
    assert not np.array_equal(e0, e1)
    assert set(map(tuple, e0)) == set(map(tuple, e1))
    again = keys(JetStream(study, ["qcd"], "heimel40").iter_numpy(epoch=0))
    np.testing.assert_array_equal(e0, again)  # reproducible from the seed


def test_splits_partition_each_sample_exactly():
    a = split_assignment(1000, (0.6, 0.2, 0.2), 42, "qcd")
    assert np.bincount(a).tolist() == [600, 200, 200]
    b = split_assignment(1000, (0.6, 0.2, 0.2), 42, "top")
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, split_assignment(1000, (0.6, 0.2, 0.2), 42, "qcd"))


def test_train_val_test_are_disjoint(study):
    sets = [set(map(tuple, keys(JetStream(study, ["qcd"], "highlevel", split=s).iter_numpy()))) for s in ("train", "val", "test")]
    assert sum(map(len, sets)) == 300
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_contamination_fraction_is_exact(study):
    contaminated = study.model_copy(
        update={"data": study.data.model_copy(update={"contamination": ContaminationConfig(signal="top", fraction=0.2)})}
    )
    stream = JetStream(contaminated, ["qcd"], "heimel40", split="train", contaminated=True)
    labels = np.concatenate([b["label"] for b in stream.iter_numpy()])
    n_bkg = 150
    assert (labels == 1).sum() == round(0.2 * n_bkg / 0.8) == stream.n_signal_mixed
    assert (labels == 0).sum() == n_bkg
    again = JetStream(contaminated, ["qcd"], "heimel40", split="train", contaminated=True)
    np.testing.assert_array_equal(keys(again.iter_numpy()), keys(stream.iter_numpy()))
    too_much = contaminated.model_copy(
        update={"data": study.data.model_copy(update={"contamination": ContaminationConfig(signal="gluino", fraction=0.5)})}
    )
    with pytest.raises(ConfigError, match="needs 150 'gluino' jets in the train split but there are 50"):
        JetStream(too_much, ["qcd"], "heimel40", contaminated=True)


def test_on_the_fly_images_equal_stored(study):
    for name in ("heimel40", "ms37x4", "lola40"):
        a = JetStream(study, ["top"], name, split="test", shuffle=False)
        b = JetStream(study, ["top"], name, split="test", shuffle=False, on_the_fly=True)
        xa = np.concatenate([x["x"] for x in a.iter_numpy()])
        xb = np.concatenate([x["x"] for x in b.iter_numpy()])
        np.testing.assert_array_equal(xa, xb)


def test_torch_batches_and_dataloader_workers(study):
    torch = pytest.importorskip("torch")
    stream = JetStream(study, ["qcd", "top"], "heimel40", split="train")
    batch = next(iter(stream))
    assert batch["x"].dtype == torch.float32 and tuple(batch["x"].shape[1:]) == (1, 40, 40)
    assert set(batch) == {"x", "label", "mass", "weight", "sample", "index"}
    loader = torch.utils.data.DataLoader(JetStream(study, ["qcd", "top"], "heimel40"), batch_size=None, num_workers=2)
    got = np.concatenate([np.stack([b["sample"].numpy(), b["index"].numpy()], 1) for b in loader])
    assert len(got) == len(np.unique(got, axis=0)) == 250


def test_bad_inputs(study):
    with pytest.raises(ConfigError, match="no representation named 'jets40'"):
        JetStream(study, ["qcd"], "jets40")
    with pytest.raises(ConfigError, match="no sample named 'zprime'"):
        JetStream(study, ["zprime"], "heimel40")
    with pytest.raises(ConfigError, match="split: must be one of train, val, test"):
        JetStream(study, ["qcd"], "heimel40", split="training")
    with pytest.raises(ConfigError, match="need 0 <= rank < world_size"):
        JetStream(study, ["qcd"], "heimel40", rank=2, world_size=2)
    with pytest.raises(ConfigError, match="needs data.contamination"):
        JetStream(study, ["qcd"], "heimel40", contaminated=True)


def test_not_preprocessed_or_not_generated(tiny_study):
    from jetscan.jobs.generate import generate

    study = tiny_study(samples={"qcd": {"process": "qcd_dijet", "n_jets": 40}}, shard_jets=20)
    generate(study, use_ray=False)
    with pytest.raises(StorageError, match="not preprocessed for shard\\(s\\) \\[0, 1\\]; run 'jetscan preprocess'"):
        JetStream(study, ["qcd"], "heimel40")
    assert JetStream(study, ["qcd"], "heimel40", on_the_fly=True).n_jets_total == 20
    import os

    os.remove(f"{study.store}/_catalog/qcd/shard-000001.parquet")
    with pytest.raises(StorageError, match="shard\\(s\\) \\[1\\] not generated yet"):
        JetStream(study, ["qcd"], "heimel40", on_the_fly=True)


def test_cached_epochs_equal_uncached_and_batches_do_not_alias_the_cache(study):
    cached = JetStream(study, ["top"], "heimel40", split="train", shuffle=False)
    uncached_study = study.model_copy(update={"data": study.data.model_copy(update={"cache_mb": 0})})
    uncached = JetStream(uncached_study, ["top"], "heimel40", split="train", shuffle=False)
    first = [b["x"].copy() for b in cached.iter_numpy(epoch=0)]
    for b in cached.iter_numpy(epoch=1):
        b["x"][:] = -1.0  # a user scribbling on a batch
    again = [b["x"] for b in cached.iter_numpy(epoch=2)]
    plain = [b["x"] for b in uncached.iter_numpy(epoch=0)]
    assert cached._cache and not uncached._cache
    for a, b, c in zip(first, again, plain):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------ decode workers, bounded memory
def _with_data(study, **data):
    from jetscan.core.study import SplitConfig

    if "splits" in data:
        data["splits"] = SplitConfig(**data["splits"])
    return study.model_copy(update={"data": study.data.model_copy(update=data)})


def _reference_batches(stream, epoch):
    """The merge rule written plainly (a list of chunks, concatenated and permuted at each merge),
    as the loader had it before its slot buffer: the order every setting must keep."""
    rng = np.random.default_rng([stream.study.seed % 2**63, epoch, stream.rank, 0x5F1])
    target = stream.study.data.shuffle_buffer_jets if stream.shuffle else 0
    size = stream.batch_size

    def cat(parts):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def take(d, i):
        return {k: v[i] for k, v in d.items()}

    pool, pooled = [], 0
    for unit in stream._my_units(epoch):
        part = stream._read_uncached(unit)
        pool.append(part)
        pooled += len(part["label"])
        if pooled >= max(target, size):
            merged = cat(pool)
            if stream.shuffle:
                merged = take(merged, rng.permutation(pooled))
            n_out = ((pooled - target // 2) // size) * size
            for s in range(0, n_out, size):
                yield take(merged, slice(s, s + size))
            pool, pooled = [take(merged, slice(n_out, pooled))], pooled - n_out
    if pooled:
        merged = cat(pool)
        if stream.shuffle:
            merged = take(merged, rng.permutation(pooled))
        for s in range(0, pooled, size):
            if stream.drop_last and s + size > pooled:
                break
            yield take(merged, slice(s, s + size))


def _assert_same_batches(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize(
    "shuffle_buffer_jets, batch_size, drop_last, shuffle",
    [(64, 16, False, True), (40, 32, True, True), (4096, 16, False, True), (0, 24, False, True), (64, 16, False, False)],
)
def test_batches_same_for_any_decode_workers_and_cache_and_equal_the_merge_rule(
    study, shuffle_buffer_jets, batch_size, drop_last, shuffle
):
    base = _with_data(study, shuffle_buffer_jets=shuffle_buffer_jets, prefetch_chunks=3)
    variants = [
        _with_data(base, decode_workers=1),
        _with_data(base, decode_workers=3),
        _with_data(base, decode_workers=3, cache_mb=0),
        _with_data(base, decode_workers=2, prefetch_chunks=1, cache_mb=1),
    ]
    kw = dict(split="train", batch_size=batch_size, drop_last=drop_last, shuffle=shuffle)
    for rank, world_size in ((0, 1), (1, 2)):
        ref = JetStream(base, ["qcd", "top"], "heimel40", rank=rank, world_size=world_size, **kw)
        for epoch in (0, 1):
            want = list(_reference_batches(ref, epoch))
            for v in variants:
                stream = JetStream(v, ["qcd", "top"], "heimel40", rank=rank, world_size=world_size, **kw)
                _assert_same_batches(stream.iter_numpy(epoch=epoch), want)
                _assert_same_batches(stream.iter_numpy(epoch=epoch), want)  # again, from its cache
                mem = stream.memory()
                assert mem["buffer_bytes"] == 0  # released at the end of the epoch
                assert mem["queue_bytes"] <= 3 * 100 * stream.row_bytes  # at most the next epoch's first 3 chunks


def test_lockstep_batches_same_for_any_decode_workers(study):
    one, many = (
        JetStream(_with_data(study, virtual_ranks=2, decode_workers=w, shuffle_buffer_jets=32, cache_mb=c),
                  ["qcd", "top"], "heimel40", lockstep=True, batch_size=16)
        for w, c in ((1, 1024), (4, 0))
    )
    _assert_same_batches(one.iter_numpy(epoch=3), many.iter_numpy(epoch=3))


def test_decoded_bytes_held_stay_within_cache_mb_on_data_larger_than_it(study):
    # ms37x4: 37 x 37 x 4 float32 = 21.9 kB a jet; all 600 jets (qcd, top, gluino) decoded = 13 MB
    small = _with_data(study, splits={"train": 1.0, "val": 0.0, "test": 0.0}, cache_mb=8, shuffle_buffer_jets=16,
                       prefetch_chunks=1, decode_workers=2)
    stream = JetStream(small, ["qcd", "top", "gluino"], "ms37x4", batch_size=8)
    limit = 8 * 2**20
    assert stream.n_jets_total * stream.row_bytes > 1.5 * limit  # the data does not fit the bound
    seen = 0
    for epoch in range(2):
        for batch in stream.iter_numpy(epoch=epoch):
            seen += len(batch["label"])
            mem = stream.memory()
            assert mem["cache_bytes"] + mem["buffer_bytes"] + mem["queue_bytes"] <= limit
    assert seen == 2 * 600
    mem = stream.memory()
    assert mem["limit_bytes"] == limit and 0 < mem["working_set_bytes"] < limit
    # the cache took what the working set leaves: whole chunks of 100 jets, at least one, within its budget
    assert 0 < mem["cache_bytes"] <= mem["cache_budget_bytes"] == limit - mem["working_set_bytes"]
    assert mem["cache_bytes"] == sum(sum(v.nbytes for v in c.values()) for c in stream._cache.values())
    assert mem["cache_chunks"] * 100 * stream.row_bytes == mem["cache_bytes"]
    assert mem["cache_bytes"] < mem["peak_bytes"] <= limit
    # a working set larger than cache_mb: no cache at all, and the stream holds just the working set
    tiny = JetStream(_with_data(small, cache_mb=1), ["qcd", "top", "gluino"], "ms37x4", batch_size=8)
    _assert_same_batches(tiny.iter_numpy(epoch=1), stream.iter_numpy(epoch=1))
    mem = tiny.memory()
    assert mem["cache_bytes"] == 0 and mem["cache_budget_bytes"] == 0
    assert 0 < mem["peak_bytes"] <= mem["working_set_bytes"] == mem["limit_bytes"]


def test_decode_workers_is_validated_and_stays_out_of_dumps_at_its_default(tiny_study):
    import yaml

    from jetscan.core.study import DataConfig, Study

    study = tiny_study()
    assert "decode_workers" not in study.data.model_dump(mode="json")  # run hashes made before it stay valid
    two = _with_data(study, decode_workers=2)
    assert Study.from_dict(yaml.safe_load(two.to_yaml())).data.decode_workers == 2
    with pytest.raises(ValueError, match="decode_workers"):
        DataConfig(decode_workers=0)
