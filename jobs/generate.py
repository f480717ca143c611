"""Stage 1, generate: Pythia8 events -> detector -> FastJet fat jets -> zarr shards.

The whole story of the stage:

1. :func:`plan` checks the study against the store *before any work starts*: every
   sample's Pythia settings must be accepted by Pythia, and a sample already in the store
   must have been made by exactly the same settings (else a :class:`StorageError` lists
   the changed keys and nothing is touched). It creates missing sample groups and returns
   the shards the catalog does not list yet: re-running resumes.
2. Each shard is made by a :class:`ShardMaker` (one per worker: a Ray actor, or the
   process itself): a fresh Pythia instance seeded from (master seed, sample, shard index),
   ``nextBatch`` events, final-state particles, the detector model, anti-kT clustering,
   fiducial selection and truth matching, substructure, exactly ``shard_jets`` jets.
   Because a shard depends on its seed alone, the store is bit-identical whatever the
   number of workers.
3. The maker writes the shard's rows into the zarr arrays, then commits its catalog row
   atomically (:mod:`jetscan.storage.catalog`). A killed maker leaves no catalog row, so
   the shard is simply made again on the next run.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterable

import awkward as ak
import numpy as np

from jetscan.core.detector import charges_from_table, reconstruct
from jetscan.core.errors import ConfigError, RunnerError, StorageError
from jetscan.core.events import final_state_particles, resonance_truth, select_events
from jetscan.core.jets import (
    cluster_fat_jets,
    concatenate_jets,
    match_jets,
    may_match,
    padded_constituents,
    take_jets,
)
from jetscan.core.processes import PROCESSES, pythia_seed, pythia_settings
from jetscan.core.study import Study, settings_hash
from jetscan.core.substructure import substructure_csr
from jetscan.storage import blobs, catalog, layout

__all__ = ["ShardSpec", "ShardMaker", "plan", "generate", "sample_pythia_settings", "MATCH_DR"]

MATCH_DR = 0.6  # truth matching radius (Macaluso & Shih; Kasieczka et al.)


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: rows [start, stop) of one sample, made from one seed."""

    sample: str
    shard: int
    start: int
    stop: int
    seed: int

    @property
    def n_jets(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        return f"{self.sample} shard {self.shard} (jets {self.start}-{self.stop})"


def sample_pythia_settings(study: Study, sample: str, seed: int, slha_path: str | None = None) -> list[str]:
    """The readString lines of one sample (pTHat range derived from the jet window)."""
    cfg = study.sample(sample)
    preset = PROCESSES[cfg.process]
    lo, hi = study.jet.pt_window_gev
    pthat_min = cfg.pthat_min_gev if cfg.pthat_min_gev is not None else preset.pthat_scale * lo
    pthat_max = cfg.pthat_max_gev
    if pthat_max is None and preset.pthat_max_scale is not None:
        pthat_max = preset.pthat_max_scale * hi
    extra = (f"SLHA:file = {slha_path}",) if slha_path else ()
    return pythia_settings(
        cfg.process,
        sqrt_s_gev=study.sqrt_s_gev,
        pthat_min_gev=pthat_min,
        pthat_max_gev=pthat_max,
        seed=seed,
        shower=study.generation.shower,
        mpi=study.generation.mpi,
        hadronization=study.generation.hadronization,
        extra=extra + cfg.pythia_settings,
    )


def _versions() -> dict[str, str]:
    import jetscan

    return {
        "jetscan": jetscan.__version__,
        "pythia8mc": version("pythia8mc"),
        "fastjet": version("fastjet"),
        "zarr": version("zarr"),
    }


def slha_file(process: str, text: str) -> str:
    """The SLHA spectrum ``text`` as a file Pythia can read at every (re-)initialisation.

    One file per process and content, shared by every worker of this machine and user and
    written atomically, so repeated generations (and killed Ray actors, which never run
    finalisers) leave one small file behind, not a directory per worker."""
    import hashlib

    folder = str(Path(tempfile.gettempdir()) / f"jetscan-slha-{os.getuid()}")
    name = f"{process}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.slha"  # the name follows the content
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        blobs.write_atomic(folder, name, text.encode())
    return path


class ShardMaker:
    """Makes and commits shards; one per worker (it owns that worker's Pythia instance)."""

    def __init__(self, study: Study):
        import pythia8mc  # imported here: a Ray actor imports it in its own process

        self._pythia8mc = pythia8mc
        self.study = study
        blobs.use_storage_options(study.store, study.storage_options)  # this worker's process too
        self._charges: dict[int, float] = {}
        self._instances: dict[str, object] = {}
        self.pythia = None

    def _pythia_for(self, sample: str, seed: int):
        """This worker's Pythia instance for ``sample``, (re-)initialised with ``seed``.

        Constructing Pythia costs more than initialising it, so each actor keeps one
        instance per sample and re-initialises it per shard; a re-initialised instance
        gives exactly the events of a fresh one with the same seed (tested), so shards
        stay independent of which actor made them.
        """
        pythia = self._instances.get(sample)
        if pythia is None:
            cfg = self.study.sample(sample)
            slha = PROCESSES[cfg.process].slha
            slha_path = None
            if slha:
                slha_path = slha_file(cfg.process, slha)
            pythia = self._pythia8mc.Pythia("", False)
            for line in sample_pythia_settings(self.study, sample, seed, slha_path):
                if not pythia.readString(line):
                    raise ConfigError(f"samples.{sample}: Pythia rejected the setting {line!r}")
            self._instances[sample] = pythia
        else:
            pythia.readString(f"Random:seed = {seed}")
        if not pythia.init():
            raise RunnerError(f"samples.{sample}: Pythia failed to initialise (seed {seed}); see its log above")
        self.pythia = pythia
        return pythia

    def _charge_table(self, pids: np.ndarray) -> dict[int, float]:
        for pid in np.unique(pids):
            if int(pid) not in self._charges:
                self._charges[int(pid)] = self.pythia.particleData.charge(int(pid))
        return self._charges

    def jets_from_batch(self, batch: ak.Array, spec: ShardSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One nextBatch of events -> selected jets (a flat jet batch, see core.jets)."""
        cfg = self.study.sample(spec.sample)
        preset = PROCESSES[cfg.process]
        prt = batch.prt
        if preset.match_ids:
            truth = resonance_truth(prt, preset.match_ids)
            if cfg.keep_only_matched:  # skip events that cannot hold a matched jet
                keep = may_match(truth, len(prt), self.study.jet.pt_window_gev[0], MATCH_DR)
                prt, truth = prt[keep], select_events(truth, keep)
        particles = final_state_particles(prt)
        charges = charges_from_table(particles["pid"], self._charge_table(particles["pid"]))
        constituents = reconstruct(particles, charges, self.study.detector, rng)
        jets = cluster_fat_jets(constituents, self.study.jet)
        if preset.match_ids:
            jets["matched"] = match_jets(jets, truth, MATCH_DR)
            if cfg.keep_only_matched:
                jets = take_jets(jets, jets["matched"])
        else:
            jets["matched"] = np.ones(len(jets["pt"]), dtype=bool)
        return jets

    def arrays(self, jets: dict[str, np.ndarray], label: int) -> dict[str, np.ndarray]:
        """Selected jets -> the store's arrays (see :mod:`jetscan.storage.layout`)."""
        sd_mass, taus = substructure_csr(
            jets["offsets"], jets["c_px"], jets["c_py"], jets["c_pz"], jets["c_e"],
            r0=self.study.jet.r, sd_beta=0.0, sd_zcut=0.1, n_tau=3, tau_beta=1.0,
        )
        padded = padded_constituents(jets, self.study.jet.max_constituents)
        n = len(jets["pt"])
        out = {
            "jets/pt": jets["pt"],
            "jets/eta": jets["eta"],
            "jets/phi": jets["phi"],
            "jets/mass": jets["mass"],
            "jets/sd_mass": sd_mass,
            "jets/tau1": taus[:, 0],
            "jets/tau2": taus[:, 1],
            "jets/tau3": taus[:, 2],
            "jets/n_constituents": np.diff(jets["offsets"]),
            "truth/label": np.full(n, label),
            "truth/matched": jets["matched"],
        }
        out = {k: np.asarray(v).astype(layout.JET_FIELDS[k]) for k, v in out.items()}
        out.update({f"constituents/{k}": v for k, v in padded.items()})
        return out

    def make_arrays(self, spec: ShardSpec) -> tuple[dict[str, np.ndarray], int]:
        """Generate exactly ``spec.n_jets`` jets; returns (arrays, events used)."""
        pythia = self._pythia_for(spec.sample, spec.seed)
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0xDE7EC7]))
        batch_events = self.study.generation.batch_events
        chunks, n_jets, n_events = [], 0, 0
        while n_jets < spec.n_jets:
            batch = pythia.nextBatch(batch_events)
            if len(batch) == 0:
                raise RunnerError(f"samples.{spec.sample}: Pythia stopped producing events (shard {spec.shard})")
            n_events += len(batch)
            jets = self.jets_from_batch(batch, spec, rng)
            jets = take_jets(jets, np.arange(min(len(jets["pt"]), spec.n_jets - n_jets)))
            chunks.append(jets)
            n_jets += len(jets["pt"])
            if n_jets == 0 and n_events >= 50 * batch_events:
                raise RunnerError(
                    f"samples.{spec.sample}: no jet passed the selection in {n_events} events "
                    f"(jet.pt_window_gev {list(self.study.jet.pt_window_gev)}, |eta| < "
                    f"{self.study.jet.abs_eta_max}); widen the window or set samples.{spec.sample}.pthat_min_gev"
                )
        jets = concatenate_jets(chunks)
        label = int(self.study.sample(spec.sample).is_signal)
        return self.arrays(jets, label), n_events

    def make(self, spec: ShardSpec) -> dict:
        """Make one shard, write it, commit it; returns its catalog row."""
        t0 = time.perf_counter()
        arrays, n_events = self.make_arrays(spec)
        root = layout.open_root(self.study.store, mode="r+")
        layout.write_rows(layout.open_sample(root, spec.sample), spec.start, arrays)
        row = {
            "sample": spec.sample,
            "shard": spec.shard,
            "start": spec.start,
            "stop": spec.stop,
            "n_jets": spec.n_jets,
            "n_events": n_events,
            "seed": spec.seed,
            "settings_hash": settings_hash(self.study.generation_settings(spec.sample)),
            "seconds": time.perf_counter() - t0,
            "created_utc": catalog.now_utc(),
            "host": f"{socket.gethostname()}:{os.getpid()}",
            **_versions(),
        }
        catalog.commit_shard(self.study.store, row)
        return row


# ---------------------------------------------------------------------------------- plan


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _changed_keys(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_pythia_settings(study: Study) -> None:
    """Every sample's settings must be accepted by Pythia (checked without init)."""
    import pythia8mc

    for name in study.samples:
        pythia = pythia8mc.Pythia("", False)
        for line in sample_pythia_settings(study, name, seed=1, slha_path="/dev/null"):
            if line.startswith("SLHA:file"):
                continue
            if not pythia.readString(line):
                raise ConfigError(
                    f"samples.{name}.pythia_settings: Pythia does not accept {line!r}; "
                    "check the spelling against the Pythia 8.3 settings index"
                )


def plan(study: Study, samples: Iterable[str] | None = None) -> list[ShardSpec]:
    """Check the study against its store, create what is missing, list the shards to make."""
    names = list(samples) if samples is not None else list(study.samples)
    for name in names:
        study.sample(name)  # raises a ConfigError naming the valid samples
    check_pythia_settings(study)

    store = study.store
    blobs.use_storage_options(store, study.storage_options)
    if "://" not in store:
        p = Path(store)
        if p.exists() and (not p.is_dir() or (any(p.iterdir()) and not (p / "zarr.json").exists())):
            raise StorageError(
                f"store {store!r} exists and is not a jetscan store; choose another 'store' path in the study"
            )
    root = layout.open_root(store, mode="a")
    existing = dict(root.attrs.get("samples", {}))
    # refuse any change before creating anything
    for name in names:
        settings = study.generation_settings(name)
        if name in existing and existing[name]["settings_hash"] != settings_hash(settings):
            old = layout.open_sample(root, name).attrs["settings"]
            changes = "; ".join(_changed_keys(old, settings))
            raise StorageError(
                f"store {store!r} already holds sample {name!r} made with other settings ({changes}). "
                "Nothing was changed. Point 'store' at a new path, or rename the sample."
            )
    for name in names:
        if name in existing:
            continue
        settings = study.generation_settings(name)
        cfg = study.sample(name)
        layout.create_sample(
            root,
            name,
            n_jets=cfg.n_jets,
            shard_jets=study.generation.shard_jets,
            max_constituents=study.jet.max_constituents,
            attrs={
                "process": cfg.process,
                "n_jets": cfg.n_jets,
                "shard_jets": study.generation.shard_jets,
                "settings": settings,
                "settings_hash": settings_hash(settings),
            },
        )
        existing[name] = {"settings_hash": settings_hash(settings), "process": cfg.process}
    root.attrs.update({"jetscan": _versions()["jetscan"], "study": study.name, "samples": existing})

    todo = []
    for name in names:
        done = catalog.committed_shards(store, name)
        cfg = study.sample(name)
        for index, (start, stop) in enumerate(layout.shard_ranges(cfg.n_jets, study.generation.shard_jets)):
            if index not in done:
                todo.append(ShardSpec(name, index, start, stop, pythia_seed(study.seed, name, index)))
    return todo


def generate(
    study: Study,
    *,
    workers: int | None = None,
    address: str | None = None,
    samples: Iterable[str] | None = None,
    use_ray: bool = True,
    on_shard: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Make every missing shard of the study; returns the catalog rows committed now."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    todo = plan(study, samples)
    if not todo:
        return []
    if not use_ray:
        from jetscan.cluster.local import run_local

        return run_local(ShardMaker, (study,), "make", todo, on_result=on_shard)
    from jetscan.cluster.ray import run_actors

    return run_actors(ShardMaker, (study,), "make", todo, workers=workers, address=address, on_result=on_shard)
