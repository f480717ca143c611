"""The streaming loader: exactly-once per epoch across ranks, splits, contamination, on the fly."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.study import ContaminationConfig
from jetscan.storage.loader import JetStream, default_decode_workers, split_assignment

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


def test_a_sample_with_its_own_splits_is_read_only_where_they_say(study):
    """samples.top.splits: {test: 1}: every top jet is a test jet (none generated for nothing),
    while qcd keeps the study's splits."""
    from jetscan.core.study import SplitConfig

    own = study.model_copy(update={"samples": {**study.samples, "top": study.samples["top"].model_copy(
        update={"splits": SplitConfig(train=0.0, val=0.0, test=1.0)})}})
    count = lambda st, s, split: sum(len(b["label"]) for b in JetStream(st, [s], "highlevel", split=split).iter_numpy())  # noqa: E731
    assert [count(own, "top", s) for s in ("train", "val", "test")] == [0, 0, study.samples["top"].n_jets]
    assert [count(own, "qcd", s) for s in ("train", "val", "test")] == [count(study, "qcd", s) for s in ("train", "val", "test")]


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


@pytest.mark.parametrize("decode_process", [True, False])
def test_cached_epochs_equal_uncached_and_batches_do_not_alias_the_cache(study, decode_process):
    study = _with_data(study, decode_process=decode_process)
    cached = JetStream(study, ["top"], "heimel40", split="train", shuffle=False)
    uncached = JetStream(_with_data(study, cache_mb=0), ["top"], "heimel40", split="train", shuffle=False)
    first = [b["x"].copy() for b in cached.iter_numpy(epoch=0)]
    for b in cached.iter_numpy(epoch=1):
        b["x"][:] = -1.0  # a user scribbling on a batch
    again = [b["x"] for b in cached.iter_numpy(epoch=2)]
    plain = [b["x"] for b in uncached.iter_numpy(epoch=0)]
    assert cached.memory()["cache_bytes"] > 0 and uncached.memory()["cache_bytes"] == 0
    assert bool(cached._batch_process) == decode_process  # the cache above is the decode process's
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
        _with_data(base, decode_process=False, batches_ahead=0),
        _with_data(base, decode_process=False, batches_ahead=2, cache_mb=0),
        _with_data(base, decode_process=True, batches_ahead=2, decode_workers=1),
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
                assert mem["queue_bytes"] <= 3 * base.generation.shard_jets * stream.row_bytes  # at most the next epoch's first 3 chunks


def test_lockstep_batches_same_for_any_decode_workers(study):
    one, many, here = (
        JetStream(_with_data(study, virtual_ranks=2, decode_workers=w, shuffle_buffer_jets=32, cache_mb=c,
                             decode_process=p), ["qcd", "top"], "heimel40", lockstep=True, batch_size=16)
        for w, c, p in ((1, 1024, True), (4, 0, True), (2, 1024, False))
    )
    _assert_same_batches(one.iter_numpy(epoch=3), many.iter_numpy(epoch=3))
    _assert_same_batches(here.iter_numpy(epoch=3), many.iter_numpy(epoch=3))


def test_decoded_bytes_held_stay_within_cache_mb_on_data_larger_than_it(study):
    # ms37x4: 37 x 37 x 4 float32 = 21.9 kB a jet; all 600 jets (qcd, top, gluino) decoded = 13 MB
    small = _with_data(study, splits={"train": 1.0, "val": 0.0, "test": 0.0}, cache_mb=8, shuffle_buffer_jets=16,
                       prefetch_chunks=1, decode_workers=2, decode_process=False)  # looks inside: in this process
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
    # the cache took what the working set leaves: whole chunks (one per shard), at least one, within its budget
    assert 0 < mem["cache_bytes"] <= mem["cache_budget_bytes"] == limit - mem["working_set_bytes"]
    assert mem["cache_bytes"] == sum(sum(v.nbytes for v in c.values()) for c in stream._cache.values())
    assert mem["cache_chunks"] * study.generation.shard_jets * stream.row_bytes == mem["cache_bytes"]
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
    assert study.data.decode_workers is None  # unset: the usable CPUs less the training loop's, 1 to 4
    cpus = len(os.sched_getaffinity(0))
    assert default_decode_workers() == min(4, max(1, cpus - 1))
    two = _with_data(study, decode_workers=2)
    assert Study.from_dict(yaml.safe_load(two.to_yaml())).data.decode_workers == 2
    with pytest.raises(ValueError, match="decode_workers"):
        DataConfig(decode_workers=0)
    dumped = study.data.model_dump(mode="json")
    assert "decode_process" not in dumped and "batches_ahead" not in dumped
    off = _with_data(study, decode_process=False, batches_ahead=0)
    back = Study.from_dict(yaml.safe_load(off.to_yaml())).data
    assert back.decode_process is False and back.batches_ahead == 0
    assert Study.from_dict(yaml.safe_load(_with_data(study, decode_process=True).to_yaml())).data.decode_process is True
    with pytest.raises(ValueError, match="decode_process"):
        DataConfig(decode_process="sometimes")
    with pytest.raises(ValueError, match="batches_ahead"):
        DataConfig(batches_ahead=-1)


# ------------------------------------------------------------------- the decode process
def _process_stream(study, **kw):
    stream = JetStream(_with_data(study, decode_process=True, batches_ahead=2, shuffle_buffer_jets=32),
                       ["qcd", "top"], "heimel40", batch_size=16, **kw)
    return stream


def test_decode_process_auto_forks_only_for_a_stream_larger_than_its_cache_whose_reads_hold_the_gil(study, monkeypatch):
    """auto (the default): the child for a stream that decodes every epoch (its jets do not fit
    its cache) and reads through zarr or computes on the fly; none for one decoded once and served
    from the cache, or read directly from its shard files; the batches are the same."""
    want = list(JetStream(_with_data(study, decode_process=False, shuffle_buffer_jets=32), ["qcd", "top"],
                          "heimel40", batch_size=16).iter_numpy(epoch=0))
    fits = JetStream(_with_data(study, shuffle_buffer_jets=32), ["qcd", "top"], "heimel40", batch_size=16)
    assert fits.n_jets_total * fits.row_bytes <= fits._cache_budget
    _assert_same_batches(fits.iter_numpy(epoch=0), want)
    assert fits._batch_process is None
    direct = JetStream(_with_data(study, shuffle_buffer_jets=32, cache_mb=0), ["qcd", "top"], "heimel40",
                       batch_size=16)
    _assert_same_batches(direct.iter_numpy(epoch=0), want)
    assert direct._batch_process is None  # direct shard reads release the GIL: decoded in this process
    on_the_fly = JetStream(_with_data(study, shuffle_buffer_jets=32, cache_mb=0), ["qcd", "top"], "heimel40",
                           batch_size=16, on_the_fly=True)
    _assert_same_batches(on_the_fly.iter_numpy(epoch=0), want)
    assert on_the_fly._batch_process is not None and on_the_fly._batch_process._proc.is_alive()
    on_the_fly.close()
    from jetscan.storage import shardread

    monkeypatch.setattr(shardread, "reader", lambda arr: None)  # every chunk through zarr
    streamed = JetStream(_with_data(study, shuffle_buffer_jets=32, cache_mb=0), ["qcd", "top"], "heimel40",
                         batch_size=16)
    _assert_same_batches(streamed.iter_numpy(epoch=0), want)
    assert streamed._batch_process is not None and streamed._batch_process._proc.is_alive()
    streamed.close()


def test_decode_process_left_epochs_and_guessed_epochs_give_the_asked_batches(study):
    """Leaving an epoch early, asking for the same epoch again, or for another one than the child
    guessed (it makes epoch e + 1 ahead): each epoch's batches are still exactly the in-process ones."""
    here = JetStream(_with_data(study, decode_process=False, shuffle_buffer_jets=32), ["qcd", "top"], "heimel40",
                     batch_size=16)
    stream = _process_stream(study)
    want = {e: list(here.iter_numpy(epoch=e)) for e in (0, 1, 2, 7)}
    for _, _ in zip(range(3), stream.iter_numpy(epoch=0)):  # leave after 3 batches
        pass
    _assert_same_batches(stream.iter_numpy(epoch=0), want[0])
    _assert_same_batches(stream.iter_numpy(epoch=1), want[1])  # the guessed next epoch
    _assert_same_batches(stream.iter_numpy(epoch=1), want[1])  # the same one again
    _assert_same_batches(stream.iter_numpy(epoch=7), want[7])  # not the guess
    got = stream.iter_numpy(epoch=2)
    first = next(got)
    other = list(stream.iter_numpy(epoch=0))  # while epoch 2 is open: read in this process instead
    _assert_same_batches(other, want[0])
    _assert_same_batches([first, *got], want[2])
    assert stream._batch_process is not None and stream._batch_process._proc.is_alive()
    stream.close()


def test_decode_process_errors_reach_the_consumer_and_a_dead_one_is_named(study, monkeypatch):
    import os
    import signal

    def boom(self, unit):
        raise StorageError(f"chunk {unit.start} of sample {unit.sample} is unreadable")

    monkeypatch.setattr(JetStream, "_read_uncached", boom)  # the fork inherits it
    stream = _process_stream(study)
    with pytest.raises(StorageError, match=r"chunk \d+ of sample \d is unreadable"):
        list(stream.iter_numpy(epoch=0))
    monkeypatch.undo()
    stream = _process_stream(study)
    assert len(list(stream.iter_numpy(epoch=0))) > 0
    proc = stream._batch_process._proc
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=10)
    with pytest.raises(StorageError, match="decode process .* died .*data.decode_process: false"):
        list(stream.iter_numpy(epoch=1))


def test_decode_process_ends_with_close_or_with_its_consumer(study, tmp_path):
    import os
    import subprocess
    import sys
    import textwrap
    import time

    stream = _process_stream(study)
    n = sum(len(b["label"]) for b in stream.iter_numpy(epoch=0))
    assert n == stream.n_jets_total
    mem = stream.memory()
    assert mem["process_peak_rss_bytes"] > 0 and mem["buffer_bytes"] == 0
    proc = stream._batch_process
    assert proc._proc.is_alive()
    stream.close()
    assert not proc._proc.is_alive() and proc._ring.buf.closed
    # a consumer killed with SIGKILL (a killed training rank): its decode process leaves too,
    # releasing the consumer's stdout (a launcher waiting for it would wait forever)
    (tmp_path / "study.yaml").write_text(_with_data(study, decode_process=True).to_yaml())
    script = tmp_path / "consumer.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        from jetscan.core.study import Study
        from jetscan.storage.loader import JetStream
        study = Study.from_yaml({str(tmp_path / "study.yaml")!r})
        stream = JetStream(study, ["qcd", "top"], "heimel40", batch_size=16)
        next(iter(stream.iter_numpy(epoch=0)))
        print(stream._batch_process._proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    child = int(out.stdout.split()[0])
    assert time.perf_counter() - t0 < 30  # stdout closed: the child did not outlive its consumer for long
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f"/proc/{child}"):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}")


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux CPU affinity")
def test_decode_process_keeps_off_its_consumers_cpu(study):
    """The child runs on the consumer's allowed CPUs except the one the consumer ran on when it
    started (so a wake-up does not preempt the training loop); a consumer allowed one CPU shares it."""
    import os
    import time

    allowed = os.sched_getaffinity(0)
    try:
        if len(allowed) > 1:
            stream = _process_stream(study)
            batches = stream.iter_numpy(epoch=0)
            next(batches)  # the child moves once its first batch is out (until then the consumer only waits)
            deadline = time.time() + 10
            while os.sched_getaffinity(stream._batch_process._proc.pid) == allowed and time.time() < deadline:
                time.sleep(0.01)
            child = os.sched_getaffinity(stream._batch_process._proc.pid)
            assert child < allowed and len(child) == len(allowed) - 1
            batches.close()
            stream.close()
        one = {min(allowed)}
        os.sched_setaffinity(0, one)
        stream = _process_stream(study)
        assert len(list(stream.iter_numpy(epoch=0))) > 0
        assert os.sched_getaffinity(stream._batch_process._proc.pid) == one
        stream.close()
    finally:
        os.sched_setaffinity(0, allowed)


def test_batches_ahead_thread_keeps_order_stops_early_and_raises_where_it_failed(study, monkeypatch):
    """data.decode_process off: a thread assembles the batches ahead; leaving the loop early
    stops it (the stream's buffers come back), and a read error is raised at its place."""
    import threading

    base = _with_data(study, decode_process=False, shuffle_buffer_jets=32)
    want = list(JetStream(_with_data(base, batches_ahead=0), ["qcd", "top"], "heimel40", batch_size=16).iter_numpy(epoch=4))
    stream = JetStream(_with_data(base, batches_ahead=3), ["qcd", "top"], "heimel40", batch_size=16)
    _assert_same_batches(stream.iter_numpy(epoch=4), want)
    got = stream.iter_numpy(epoch=4)
    first = [next(got), next(got)]
    got.close()  # leave early
    _assert_same_batches(first, want[:2])
    assert not [t for t in threading.enumerate() if t.name == "jetstream-batches"]
    assert stream.memory()["buffer_bytes"] == 0
    calls = {"n": 0}
    real = JetStream._read_uncached

    def flaky(self, unit):
        calls["n"] += 1
        if calls["n"] == 3:
            raise StorageError("chunk unreadable")
        return real(self, unit)

    monkeypatch.setattr(JetStream, "_read_uncached", flaky)
    seen = []
    with pytest.raises(StorageError, match="chunk unreadable"):
        for b in JetStream(_with_data(base, batches_ahead=3, cache_mb=0), ["qcd", "top"], "heimel40",
                           batch_size=16).iter_numpy(epoch=4):
            seen.append(b)
    if seen:  # what came before the failing chunk is what it should be
        _assert_same_batches(seen, want[: len(seen)])


def test_max_jets_reads_a_seeded_subset_of_the_split_each_sample_its_share(study):
    """max_jets (a run's max_train_jets): that many jets of the split, drawn once from the seed,
    each sample in proportion to its split (150 qcd : 100 top -> 60 : 40 of 100), the same subset
    every epoch and across ranks; a contamination's signal count follows the subset."""
    whole = set(map(tuple, keys(JetStream(study, ["qcd", "top"], "heimel40", split="train").iter_numpy())))
    stream = JetStream(study, ["qcd", "top"], "heimel40", split="train", max_jets=100)
    assert (stream.n_split_jets, stream.n_kept_jets, stream.n_jets_total) == (250, 100, 100)
    e0, e1 = keys(stream.iter_numpy(epoch=0)), keys(stream.iter_numpy(epoch=1))
    assert len(np.unique(e0, axis=0)) == 100 and set(map(tuple, e0)) == set(map(tuple, e1)) < whole
    assert np.bincount(e0[:, 0]).tolist() == [60, 40]
    ranks = [keys(JetStream(study, ["qcd", "top"], "heimel40", split="train", max_jets=100, rank=r, world_size=2)
                  .iter_numpy(epoch=3)) for r in (0, 1)]
    assert set(map(tuple, np.concatenate(ranks))) == set(map(tuple, e0)) and sum(map(len, ranks)) == 100
    again = JetStream(study, ["qcd", "top"], "heimel40", split="train", max_jets=100)
    np.testing.assert_array_equal(keys(again.iter_numpy(epoch=0)), e0)
    assert JetStream(study, ["qcd"], "heimel40", split="train", max_jets=1000).n_jets_total == 150  # at most the split
    contaminated = study.model_copy(
        update={"data": study.data.model_copy(update={"contamination": ContaminationConfig(signal="top", fraction=0.2)})}
    )
    mixed = JetStream(contaminated, ["qcd"], "heimel40", split="train", contaminated=True, max_jets=80)
    labels = np.concatenate([b["label"] for b in mixed.iter_numpy()])
    assert (labels == 0).sum() == 80 and (labels == 1).sum() == mixed.n_signal_mixed == round(0.2 * 80 / 0.8)
    with pytest.raises(ConfigError, match="max_jets: at least 1 jet"):
        JetStream(study, ["qcd"], "heimel40", max_jets=0)
