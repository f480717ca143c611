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
- **prefetch**: background threads read the next ``prefetch_chunks`` chunks while the
  current ones are consumed (zarr's decompression releases the GIL);
- **cache**: decoded chunks are kept in memory up to ``data.cache_mb``, so the epochs after
  the first read a sample that fits from memory (a 100k-jet 40x40 training set is ~640 MB);
- **on the fly**: ``on_the_fly=True`` reads stored constituents and computes the
  representation in the reading thread with the same function ``jetscan preprocess``
  uses, so the arrays are identical to the stored ones.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

try:
    import torch
    import torch.utils.data
except ImportError as exc:  # pragma: no cover - torch is installed by `make`
    raise ImportError(
        "jetscan.storage.loader needs PyTorch: pip install 'jetscan[ml]' (torch==2.13.0, the CPU build), "
        "or install a CUDA build of torch first"
    ) from exc

from jetscan.core import representations as reps
from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.study import Study
from jetscan.storage import blobs, catalog, layout

__all__ = ["JetStream", "split_assignment", "SPLITS"]

SPLITS = ("train", "val", "test")


def split_assignment(n_jets: int, fractions: tuple[float, float, float], seed: int, sample: str) -> np.ndarray:
    """int8 split index (0 train, 1 val, 2 test) of each jet of a sample, from a seeded permutation."""
    perm = np.random.default_rng([seed % 2**63, zlib.crc32(sample.encode()), 0x5B1]).permutation(n_jets)
    n_train = int(round(fractions[0] * n_jets))
    n_val = int(round(fractions[1] * n_jets))
    out = np.full(n_jets, 2, np.int8)
    out[perm[:n_train]] = 0
    out[perm[n_train : n_train + n_val]] = 1
    return out


@dataclass(frozen=True)
class _Unit:
    sample: int  # index into JetStream.samples
    start: int
    stop: int
    rows: np.ndarray  # rows within [start, stop) that belong to this dataset


class JetStream(torch.utils.data.IterableDataset):
    """Iterable of batches over ``samples`` (and, if contaminated, the study's signal sample).

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
    ):
        if split not in SPLITS:
            raise ConfigError(f"split: must be one of {', '.join(SPLITS)} (got {split!r})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
        if not samples:
            raise ConfigError("samples: give at least one sample to read")
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
        fractions = (study.data.splits.train, study.data.splits.val, study.data.splits.test)
        split_index = SPLITS.index(split)
        masks = []
        for name, group in zip(self.samples, self._groups):
            n = group["jets/pt"].shape[0]
            masks.append(split_assignment(n, fractions, study.seed, name) == split_index)
        if contamination is not None:
            n_bkg = int(sum(m.sum() for m in masks[:-1]))
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
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cache_budget = study.data.cache_mb * 2**20
        self._cache_used = 0

    @classmethod
    def from_study(cls, study: Study, samples: Sequence[str], representation: str, **kw) -> "JetStream":
        return cls(study, samples, representation, **kw)

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
        key = (unit.sample, unit.start)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = self._read_uncached(unit)
        nbytes = sum(v.nbytes for v in out.values())
        if self._cache_used + nbytes <= self._cache_budget:
            self._cache[key] = out
            self._cache_used += nbytes
        return out

    def _read_uncached(self, unit: _Unit) -> dict[str, np.ndarray]:
        group = self._groups[unit.sample]
        sl = slice(unit.start, unit.stop)
        if self.on_the_fly:
            fields = {f: group[f][sl] for f in reps.required_fields(self.cfg)}
            x = reps.compute(self.cfg, fields)
        else:
            x = group[f"inputs/{self.representation}"][sl]
        rows = unit.rows
        return {
            "x": x[rows],
            "label": group["truth/label"][sl][rows].astype(np.int64),
            "mass": group["jets/mass"][sl][rows].astype(np.float32),
            "weight": np.ones(len(rows), np.float32),
            "sample": np.full(len(rows), unit.sample, np.int64),
            "index": (unit.start + rows).astype(np.int64),
        }

    def iter_numpy(self, epoch: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of batches as numpy arrays (in lockstep mode: this rank's part of each global batch)."""
        epoch = self.epoch if epoch is None else epoch
        if not self._virtual:
            rng = np.random.default_rng([self.study.seed % 2**63, epoch, self.rank, 0x5F1])
            yield from self._iter_stream(self._my_units(epoch), rng, self.batch_size, self.drop_last)
            return
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError("a lockstep (virtual-rank) JetStream cannot be split over DataLoader workers; use num_workers=0")
        sub = self.batch_size // self.virtual_ranks
        n_steps = self.steps_per_epoch(epoch)
        streams = [
            self._iter_stream(
                self._virtual_units(epoch, v),
                np.random.default_rng([self.study.seed % 2**63, epoch, v, 0x5F1]),
                sub,
                True,
            )
            for v in self.my_virtual_ranks
        ]
        try:
            for _ in range(n_steps):
                yield _concat([next(g) for g in streams])
        finally:
            for g in streams:
                g.close()

    def _iter_stream(self, units: list[_Unit], rng, batch_size: int, drop_last: bool) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``batch_size`` from ``units`` in order, through the shuffle buffer."""
        buffer_target = self.study.data.shuffle_buffer_jets if self.shuffle else 0
        prefetch = max(1, self.study.data.prefetch_chunks)
        pool: list[dict[str, np.ndarray]] = []
        pooled = 0
        with ThreadPoolExecutor(max_workers=min(prefetch, 4), thread_name_prefix="jetstream") as ex:
            futures = [ex.submit(self._read, u) for u in units[:prefetch]]
            next_unit = len(futures)
            for k in range(len(units)):
                part = futures[k].result()
                futures[k] = None  # free it
                if next_unit < len(units):
                    futures.append(ex.submit(self._read, units[next_unit]))
                    next_unit += 1
                pool.append(part)
                pooled += len(part["label"])
                if pooled >= max(buffer_target, batch_size):
                    merged = _concat(pool)
                    if self.shuffle:
                        merged = _take(merged, rng.permutation(pooled))
                    keep = max(buffer_target // 2, 0)
                    n_out = ((pooled - keep) // batch_size) * batch_size
                    for s in range(0, n_out, batch_size):
                        yield _take(merged, slice(s, s + batch_size))
                    pool = [_take(merged, slice(n_out, pooled))]
                    pooled -= n_out
        if pooled:
            merged = _concat(pool)
            if self.shuffle:
                merged = _take(merged, rng.permutation(pooled))
            for s in range(0, pooled, batch_size):
                if drop_last and s + batch_size > pooled:
                    break
                yield _take(merged, slice(s, s + batch_size))

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


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One copy of the parts (never a view: parts may be cached chunks that batches must not alias)."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(d: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in d.items()}
