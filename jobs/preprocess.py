"""Stage 2, preprocess: stored jets -> network inputs beside them, one Ray task per shard.

The whole story of the stage:

1. :func:`plan` checks the study before any work: every representation must be known,
   every sample must exist in the store; a representation already stored must have been
   made with the same settings (image recipe and the jets' own settings hash), else a
   :class:`StorageError` lists the changes and nothing is touched. It creates missing
   ``<sample>/inputs/<representation>`` arrays and returns the (sample, representation,
   shard) units whose jets are committed but whose inputs are not: re-running resumes.
   Shards not generated yet are reported, not waited for.
2. :func:`process` (a stateless Ray task, or a plain call) reads one shard's stored jets,
   computes the representation with :func:`jetscan.core.representations.compute` and writes
   it, then commits the shard in the inputs catalog (atomic, as in generation).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from jetscan.core import representations as reps
from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.study import Study, settings_hash
from jetscan.storage import blobs, catalog, layout

__all__ = ["InputSpec", "plan", "process", "preprocess", "input_settings"]


@dataclass(frozen=True)
class InputSpec:
    """One unit of work: one representation of one committed shard."""

    store: str
    sample: str
    representation: str
    shard: int
    start: int
    stop: int
    settings_hash: str
    cfg_json: str  # the RepresentationConfig, as JSON (picklable and hashable)
    storage_options_json: str = "{}"  # the study's storage_options (no credentials), as JSON

    def __str__(self) -> str:
        return f"{self.sample}/inputs/{self.representation} shard {self.shard} (jets {self.start}-{self.stop})"


def input_settings(study: Study, sample: str, name: str) -> dict:
    """What an input array depends on: its recipe and the jets it was made from."""
    return {
        "representation": study.representation(name).model_dump(mode="json"),
        "jets_settings_hash": settings_hash(study.generation_settings(sample)),
    }


def plan(
    study: Study, samples: Iterable[str] | None = None, names: Iterable[str] | None = None
) -> tuple[list[InputSpec], dict[str, list[int]]]:
    """Check and prepare the store; returns (units to make, {sample: shards not generated yet})."""
    sample_names = list(samples) if samples is not None else list(study.samples)
    rep_names = list(names) if names is not None else list(study.preprocess.representations)
    for s in sample_names:
        study.sample(s)
    for r in rep_names:
        study.representation(r)
    blobs.use_storage_options(study.store, study.storage_options)
    layout.open_root(study.store)  # raises a clear error if there is no store yet
    root = layout.open_root(study.store, mode="r+")
    groups = {}
    for s in sample_names:
        try:
            groups[s] = layout.open_sample(root, s)
        except StorageError:
            raise StorageError(
                f"sample {s!r} is not in store {study.store!r} yet: run 'jetscan generate' first"
            ) from None
        if groups[s].attrs.get("settings_hash") != settings_hash(study.generation_settings(s)):
            raise StorageError(
                f"sample {s!r} in store {study.store!r} was generated with other settings than this study's; "
                "preprocess with the study that made it, or point 'store' elsewhere"
            )
    # refuse changed recipes before creating anything
    for s in sample_names:
        for r in rep_names:
            settings = input_settings(study, s, r)
            if f"inputs/{r}" in _members(groups[s]):
                old = groups[s][f"inputs/{r}"].attrs.get("settings_hash")
                if old != settings_hash(settings):
                    raise StorageError(
                        f"store already holds {s}/inputs/{r} made with other settings "
                        f"({groups[s][f'inputs/{r}'].attrs.get('settings')} -> {settings}). Nothing was "
                        "changed. Give the new recipe another representation name, or use a new store."
                    )
    todo, waiting = [], {}
    for s in sample_names:
        group = groups[s]
        shard_jets = group.attrs["shard_jets"]
        jets_done = catalog.committed_shards(study.store, s)
        all_shards = set(range(len(layout.shard_ranges(group.attrs["n_jets"], shard_jets))))
        if all_shards - jets_done:
            waiting[s] = sorted(all_shards - jets_done)
        for r in rep_names:
            cfg = study.representation(r)
            settings = input_settings(study, s, r)
            h = settings_hash(settings)
            if f"inputs/{r}" not in _members(group):
                layout.create_inputs(
                    group, r, shape=reps.output_shape(cfg), shard_jets=shard_jets,
                    attrs={"settings": settings, "settings_hash": h, "preset": cfg.preset},
                )
            made = catalog.committed_shards(study.store, s, table=f"inputs/{r}")
            for shard in sorted(jets_done - made):
                start, stop = layout.shard_ranges(group.attrs["n_jets"], shard_jets)[shard]
                todo.append(
                    InputSpec(study.store, s, r, shard, start, stop, h, cfg.model_dump_json(), json.dumps(study.storage_options))
                )
    return todo, waiting


def _members(group) -> set[str]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = group.get("inputs")
        return {f"inputs/{k}" for k in inputs.array_keys()} if inputs is not None else set()


def process(spec: InputSpec) -> dict:
    """Make one shard of one representation and commit it; returns its catalog row."""
    import jetscan
    from jetscan.core.study import RepresentationConfig

    t0 = time.perf_counter()
    cfg = RepresentationConfig.model_validate_json(spec.cfg_json)
    blobs.use_storage_options(spec.store, json.loads(spec.storage_options_json))
    root = layout.open_root(spec.store, mode="r+")
    group = layout.open_sample(root, spec.sample)
    fields = layout.read_rows(group, reps.required_fields(cfg), spec.start, spec.stop)
    values = reps.compute(cfg, fields)
    arr = group[f"inputs/{spec.representation}"]
    arr[spec.start : spec.stop] = values
    row = {
        "sample": spec.sample,
        "representation": spec.representation,
        "shard": spec.shard,
        "start": spec.start,
        "stop": spec.stop,
        "n_jets": spec.stop - spec.start,
        "nbytes_stored": _shard_nbytes(spec),
        "settings_hash": spec.settings_hash,
        "seconds": time.perf_counter() - t0,
        "created_utc": catalog.now_utc(),
        "host": f"{socket.gethostname()}:{os.getpid()}",
        "jetscan": jetscan.__version__,
    }
    catalog.commit_shard(spec.store, row, table=f"inputs/{spec.representation}")
    return row


def _shard_nbytes(spec: InputSpec) -> int:
    """Bytes on disk of this shard's zarr shard file (-1 where the store is not local)."""
    if "://" in spec.store:
        return -1
    # the zarr shard of jets [start, stop): a file for 1-D arrays, a folder of files otherwise
    path = os.path.join(spec.store, spec.sample, "inputs", spec.representation, "c", str(spec.shard))
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def preprocess(
    study: Study,
    *,
    workers: int | None = None,
    address: str | None = None,
    samples: Iterable[str] | None = None,
    representations: Iterable[str] | None = None,
    use_ray: bool = True,
    on_shard: Callable[[dict], None] | None = None,
) -> tuple[list[dict], dict[str, list[int]]]:
    """Make every missing input shard; returns (rows committed now, shards awaiting generation)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    todo, waiting = plan(study, samples, representations)
    if not todo:
        return [], waiting
    if not use_ray:
        from jetscan.cluster.local import run_tasks

        return run_tasks(process, todo, on_result=on_shard), waiting
    from jetscan.cluster.ray import run_tasks

    return run_tasks(process, todo, workers=workers, address=address, on_result=on_shard), waiting


def bytes_per_jet(store: str, sample: str, representation: str) -> float:
    """Stored bytes per jet of one representation (from the inputs catalog)."""
    t = catalog.read_catalog(store, sample, table=f"inputs/{representation}")
    n = sum(t.column("n_jets").to_pylist())
    sizes = t.column("nbytes_stored").to_pylist()
    if not n or any(s < 0 for s in sizes):  # -1: not measured (an object store)
        return float("nan")
    return float(sum(sizes)) / n


