"""A streaming PyTorch dataset over jets in a zarr store.

``JetStream`` yields ready batches (dicts of tensors: ``x``, ``label``, ``mass``, ``weight``,
``sample``) from one or more samples and one representation, without holding the samples
in memory:

- **whole chunks**: the unit of reading is one inner zarr chunk (up to 1000 jets), read
  with one request per array; random single-jet reads are ~50x slower;
- **splits**: each sample's jets are split train / val / test by a seeded permutation of
  the jet index (``data.splits``), so the split of a jet never depends on how it is read;
- **contamination**: with ``contaminated=True`` the batches mix signal jets into the
  background samples so that n_signal / (n_signal + n_background) equals
  ``data.contamination.fraction`` (rounded to a whole jet), the signal jets drawn with the
  study's seed from the signal sample's jets of the same split;
- **data parallel**: chunks are shuffled per epoch with (seed, epoch) and dealt to ranks
  round-robin, so (rank, world_size) workers see disjoint jets and, together, every jet
  of the split exactly once per epoch (DataLoader workers subdivide a rank's chunks the same way);
- **virtual ranks** (``lockstep=True``, as ``jetscan train`` reads; V = ``data.virtual_ranks``,
  or the world size when that is 1): the epoch is read as
  V disjoint streams (chunks dealt round-robin over V, each stream with its own shuffle
  buffer seeded with (seed, epoch, v)); global batch k is the concatenation over v of
  sub-batch (v, k), each of ``batch_size / V`` jets, and the epoch stops at the number of full
  sub-batches that every stream has. Rank r of W serves streams r*V/W .. (r+1)*V/W - 1 and
  yields their concatenation, so the union over ranks of step k is the same global batch for
  any W dividing V (1 worker with V=2 takes exactly the steps of 2 workers), and every rank
  takes the same number of steps (computed from the chunk assignment, no communication).
  Without ``lockstep`` (the default: evaluation, direct use) each rank reads its own chunks
  in full batches plus a last partial one, as before;
- **shuffling**: chunk order per epoch, then a bounded buffer of ``shuffle_buffer_jets``
  jets mixed across chunks;
- **decode workers**: ``data.decode_workers`` threads (default :func:`default_decode_workers`:
  the usable CPUs less one, 1 to 4) read and decode the next
  ``data.prefetch_chunks`` chunks while the current ones are consumed (on a local disk read
  straight from the shard files, :mod:`jetscan.storage.shardread`, whose file reads, checksums
  and blosc / zstd decompression release the GIL; elsewhere through zarr). Results are taken in chunk order, so
  the batches are the same for any number of workers;
- **decode process**: with ``data.decode_process`` (``auto``, the default, where the platform
  forks: for a stream whose decoded jets do not fit its cache, so that every epoch decodes, and
  whose reads hold the GIL: computed on the fly, or arrays that zarr must read; a stream that
  fits is decoded once in the consumer's process and served from the cache, and one read
  directly from its shard files decodes in threads of the consumer's process) all
  of the above runs in one child process forked from the consumer and kept for the stream's
  life (its cache and read-ahead survive between epochs); the consumer copies ready batches
  out of ``data.batches_ahead`` shared-memory slots, so a Python training loop never waits for
  the decode threads' GIL (:mod:`jetscan.storage.stream_process`). Without it, a background
  thread assembles the next ``data.batches_ahead`` batches in the consumer's process (0: in the
  consumer's thread). The batches are the same either way;
- **bounded memory**: ``data.cache_mb`` bounds every decoded byte a stream holds: its
  cache, its shuffle buffer (a fixed block of ``max(buffer, batch, buffer / 2 + batch) +
  chunk`` jets, filled slot by slot, so a batch is one gather and no chunk is copied twice)
  and its read-ahead queue. The cache gets what the working set leaves (none when
  ``cache_mb`` is below the working set, which is then all the stream holds), keeps the
  first chunks it sees and never evicts (a cyclic epoch would thrash an LRU), so a 100M-jet
  store streams in the same RAM as a 100k-jet one. :meth:`JetStream.memory` reports the
  accounted bytes (cache, buffer, queue) and their peak;
- **on the fly**: ``on_the_fly=True`` reads stored constituents and computes the
  representation in the reading thread with the same function ``jetscan preprocess``
  uses, so the arrays are identical to the stored ones.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

try:
    import torch
    import torch.utils.data
except ImportError as exc:  # pragma: no cover - torch is installed by `make`
    raise ImportError(
        "jetscan.storage.loader needs PyTorch: pip install 'jetscan[ml]' (torch==2.13.0, the CPU build), "
        "or install a CUDA build of torch first"
    ) from exc

try:  # one event-loop trip for the arrays of a chunk (zarr 3); plain per-array reads otherwise
    from zarr.core.sync import sync as _zarr_sync
except ImportError:  # pragma: no cover
    _zarr_sync = None

from jetscan.core import representations as reps
from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.study import Study
from jetscan.core.splits import split_counts
from jetscan.storage import blobs, catalog, layout, shardread
from jetscan.storage.stream_process import BatchProcess, fork_available

__all__ = ["JetStream", "default_decode_workers", "split_assignment", "split_jets", "SPLITS"]

SPLITS = ("train", "val", "test")


def default_decode_workers() -> int:
    """``data.decode_workers`` when unset: the CPUs this process may use less one for the training
    loop, between 1 and 4. On 2 cores, 4 decode threads beside a Python training loop fed it at
    0.75 of the in-memory rate and 1 thread at 0.95 (``benchmarks/loader.py``, decode threads in
    the loop's process)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return min(4, max(1, cpus - 1))


def split_assignment(n_jets: int, fractions: tuple[float, float, float], seed: int, sample: str) -> np.ndarray:
    """int8 split index (0 train, 1 val, 2 test) of each jet of a sample, from a seeded permutation."""
    perm = np.random.default_rng([seed % 2**63, zlib.crc32(sample.encode()), 0x5B1]).permutation(n_jets)
    n_train, n_val, _ = split_counts(n_jets, fractions)
    out = np.full(n_jets, 2, np.int8)
    out[perm[:n_train]] = 0
    out[perm[n_train : n_train + n_val]] = 1
    return out


def split_jets(study: Study, sample: str, fields: list[str], split: str) -> dict[str, np.ndarray]:
    """Stored jet arrays (e.g. ``["jets/mass"]``) of one split of a sample, in store order: the
    jets an unshuffled :class:`JetStream` of that split reads, once every shard is committed."""
    from jetscan.storage.reader import read_jets

    arrays = read_jets(study.store, sample, fields)
    n = len(next(iter(arrays.values())))
    keep = split_assignment(n, study.split_fractions(sample), study.seed, sample) == SPLITS.index(split)
    return {k: v[keep] for k, v in arrays.items()}


def _subset(masks: list[np.ndarray], names: list[str], max_jets: int, seed: int, split_index: int) -> list[np.ndarray]:
    """The split masks of ``names`` cut to a seeded random ``max_jets`` of their jets, each
    sample keeping its share of the split (rounded cumulatively, so the counts sum to ``max_jets``)."""
    counts = np.array([m.sum() for m in masks], dtype=np.int64)
    edges = np.round(max_jets * np.cumsum(counts) / counts.sum()).astype(np.int64)
    keep = np.diff(np.r_[0, edges])
    out = []
    for name, mask, k in zip(names, masks, keep):
        rng = np.random.default_rng([seed % 2**63, zlib.crc32(name.encode()), 0x5B5, split_index])
        cut = np.zeros_like(mask)
        cut[rng.choice(np.flatnonzero(mask), size=int(k), replace=False)] = True
        out.append(cut)
    return out


@dataclass(frozen=True)
class _Unit:
    sample: int  # index into JetStream.samples
    start: int
    stop: int
    rows: np.ndarray  # rows within [start, stop) that belong to this dataset


class JetStream(torch.utils.data.IterableDataset):
    """Iterable of batches over ``samples`` (and, if contaminated, the study's signal sample).

    ``max_jets``: read a seeded random subset of that many jets of ``samples``' split (each
    sample its share; the same subset every epoch and on every rank), e.g. a CNN autoencoder
    trained on 2 CPU cores on part of a paper-size training split; a contamination's signal count
    follows the subset. ``n_split_jets`` / ``n_kept_jets``: ``samples``' jets in the split, and
    those kept.

    Build it with :meth:`from_study`. Iterating runs one epoch; call :meth:`set_epoch`
    between epochs (or let it count up) to reshuffle. Usable directly or through
    ``torch.utils.data.DataLoader(stream, batch_size=None)``.
    """

    def __init__(
        self,
        study: Study,
        samples: Sequence[str],
        representation: str,
        *,
        split: str = "train",
        contaminated: bool = False,
        rank: int = 0,
        world_size: int = 1,
        on_the_fly: bool = False,
        batch_size: int | None = None,
        drop_last: bool = False,
        shuffle: bool = True,
        lockstep: bool = False,
        max_jets: int | None = None,
    ):
        if split not in SPLITS:
            raise ConfigError(f"split: must be one of {', '.join(SPLITS)} (got {split!r})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
        if not samples:
            raise ConfigError("samples: give at least one sample to read")
        if max_jets is not None and max_jets < 1:
            raise ConfigError(f"max_jets: at least 1 jet, or None for the whole split (got {max_jets})")
        self.study = study
        self.cfg = study.representation(representation)  # ConfigError for an unknown one
        self.representation = representation
        self.split = split
        self.rank, self.world_size = rank, world_size
        self.on_the_fly = on_the_fly
        self.batch_size = batch_size or study.data.batch_size
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0
        # virtual ranks (lockstep=True, as the training loop reads): V disjoint streams, V defaults to W
        v = int(getattr(study.data, "virtual_ranks", 1) or 1)
        self.lockstep = bool(lockstep)
        self.virtual_ranks = v if v > 1 else world_size
        if self.lockstep:
            if self.virtual_ranks % world_size:
                raise ConfigError(
                    f"data.virtual_ranks {self.virtual_ranks} is not a multiple of the world size {world_size}: "
                    "use a world size that divides it (or set data.virtual_ranks to a multiple of it)"
                )
            if self.batch_size % self.virtual_ranks:
                raise ConfigError(
                    f"batch_size {self.batch_size} is not divisible by data.virtual_ranks {self.virtual_ranks}: "
                    "each global batch is made of virtual_ranks equal sub-batches"
                )
        names = list(samples)
        contamination = study.data.contamination if contaminated else None
        if contaminated and contamination is None:
            raise ConfigError("contaminated=True needs data.contamination (signal, fraction) in the study")
        if contamination is not None and contamination.signal in names:
            raise ConfigError(
                f"data.contamination.signal {contamination.signal!r} is also a background sample here ({names})"
            )
        self.samples = names + ([contamination.signal] if contamination else [])
        for name in self.samples:
            study.sample(name)
        self._groups = self._open_checked()
        split_index = SPLITS.index(split)
        masks = []
        for name, group in zip(self.samples, self._groups):
            n = group["jets/pt"].shape[0]
            masks.append(split_assignment(n, study.split_fractions(name), study.seed, name) == split_index)
        n_named = len(names)
        self.n_split_jets = int(sum(m.sum() for m in masks[:n_named]))
        if max_jets is not None and max_jets < self.n_split_jets:
            masks[:n_named] = _subset(masks[:n_named], names, max_jets, study.seed, split_index)
        self.n_kept_jets = int(sum(m.sum() for m in masks[:n_named]))
        if contamination is not None:
            n_bkg = self.n_kept_jets
            f = contamination.fraction
            n_sig = int(round(f * n_bkg / (1.0 - f)))
            candidates = np.flatnonzero(masks[-1])
            if n_sig > len(candidates):
                raise ConfigError(
                    f"data.contamination.fraction {f} needs {n_sig} {contamination.signal!r} jets in the {split} "
                    f"split but there are {len(candidates)}: generate more, or lower the fraction"
                )
            rng = np.random.default_rng([study.seed % 2**63, zlib.crc32(contamination.signal.encode()), 0xC0A])
            chosen = np.zeros_like(masks[-1])
            chosen[rng.choice(candidates, size=n_sig, replace=False)] = True
            masks[-1] = chosen
        self.n_signal_mixed = int(masks[-1].sum()) if contamination is not None else 0
        self._units = []
        for i, (group, mask) in enumerate(zip(self._groups, masks)):
            chunk = layout.chunk_jets_for(group.attrs["shard_jets"])
            for start in range(0, len(mask), chunk):
                rows = np.flatnonzero(mask[start : start + chunk]).astype(np.int64)
                if len(rows):
                    self._units.append(_Unit(i, start, min(start + chunk, len(mask)), rows))
        self.n_jets_total = int(sum(len(u.rows) for u in self._units))
        self.decode_workers = study.data.decode_workers or default_decode_workers()
        self.batches_ahead = study.data.batches_ahead
        self.row_bytes = self._row_bytes()
        # everything decoded is accounted: cache + shuffle buffers + read-ahead queue <= cache_mb
        self.memory_limit_bytes = study.data.cache_mb * 2**20
        self.working_set_bytes = self._working_set_rows() * self.row_bytes
        self._cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._cache_budget = max(0, self.memory_limit_bytes - self.working_set_bytes)
        self._cache_used = 0
        self._lock = threading.Lock()
        self._queued = 0  # decoded chunks read ahead, not yet in a shuffle buffer
        self._buffered = 0  # bytes of allocated shuffle buffers
        self._peak = 0
        self._executor: ThreadPoolExecutor | None = None  # made on first use, per process
        self._executor_pid = 0
        self._ahead: dict[tuple, list] = {}  # the next epoch's first reads, in flight
        self._batch_process: BatchProcess | None = None  # data.decode_process: made on the first epoch
        self._array_handles: dict[int, list] = {}  # per sample, opened on first read

    @classmethod
    def from_study(cls, study: Study, samples: Sequence[str], representation: str, **kw) -> "JetStream":
        return cls(study, samples, representation, **kw)

    # ----------------------------------------------------------------- memory
    def _row_bytes(self) -> int:
        """Decoded bytes of one jet as the stream holds it: x plus label, mass, weight, sample, index."""
        if self.on_the_fly:
            x = int(np.prod(reps.output_shape(self.cfg))) * 4  # compute() returns float32
        else:
            arr = self._groups[0][f"inputs/{self.representation}"]
            x = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
        return x + sum(np.dtype(t).itemsize for t in _META_DTYPES.values())

    def _batch_schema(self) -> list[tuple[str, np.dtype, tuple]]:
        """(name, dtype, shape of one jet) of each array of a batch, in the order batches hold them."""
        if self.on_the_fly:
            x = (np.dtype(np.float32), tuple(reps.output_shape(self.cfg)))
        else:
            arr = self._groups[0][f"inputs/{self.representation}"]
            x = (arr.dtype, tuple(arr.shape[1:]))
        return [("x", *x)] + [(k, np.dtype(t), ()) for k, t in _META_DTYPES.items()]

    def _stream_batch(self) -> int:
        return self.batch_size // self.virtual_ranks if self._virtual else self.batch_size

    def _buffer_rows(self, batch: int, max_part: int) -> int:
        """Rows a shuffle buffer can ever hold (see :meth:`_iter_stream`)."""
        target = self.study.data.shuffle_buffer_jets if self.shuffle else 0
        return max(target, batch, target // 2 + batch) - 1 + max_part

    def _working_set_rows(self) -> int:
        """Worst-case jets held outside the cache: shuffle buffers, read-ahead chunks, the batch out."""
        max_part = max((len(u.rows) for u in self._units), default=0)
        n_streams = len(self.my_virtual_ranks) if self._virtual else 1
        prefetch = max(1, self.study.data.prefetch_chunks)
        per_stream = self._buffer_rows(self._stream_batch(), max_part) + prefetch * max_part
        # the batch given out (and its parts in lockstep), and the batches assembled ahead
        return n_streams * per_stream + (2 + self.batches_ahead) * self.batch_size

    def memory(self) -> dict[str, int]:
        """Accounted decoded bytes: now (cache, buffers, queue), the peak of their sum, and the bounds.

        With a decode process: its figures as of the last batch it sent, plus its peak resident
        memory (``process_peak_rss_bytes``)."""
        proc = self._batch_process
        stats = proc.stats() if proc is not None and proc.pid == os.getpid() else None
        return stats or self._memory_here()

    def _memory_here(self) -> dict[str, int]:
        with self._lock:
            return {
                "cache_bytes": self._cache_used,
                "cache_chunks": len(self._cache),
                "buffer_bytes": self._buffered,
                "queue_bytes": self._queued,
                "peak_bytes": self._peak,
                "cache_budget_bytes": self._cache_budget,
                "working_set_bytes": self.working_set_bytes,
                "limit_bytes": max(self.memory_limit_bytes, self.working_set_bytes),
            }

    def _account(self, *, queued: int = 0, buffered: int = 0) -> None:
        with self._lock:
            self._queued += queued
            self._buffered += buffered
            self._peak = max(self._peak, self._cache_used + self._queued + self._buffered)

    # ----------------------------------------------------------------- checks
    def _open_checked(self):
        blobs.use_storage_options(self.study.store, self.study.storage_options)
        root = layout.open_root(self.study.store)
        groups = []
        fields = reps.required_fields(self.cfg) if self.on_the_fly else []
        for name in self.samples:
            try:
                group = layout.open_sample(root, name)
            except StorageError:
                raise StorageError(
                    f"sample {name!r} is not in store {self.study.store!r}: run 'jetscan generate' first"
                ) from None
            n_shards = len(layout.shard_ranges(group.attrs["n_jets"], group.attrs["shard_jets"]))
            missing = sorted(set(range(n_shards)) - catalog.committed_shards(self.study.store, name))
            if missing:
                raise StorageError(
                    f"sample {name!r}: shard(s) {missing} not generated yet; run 'jetscan generate' to finish it"
                )
            if not self.on_the_fly:
                table = f"inputs/{self.representation}"
                missing = sorted(set(range(n_shards)) - catalog.committed_shards(self.study.store, name, table=table))
                if missing:
                    raise StorageError(
                        f"sample {name!r}: representation {self.representation!r} not preprocessed for shard(s) "
                        f"{missing}; run 'jetscan preprocess', or read with on_the_fly=True"
                    )
            for f in fields:
                if f not in group:
                    raise StorageError(f"sample {name!r} has no {f}")
            groups.append(group)
        return groups

    # -------------------------------------------------------------- iteration
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.study.seed % 2**63, epoch, 0x10AD]).permutation(len(self._units))
        return np.arange(len(self._units))

    def _my_units(self, epoch: int) -> list[_Unit]:
        mine = [self._units[i] for i in self._order(epoch)[self.rank :: self.world_size]]
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            mine = mine[info.id :: info.num_workers]
        return mine

    @property
    def _virtual(self) -> bool:
        return self.lockstep and self.virtual_ranks > 1

    @property
    def my_virtual_ranks(self) -> range:
        """The virtual streams this rank serves (lockstep mode)."""
        per = self.virtual_ranks // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)

    def _virtual_units(self, epoch: int, v: int) -> list[_Unit]:
        return [self._units[i] for i in self._order(epoch)[v :: self.virtual_ranks]]

    def steps_per_epoch(self, epoch: int | None = None) -> int | None:
        """Lockstep mode: the (global) steps of an epoch, the same on every rank; None otherwise."""
        if not self._virtual:
            return None
        epoch = self.epoch if epoch is None else epoch
        sub = self.batch_size // self.virtual_ranks
        return min(sum(len(u.rows) for u in self._virtual_units(epoch, v)) // sub for v in range(self.virtual_ranks))

    def jets_this_rank(self, epoch: int | None = None) -> int:
        epoch = self.epoch if epoch is None else epoch
        if self._virtual:
            return self.steps_per_epoch(epoch) * (self.batch_size // self.world_size)
        return int(sum(len(u.rows) for u in self._my_units(epoch)))

    def _read(self, unit: _Unit) -> dict[str, np.ndarray]:
        """One unit's decoded arrays (from the cache, or read and maybe cached); runs in a decode worker."""
        key = (unit.sample, unit.start)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = self._read_uncached(unit)
        nbytes = sum(v.nbytes for v in out.values())
        with self._lock:
            if key not in self._cache and self._cache_used + nbytes <= self._cache_budget:
                self._cache[key] = out
                self._cache_used += nbytes
            else:
                self._queued += nbytes  # held only until it is copied into a shuffle buffer
                out = _Owned(out, nbytes)
            self._peak = max(self._peak, self._cache_used + self._queued + self._buffered)
        return out

    def _paths(self) -> tuple[str, ...]:
        """The arrays a unit reads: the representation's inputs (or the fields it is computed from), label, mass."""
        inputs = reps.required_fields(self.cfg) if self.on_the_fly else [f"inputs/{self.representation}"]
        return (*inputs, "truth/label", "jets/mass")

    def _read_uncached(self, unit: _Unit) -> dict[str, np.ndarray]:
        sl = slice(unit.start, unit.stop)
        paths = self._paths()
        inputs = paths[:-2]
        got = _read_slices(self._arrays(unit.sample, paths), sl)
        if self.on_the_fly:
            x = reps.compute(self.cfg, dict(zip(inputs, got[:-2])))
        else:
            x = got[0]
        rows = unit.rows
        whole = len(rows) == unit.stop - unit.start  # every jet of the chunk: no gather needed
        return {
            "x": x if whole else x[rows],
            "label": (got[-2] if whole else got[-2][rows]).astype(np.int64),
            "mass": (got[-1] if whole else got[-1][rows]).astype(np.float32),
            "weight": np.ones(len(rows), np.float32),
            "sample": np.full(len(rows), unit.sample, np.int64),
            "index": (unit.start + rows).astype(np.int64),
        }

    def _arrays(self, sample: int, paths: tuple[str, ...]) -> list[tuple]:
        """The sample's zarr arrays, opened once (opening one reads and parses its metadata), each
        with its direct reader (:mod:`jetscan.storage.shardread`; None: read through zarr)."""
        got = self._array_handles.get(sample)
        if got is None:
            group = self._groups[sample]
            arrays = [group[p] for p in paths]
            got = self._array_handles[sample] = [(a, shardread.reader(a)) for a in arrays]
        return got

    def iter_numpy(self, epoch: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of batches as numpy arrays (in lockstep mode: this rank's part of each global batch).

        When an epoch has read all its chunks, the first ``prefetch_chunks`` chunks of the next
        epoch are read while its last batches are served, so epoch ``epoch + 1`` (the usual
        next request) starts without waiting for a full shuffle buffer. With
        ``data.batches_ahead`` > 0 the batches are assembled by a background thread, that many
        ahead of the consumer (the same batches, in the same order).
        """
        epoch = self.epoch if epoch is None else epoch
        proc = self._decode_process()
        if proc is not None:
            return proc.epoch(epoch)
        if self.batches_ahead <= 0:
            return self._iter_numpy_here(epoch)
        return _ahead_of_consumer(lambda: self._iter_numpy_here(epoch), self.batches_ahead)

    def _decode_process(self) -> BatchProcess | None:
        """The child process making this stream's batches (``data.decode_process``), or None to make them here:
        the option off, or ``auto`` with the stream's decoded jets fitting its cache or its reads releasing the
        GIL (:meth:`_reads_release_gil`), no fork on this platform,
        a store that is not a local path (object-store clients do
        not survive a fork), inside a DataLoader worker (already a process of its own) or a daemonic process
        (Dask and Pool workers may not start children), or while another epoch of this stream is being read
        from it."""
        setting = self.study.data.decode_process
        if setting is False or not fork_available():
            return None
        if setting == "auto" and self.n_jets_total * self.row_bytes <= self._cache_budget:
            # fits in the cache: decoded once (the first epoch) and then only gathered; a child
            # would cost a fork, copy-on-write faults and a handover per batch for nothing
            return None
        if setting == "auto" and self._reads_release_gil():
            # direct shard reads: the decode threads hold the GIL only briefly, and the consumer is
            # spared the handover and the child's copies (benchmarks/loader.py, 1 decode worker: 0.955
            # of the in-memory rate, median of 14 rounds in three runs, against 0.81-0.88 with the child)
            return None
        store = str(self.study.store)
        if "://" in store and not store.startswith("file://"):  # object-store clients are not fork-safe
            return None
        if torch.utils.data.get_worker_info() is not None:
            return None
        if multiprocessing.current_process().daemon:  # a Dask worker, a Pool worker: may not have children
            return None
        proc = self._batch_process
        if proc is None or proc.pid != os.getpid():
            proc = self._batch_process = BatchProcess(self._iter_numpy_here, self._memory_here,
                                                      schema=self._batch_schema(), max_rows=self.batch_size,
                                                      depth=max(2, self.batches_ahead))
        return None if proc.busy else proc

    def _reads_release_gil(self) -> bool:
        """Whether every array this stream reads is read directly from its shard files
        (:mod:`jetscan.storage.shardread`: file reads, crc32c and decompression all release the GIL)
        and nothing is computed on the fly (numpy in Python, holding the GIL between its calls)."""
        if self.on_the_fly:
            return False
        return all(direct is not None for i in range(len(self._groups)) for _, direct in self._arrays(i, self._paths()))

    def close(self) -> None:
        """Stop the decode process (if any) and free its shared memory; also done when the stream is collected."""
        proc, self._batch_process = self._batch_process, None
        if proc is not None and proc.pid == os.getpid():
            proc.close()

    def _iter_numpy_here(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`iter_numpy`'s batches, assembled in the thread that iterates."""
        if self._virtual:
            info = torch.utils.data.get_worker_info()
            if info is not None and info.num_workers > 1:
                raise ConfigError("a lockstep (virtual-rank) JetStream cannot be split over DataLoader workers; use num_workers=0")
        ex = self._pool()
        with self._lock:
            ahead, self._ahead = self._ahead, {}
        if not self._virtual:
            keys = {"r": (epoch, "r")}
            head = {k: ahead.pop(key, None) for k, key in keys.items()}
        else:
            head = {v: ahead.pop((epoch, v), None) for v in self.my_virtual_ranks}
        for stale in ahead.values():  # read ahead for an epoch not asked for
            self._release(f for _, f in stale)
        if not self._virtual:
            rng = np.random.default_rng([self.study.seed % 2**63, epoch, self.rank, 0x5F1])
            yield from self._iter_stream(
                self._my_units(epoch), rng, self.batch_size, self.drop_last, ex, head["r"],
                ((epoch + 1, "r"), lambda: self._my_units(epoch + 1)),
            )
            return
        sub = self.batch_size // self.virtual_ranks
        n_steps = self.steps_per_epoch(epoch)
        streams = [
            self._iter_stream(
                self._virtual_units(epoch, v),
                np.random.default_rng([self.study.seed % 2**63, epoch, v, 0x5F1]),
                sub,
                True,
                ex,
                head[v],
                ((epoch + 1, v), lambda v=v: self._virtual_units(epoch + 1, v)),
            )
            for v in self.my_virtual_ranks
        ]
        try:
            for _ in range(n_steps):
                yield _concat([next(g) for g in streams])
        finally:
            for g in streams:
                g.close()

    def _pool(self) -> ThreadPoolExecutor:
        """The stream's decode workers (made again in a forked DataLoader worker, whose copy has no threads)."""
        if self._executor is None or self._executor_pid != os.getpid():
            self._executor = ThreadPoolExecutor(max_workers=self.decode_workers, thread_name_prefix="jetstream")
            self._executor_pid = os.getpid()
            self._ahead = {}
        return self._executor

    def _release(self, futures) -> None:
        """Drop reads nobody will take; what they decoded leaves the queue's account when they finish."""
        for f in futures:
            if f is not None and not f.cancel():
                f.add_done_callback(self._release_done)

    def _release_done(self, f) -> None:
        if not f.cancelled() and f.exception() is None:
            part = f.result()
            if isinstance(part, _Owned):
                self._account(queued=-part.nbytes)

    def _iter_stream(
        self,
        units: list[_Unit],
        rng,
        batch_size: int,
        drop_last: bool,
        ex: ThreadPoolExecutor,
        head: list | None = None,
        then: tuple | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``batch_size`` from ``units`` in order, through the shuffle buffer.

        The order is that of a list of chunks merged whenever it holds ``max(buffer, batch)``
        jets: the merged jets are permuted (one ``rng.permutation`` of all of them), the
        first whole batches that leave at least ``buffer / 2`` jets are yielded and the rest,
        in permuted order, starts the next merge; at the end of the units the rest is permuted
        and yielded. Here the jets stay in the slots of one preallocated block and only the
        list of their slots (``order``) is permuted, so a batch is one gather per array.

        ``head``: reads of the first units already in flight (``(unit, future)`` pairs, from the
        previous epoch); ``then``: ``(key, units of the next epoch)``, whose first units are
        read once all of these are.
        """
        prefetch = max(1, self.study.data.prefetch_chunks)
        if head is not None and (len(head) > len(units) or any(h[0] is not u for h, u in zip(head, units))):
            self._release(f for _, f in head)
            head = None
        if not units:
            return
        target = self.study.data.shuffle_buffer_jets if self.shuffle else 0
        threshold, keep = max(target, batch_size), max(target // 2, 0)
        capacity = min(self._buffer_rows(batch_size, max(len(u.rows) for u in units)), sum(len(u.rows) for u in units))
        buf = _SlotBuffer(capacity)
        futures = [f for _, f in head] if head else []
        futures += [ex.submit(self._read, u) for u in units[len(futures) : prefetch]]
        next_unit = len(futures)
        try:
            for k in range(len(units)):
                part = futures[k].result()
                futures[k] = None  # free it
                if buf.arrays is None:
                    self._account(buffered=buf.allocate(part))
                buf.add(part)
                if isinstance(part, _Owned):
                    self._account(queued=-part.nbytes)
                del part
                if next_unit < len(units):
                    futures.append(ex.submit(self._read, units[next_unit]))
                    next_unit += 1
                if buf.n >= threshold:
                    if self.shuffle:
                        buf.permute(rng.permutation(buf.n))
                    n_out = ((buf.n - keep) // batch_size) * batch_size
                    for _ in range(0, n_out, batch_size):
                        yield buf.take(batch_size)
            if then is not None:  # every read of this epoch is done: start the next epoch's
                key, next_units = then[0], then[1]()[:prefetch]
                with self._lock:
                    self._ahead[key] = [(u, ex.submit(self._read, u)) for u in next_units]
            if buf.n:
                if self.shuffle:
                    buf.permute(rng.permutation(buf.n))
                while buf.n:
                    if drop_last and buf.n < batch_size:
                        break
                    yield buf.take(min(batch_size, buf.n))
        finally:
            self._release(futures)  # an abandoned epoch's reads in flight
            if buf.arrays is not None:
                self._account(buffered=-buf.nbytes)
                buf.arrays = None

    def __getstate__(self) -> dict:
        """Picklable (DataLoader workers under spawn): each copy starts with an empty cache."""
        state = self.__dict__.copy()
        state.update(_lock=None, _cache={}, _cache_used=0, _queued=0, _buffered=0, _peak=0, _executor=None, _ahead={},
                     _batch_process=None, _array_handles={})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __iter__(self):
        for batch in self.iter_numpy():
            yield {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        self.epoch += 1

    def __repr__(self) -> str:
        return (
            f"JetStream({self.samples}, {self.representation!r}, split={self.split!r}, jets={self.n_jets_total}, "
            f"rank={self.rank}/{self.world_size}, on_the_fly={self.on_the_fly}"
            + (f", virtual_ranks={self.virtual_ranks}" if self._virtual else "")
            + ")"
        )


_META_DTYPES = {"label": np.int64, "mass": np.float32, "weight": np.float32, "sample": np.int64, "index": np.int64}


class _Owned(dict):
    """A decoded chunk the cache did not keep: accounted in the read-ahead queue until buffered."""

    def __init__(self, arrays: dict[str, np.ndarray], nbytes: int):
        super().__init__(arrays)
        self.nbytes = nbytes


class _SlotBuffer:
    """A shuffle buffer of fixed capacity: jets sit in slots, ``order`` lists the slots in pool order."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.arrays: dict[str, np.ndarray] | None = None
        self.nbytes = 0
        self.order = np.empty(0, np.int64)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack: low slots first
        self._n_free = capacity

    @property
    def n(self) -> int:
        return len(self.order)

    def allocate(self, like: dict[str, np.ndarray]) -> int:
        self.arrays = {k: np.empty((self.capacity, *v.shape[1:]), v.dtype) for k, v in like.items()}
        self.nbytes = sum(v.nbytes for v in self.arrays.values())
        return self.nbytes

    def add(self, part: dict[str, np.ndarray]) -> None:
        m = len(part["label"])
        if m > self._n_free:  # cannot happen: capacity is the most the merge rule ever holds
            raise RuntimeError(f"shuffle buffer overflow: {m} jets into {self._n_free} free slots")
        slots = self._free[self._n_free - m : self._n_free][::-1]
        self._n_free -= m
        if m == 1 or np.all(np.diff(slots) == 1):
            dst = slice(int(slots[0]), int(slots[0]) + m)
        else:
            dst = slots
        for k, v in self.arrays.items():
            v[dst] = part[k]
        self.order = np.concatenate([self.order, slots])

    def permute(self, perm: np.ndarray) -> None:
        self.order = self.order[perm]

    def take(self, m: int) -> dict[str, np.ndarray]:
        """The next ``m`` jets of the pool as new arrays (never views of the buffer); frees their slots."""
        idx, self.order = self.order[:m], self.order[m:]
        if len(idx) > 1 and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
            out = {k: v[idx[0] : idx[0] + len(idx)].copy() for k, v in self.arrays.items()}
        else:
            out = {k: v[idx] for k, v in self.arrays.items()}
        self._free[self._n_free : self._n_free + len(idx)] = idx[::-1]
        self._n_free += len(idx)
        return out


def _read_slices(arrays: list[tuple], sl: slice) -> list[np.ndarray]:
    """``[a[sl] for a, _ in arrays]``: directly from the shard files where ``arrays`` gives a
    reader (2-3x fewer CPU-seconds than zarr for a 1000-jet heimel40 chunk; a read it cannot
    make is made by zarr, whose errors the caller then sees), the rest in one trip through
    zarr's event loop (its per-call overhead, not decompression, dominates reading a 1000-jet
    chunk: about 1.5x fewer CPU-seconds than one call per array)."""
    out = [shardread.read_direct(direct, sl) for _, direct in arrays]
    rest = [i for i, got in enumerate(out) if got is None]
    if rest and _zarr_sync is None:
        for i in rest:
            out[i] = arrays[i][0][sl]
    elif rest:
        async def _all():
            return await asyncio.gather(*(arrays[i][0].async_array.getitem(sl) for i in rest))

        for i, got in zip(rest, _zarr_sync(_all())):
            out[i] = got
    return out


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One copy of the parts (never a view: parts may be cached chunks that batches must not alias)."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(d: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in d.items()}


_END = object()


def _ahead_of_consumer(make: Callable[[], Iterator[dict]], depth: int) -> Iterator[dict[str, np.ndarray]]:
    """The items of the generator ``make()``, produced by a background thread ``depth`` ahead.

    Same items, same order; an exception in the producer is raised here, at its place in the
    sequence. Leaving the loop early (``break``, an error in the consumer) stops the producer
    and closes its generator (releasing its buffers and reads) before this generator returns.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        gen = make()
        try:
            for item in gen:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))
        finally:
            gen.close()

    def consume() -> Iterator[dict[str, np.ndarray]]:
        thread = threading.Thread(target=produce, name="jetstream-batches", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.exc
                yield item
        finally:
            stop.set()
            thread.join()

    return consume()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc
