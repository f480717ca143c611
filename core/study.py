"""The study file: one YAML document validated by pydantic before any work starts.

YAML is only the saved form; :meth:`Study.from_yaml` builds frozen config models and turns
every validation problem into one :class:`~jetscan.core.errors.ConfigError` that names the
key path, the rule and the offending value, e.g.::

    jet.pt_window_gev: lower edge 650.0 must be below upper edge 550.0 (got [650.0, 550.0])

Example (``studies/quickstart.yaml``)::

    name: quickstart
    store: quickstart.zarr
    seed: 20260101
    sqrt_s_gev: 14000
    jet: {r: 0.8, pt_window_gev: [550, 650], abs_eta_max: 2.0}
    samples:
      qcd: {process: qcd_dijet, n_jets: 2000}
      top: {process: top_hadronic, n_jets: 2000}
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jetscan.core.errors import ConfigError
from jetscan.core.processes import PROCESSES
from jetscan.core.scan_space import ScanConfig, check_scan
from jetscan.core.search_space import SearchConfig, check_search

__all__ = [
    "REPRESENTATION_PRESETS",
    "RepresentationConfig",
    "PreprocessConfig",
    "SplitConfig",
    "ContaminationConfig",
    "DataConfig",
    "AdversaryConfig",
    "RunConfig",
    "TrainConfig",
    "JetConfig",
    "DetectorConfig",
    "GenerationConfig",
    "SampleConfig",
    "Study",
    "config_error_from",
    "settings_hash",
]

_NAME_RE = r"^[A-Za-z][A-Za-z0-9_\-]*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JetConfig(_Frozen):
    """Fat-jet definition and fiducial selection."""

    algorithm: Literal["antikt"] = "antikt"
    r: float = Field(0.8, gt=0.0, le=2.0, description="jet radius R")
    pt_window_gev: tuple[float, float] = (550.0, 650.0)
    abs_eta_max: float = Field(2.0, gt=0.0, le=5.0)
    max_constituents: int = Field(
        200, ge=1, le=2000, description="constituents kept per jet (pT-ordered, zero padded)"
    )

    @field_validator("pt_window_gev")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if lo < 0:
            raise ValueError(f"lower edge {lo} must be >= 0")
        if not lo < hi:
            raise ValueError(f"lower edge {lo} must be below upper edge {hi}")
        return v


class DetectorConfig(_Frozen):
    """Particle-flow-like detector, defaults close to Delphes' CMS card.

    Charged particles inside the tracker become tracks (efficiency, pT smearing); muons
    inside the muon system are flagged; everything else visible (photons, neutral hadrons,
    charged particles the tracker missed) lands in calorimeter towers (ECAL for photons and
    electrons, HCAL for hadrons) whose energies are smeared and thresholded.
    """

    tracker_abs_eta_max: float = Field(2.5, gt=0.0)
    track_pt_min_gev: float = Field(0.5, ge=0.0)
    track_efficiency: float = Field(0.95, ge=0.0, le=1.0)
    track_pt_resolution_constant: float = Field(0.01, ge=0.0, description="sigma(pT)/pT at low pT")
    track_pt_resolution_per_gev: float = Field(1.5e-4, ge=0.0, description="sigma(pT)/pT^2 term, 1/GeV")
    muon_abs_eta_max: float = Field(2.4, gt=0.0)
    muon_pt_min_gev: float = Field(3.0, ge=0.0)
    muon_efficiency: float = Field(0.95, ge=0.0, le=1.0)
    calo_abs_eta_max: float = Field(3.0, gt=0.0)
    ecal_cell: float = Field(0.0174, gt=0.0, description="ECAL tower size in eta and phi")
    hcal_cell: float = Field(0.087, gt=0.0, description="HCAL tower size in eta and phi")
    # sigma(E)^2 = (a E)^2 + b^2 E + c^2, E in GeV (Delphes CMS parameterisation)
    ecal_resolution_abc: tuple[float, float, float] = (0.007, 0.07, 0.35)
    hcal_resolution_abc: tuple[float, float, float] = (0.05, 1.5, 0.0)
    ecal_threshold_gev: float = Field(0.5, ge=0.0)
    hcal_threshold_gev: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _acceptance(self) -> DetectorConfig:
        if self.muon_abs_eta_max > self.tracker_abs_eta_max:
            raise ValueError(
                f"muon_abs_eta_max {self.muon_abs_eta_max} must not exceed "
                f"tracker_abs_eta_max {self.tracker_abs_eta_max} (muons need a track)"
            )
        return self


class GenerationConfig(_Frozen):
    """How events are made: shards, Pythia switches shared by all samples."""

    shard_jets: int = Field(2000, ge=10, le=1_000_000, description="jets per shard (one Ray call)")
    mpi: bool = Field(False, description="multi-parton interactions (off in the seed papers)")
    hadronization: bool = True
    shower: Literal["simple", "vincia", "dire"] = "simple"
    batch_events: int = Field(200, ge=1, le=100_000, description="events per Pythia.nextBatch call")

    @field_validator("shower")
    @classmethod
    def _shower_available(cls, v: str) -> str:
        if v == "dire":
            raise ValueError(
                "'dire' is not in pythia8mc 8.317 (Dire was folded out of Pythia 8.3's build); "
                "use 'simple' (Pythia's default shower) or 'vincia'"
            )
        return v


class SplitConfig(_Frozen):
    """Per-sample jet-level train / validation / test fractions (a seeded permutation)."""

    train: float = Field(0.6, ge=0.0, le=1.0)
    val: float = Field(0.2, ge=0.0, le=1.0)
    test: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + val + test must be 1, got {total:g} ({self.train}, {self.val}, {self.test})")
        return self


class SampleConfig(_Frozen):
    """One named sample: a process preset and how many selected jets to make."""

    process: str
    n_jets: int = Field(gt=0, le=100_000_000)
    pthat_min_gev: float | None = Field(None, ge=0.0)
    pthat_max_gev: float | None = Field(None, gt=0.0)
    require_match: bool | None = Field(
        None, description="keep only truth-matched jets (default: yes for signal processes)"
    )
    pythia_settings: tuple[str, ...] = Field((), description="extra Pythia readString lines")
    splits: SplitConfig | None = Field(
        None,
        description="this sample's own train / val / test fractions in place of data.splits: "
        "{train: 0, val: 0, test: 1} for a signal that only tests (no jet generated for nothing)",
    )

    @field_validator("process")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PROCESSES:
            raise ValueError(f"unknown process {v!r}; valid processes: {', '.join(sorted(PROCESSES))}")
        return v

    @model_validator(mode="after")
    def _pthat(self) -> SampleConfig:
        if (
            self.pthat_min_gev is not None
            and self.pthat_max_gev is not None
            and self.pthat_min_gev >= self.pthat_max_gev
        ):
            raise ValueError(
                f"pthat_min_gev {self.pthat_min_gev} must be below pthat_max_gev {self.pthat_max_gev}"
            )
        return self

    @property
    def is_signal(self) -> bool:
        return PROCESSES[self.process].is_signal

    def split_config(self, default: SplitConfig) -> SplitConfig:
        """This sample's train / val / test fractions: its own ``splits``, else ``default`` (data.splits)."""
        return self.splits or default

    @property
    def keep_only_matched(self) -> bool:
        return self.is_signal if self.require_match is None else self.require_match


#: representation presets: the image presets of jetscan.core.images, LoLa 4-vectors, jet features
REPRESENTATION_PRESETS = ("heimel40", "heimel40_centred", "heimel40_max", "ms37x4", "ms37", "lola40", "highlevel")


class RepresentationConfig(_Frozen):
    """One network input, stored as ``<sample>/inputs/<name>``.

    ``preset`` picks the recipe; image keys override single settings of an image preset, so
    another paper's convention is a config change (``n_pixels: [33, 33]``...).
    """

    preset: Literal["heimel40", "heimel40_centred", "heimel40_max", "ms37x4", "ms37", "lola40", "highlevel"]
    n_pixels: tuple[int, int] | None = None
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    colours: tuple[str, ...] | None = None
    centre: bool | None = None
    rotate: bool | None = None
    flip: bool | None = None
    normalise: Literal["sum", "total_pt", "max"] | None = None
    n_constituents: int = Field(40, ge=1, le=2000, description="leading constituents kept (lola40)")

    @model_validator(mode="after")
    def _fits_preset(self) -> RepresentationConfig:
        image_keys = ("n_pixels", "x_range", "y_range", "colours", "centre", "rotate", "flip", "normalise")
        if self.preset in ("lola40", "highlevel"):
            bad = [k for k in image_keys if getattr(self, k) is not None]
            if bad:
                raise ValueError(f"{', '.join(bad)} only apply to image presets, not to {self.preset!r}")
        for key in ("x_range", "y_range"):
            rng = getattr(self, key)
            if rng is not None and not rng[0] < rng[1]:
                raise ValueError(f"{key}: lower edge {rng[0]} must be below upper edge {rng[1]}")
        if self.n_pixels is not None and min(self.n_pixels) < 1:
            raise ValueError(f"n_pixels must be positive, got {list(self.n_pixels)}")
        if self.colours is not None:
            from jetscan.core.images import COLOURS

            unknown = [c for c in self.colours if c not in COLOURS]
            if unknown or not self.colours:
                raise ValueError(f"unknown colours {unknown}; colours: {', '.join(COLOURS)}")
        return self


class PreprocessConfig(_Frozen):
    """Which network inputs ``jetscan preprocess`` stores beside the jets."""

    representations: dict[str, RepresentationConfig] = Field(
        default_factory=lambda: {"heimel40": RepresentationConfig(preset="heimel40")}
    )

    @field_validator("representations", mode="before")
    @classmethod
    def _preset_from_name(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):  # a plain list of preset names
            v = {name: {} for name in v}
        if isinstance(v, dict):
            v = {k: ({"preset": k, **(c or {})} if k in REPRESENTATION_PRESETS and "preset" not in (c or {}) else c)
                 for k, c in v.items()}
        return v

    @field_validator("representations")
    @classmethod
    def _names(cls, v: dict[str, RepresentationConfig]) -> dict[str, RepresentationConfig]:
        for name in v:
            if not re.match(_NAME_RE, name):
                raise ValueError(f"representation name {name!r} must start with a letter (letters, digits, '_', '-')")
        return v


class ContaminationConfig(_Frozen):
    """Mix signal jets into a background training set: signal / (signal + background) = fraction."""

    signal: str
    fraction: float = Field(ge=0.0, lt=1.0)


class DataConfig(_Frozen):
    """How training data is read: splits, contamination, batching and streaming."""

    splits: SplitConfig = SplitConfig()
    contamination: ContaminationConfig | None = None
    batch_size: int = Field(128, ge=1, le=1_000_000)
    shuffle_buffer_jets: int = Field(4096, ge=0, description="jets held for shuffling (0: chunk order only)")
    prefetch_chunks: int = Field(4, ge=0, le=64, description="chunks read ahead by background threads")
    cache_mb: int = Field(
        1024,
        ge=0,
        description="bound on the decoded bytes a stream holds (cache + shuffle buffer + read-ahead); the cache "
        "keeps chunks across epochs in what the other two leave (0: no cache)",
    )
    decode_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        exclude_if=lambda v: v is None,  # a performance knob: at its default it stays out of dumps and run hashes
        description="threads reading and decoding chunks (decompression releases the GIL); default: one per CPU "
        "this process may use beyond the training loop's own, at most 4 (1 on 2 cores: more threads beside a "
        "Python training loop on 2 cores slowed it, benchmarks/loader.py); the batches do not depend on it",
    )
    decode_process: bool | Literal["auto"] = Field(
        "auto",
        exclude_if=lambda v: v == "auto",  # a performance knob: at its default it stays out of dumps and run hashes
        description="make the batches (reads, decompression, shuffling) in a child process forked from the "
        "consumer, which takes them from shared memory, so a Python training loop never waits for the decode "
        "threads' GIL (false, or a platform without fork: threads in the consumer's process; auto: the child "
        "only for a stream whose decoded jets do not fit its cache, which decodes every epoch, and whose reads "
        "hold the GIL (computed on the fly, or read through zarr); one that fits is decoded once, in the "
        "consumer's process, and served from the cache, and one read directly from its shard files on a local "
        "disk decodes in threads of the consumer's process); the batches do not depend on it",
    )
    batches_ahead: int = Field(
        4,
        ge=0,
        le=64,
        exclude_if=lambda v: v == 4,  # a performance knob: at its default it stays out of dumps and run hashes
        description="batches assembled ahead (shuffle buffer, gathers) by a background thread, so the consumer "
        "only takes ready batches (0: assembled in the consumer's thread); the batches do not depend on it",
    )
    virtual_ranks: int = Field(
        1,
        ge=1,
        le=4096,
        description="data-parallel: the epoch is read as this many disjoint streams whose sub-batches make each "
        "global batch, so any world size dividing it takes the same steps (1: the world size)",
    )


class AdversaryConfig(_Frozen):
    """Mass decorrelation (Heimel et al. sec. 2.3): an adversary predicts the jet-mass bin."""

    adv_lambda: float = Field(5e-4, ge=0.0, description="L = L_auto - adv_lambda * L_adv")
    mass_bins: int = Field(10, ge=2, le=200, description="equal-population QCD mass bins (+2 overflow)")
    lr: float = Field(1e-3, gt=0.0, description="adversary learning rate (Adam)")


class RunConfig(_Frozen):
    """One training run: a registered model, its hyperparameters and its data."""

    model: str
    hyper: dict[str, float | int | bool] = Field(default_factory=dict, description="e.g. bottleneck, lr")
    representation: str | None = Field(None, description="default: the model's own input preset")
    samples: tuple[str, ...] = Field(description="training samples (background only for autoencoders)")
    contaminated: bool = Field(False, description="mix data.contamination's signal into the training set")
    contamination: ContaminationConfig | None = Field(
        None,
        exclude_if=lambda v: v is None,  # absent: the dumps and run hashes of every other run stay as they were
        description="this run's own signal mix, in place of data.contamination (e.g. Farina et al.'s bump hunt: "
        "gluinos at 1e-3 in a study whose data.contamination is tops); needs contaminated: true",
    )
    epochs: int = Field(10, ge=1, le=10_000)
    patience: int = Field(10, ge=1, le=10_000, description="early stopping: epochs without improvement")
    batch_size: int | None = Field(None, ge=1, le=1_000_000, description="default: the paper's")
    optimizer: Literal["paper", "adam", "sgd", "adadelta"] = Field(
        "paper", description="the paper's optimizer, or another one (small samples train faster with adam)"
    )
    lr: float | None = Field(None, gt=0.0, description="learning rate (default: the paper's, or 1e-3 for adam)")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="data parallel: 'none' keeps batch_size the global batch (any number of workers takes the "
        "same steps); 'linear' / 'sqrt' make batch_size the per-worker batch and multiply lr by the world size "
        "or its square root (Goyal et al. 2017)",
    )
    warmup_epochs: float = Field(
        0.0, ge=0.0, le=1000.0, description="epochs over which lr rises from its one-worker value to the scaled one"
    )
    adversary: AdversaryConfig | None = None
    max_fit_jets: int = Field(200_000, ge=10, description="PCA: jets used for the fit")
    max_train_jets: int | None = Field(
        None,
        ge=1,
        exclude_if=lambda v: v is None,  # absent: the dumps and run hashes of every other run stay as they were
        description="train on a seeded random subset of this many jets of the training split, and validate on "
        "the same share of the validation split (the test split stays whole); for a model too slow for the "
        "paper's size on the hardware at hand (Farina et al.'s CNN AE on 2 CPU cores); results name the size",
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from jetscan.core.models import available_models

        if v not in available_models():
            raise ValueError(f"unknown model {v!r}; models: {', '.join(available_models())}")
        return v


class TrainConfig(_Frozen):
    """The study's training runs (``jetscan train STUDY --model RUN``)."""

    runs: dict[str, RunConfig] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="mixed precision (bfloat16) on CUDA")
    amp_cpu: bool = Field(
        False,
        description="bfloat16 autocast on the CPU as well (training steps only; validation and evaluation stay "
        "float32): the CNNs train 1.9-2.4x faster on CPUs with bfloat16 units (AVX512-BF16, AMX); off by default, so "
        "CPU runs stay float32; an error on a CPU without such units, where it would be slower",
    )
    threads: int = Field(0, ge=0, description="torch CPU threads (0: one per core)")


class Study(_Frozen):
    """A whole study: where it is stored, its seed, collider, jets, detector and samples."""

    name: str = Field(pattern=_NAME_RE)
    store: str = Field(min_length=1, description="local path or fsspec URL of the zarr store")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options of an object store (e.g. {client_kwargs: {endpoint_url: ...}}); "
        "credentials come from the environment, never from the study",
    )
    seed: int = Field(ge=0, lt=2**63)
    sqrt_s_gev: float = Field(14000.0, gt=0.0)
    jet: JetConfig = JetConfig()
    detector: DetectorConfig = DetectorConfig()
    generation: GenerationConfig = GenerationConfig()
    samples: dict[str, SampleConfig]
    preprocess: PreprocessConfig = PreprocessConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    search: dict[str, SearchConfig] = Field(default_factory=dict, description="jetscan search STUDY NAME")
    scan: dict[str, ScanConfig] = Field(default_factory=dict, description="jetscan scan STUDY NAME")

    @field_validator("samples")
    @classmethod
    def _sample_names(cls, v: dict[str, SampleConfig]) -> dict[str, SampleConfig]:
        if not v:
            raise ValueError("a study needs at least one sample, e.g. qcd: {process: qcd_dijet, n_jets: 1000}")
        for name in v:
            if not re.match(_NAME_RE, name):
                raise ValueError(
                    f"sample name {name!r} must start with a letter and hold only letters, digits, '_' or '-'"
                )
        return v

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, v: dict[str, Any]) -> dict[str, Any]:
        def keys(d, prefix=""):
            for k, x in d.items():
                yield f"{prefix}{k}"
                if isinstance(x, dict):
                    yield from keys(x, f"{prefix}{k}.")

        secret = [k for k in keys(v) if re.search(r"secret|password|token|credential|private_key|(^|[._])key$", k, re.I)]
        if secret:
            raise ValueError(
                f"{', '.join(secret)}: credentials do not belong in the study (it is copied into logs and jobs); "
                "set them in the environment instead (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                "GOOGLE_APPLICATION_CREDENTIALS, ...)"
            )
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> Study:
        c = self.data.contamination
        if c is not None and c.signal not in self.samples:
            raise ValueError(
                f"data.contamination.signal: no sample named {c.signal!r}; samples: {', '.join(self.samples)}"
            )
        for name, run in self.train.runs.items():
            missing = [s for s in run.samples if s not in self.samples]
            if missing:
                one = len(missing) == 1
                raise ValueError(
                    f"train.runs.{name}.samples: no sample{'' if one else 's'} named {', '.join(map(repr, missing))} "
                    f"(run {name!r} trains on {'it' if one else 'them'}); the study's samples: "
                    f"{', '.join(self.samples)}; fix the name, or add the sample under samples:"
                )
            if run.representation is not None and run.representation not in self.preprocess.representations:
                raise ValueError(
                    f"train.runs.{name}.representation: {run.representation!r} is not in "
                    f"preprocess.representations ({', '.join(self.preprocess.representations)})"
                )
            own = run.contamination
            if run.contaminated and c is None and own is None:
                raise ValueError(
                    f"train.runs.{name}.contaminated: needs data.contamination or the run's own contamination "
                    "(signal, fraction)"
                )
            if own is not None and not run.contaminated:
                raise ValueError(
                    f"train.runs.{name}.contamination: set contaminated: true as well (the run mixes "
                    f"{own.signal!r} in), or drop contamination"
                )
            if own is not None and (own.signal not in self.samples or own.signal in run.samples):
                raise ValueError(
                    f"train.runs.{name}.contamination.signal: {own.signal!r} must be a sample of the study and not "
                    f"one of the run's training samples; samples: {', '.join(self.samples)}"
                )
            self._check_split_shares(name, run, own or (c if run.contaminated else None))
        return self

    def _check_split_shares(self, name: str, run: RunConfig, mixed: ContaminationConfig | None) -> None:
        """A run's training samples need training jets; a signal it mixes in needs training and
        validation jets (both sets are contaminated), whatever the sample's own ``splits`` say."""
        needs = [(s, ("train",)) for s in run.samples] + ([(mixed.signal, ("train", "val"))] if mixed else [])
        for sample, splits in needs:
            train, val, _ = self.split_fractions(sample)
            for split in splits:
                if {"train": train, "val": val}[split] == 0.0:
                    how = "trains on it" if sample in run.samples else "mixes it into its training and validation sets"
                    raise ValueError(
                        f"samples.{sample}.splits: {split} is 0, but run {name!r} {how}; give {sample!r} a "
                        f"{split} share, or take it out of the run"
                    )

    @model_validator(mode="after")
    def _searches(self) -> Study:
        for name, search in self.search.items():
            if not re.match(_NAME_RE, name):
                raise ValueError(f"search name {name!r} must start with a letter (letters, digits, '_', '-')")
            check_search(name, search, self.train.runs, self.samples, self.data.splits)
        return self

    @model_validator(mode="after")
    def _scans(self) -> Study:
        for name, scan in self.scan.items():
            if not re.match(_NAME_RE, name):
                raise ValueError(f"scan name {name!r} must start with a letter (letters, digits, '_', '-')")
            check_scan(name, scan, self.train.runs, self.samples, self.data.splits)
        return self

    def run(self, name: str) -> RunConfig:
        try:
            return self.train.runs[name]
        except KeyError:
            raise ConfigError(
                f"train.runs: no run named {name!r}; runs: {', '.join(self.train.runs) or 'none'}"
            ) from None

    def background_samples(self, name: str) -> list[str]:
        """The samples run ``name`` trains on that are not signals, in its order (the first is the
        background its results are measured against)."""
        return [s for s in self.run(name).samples if not self.sample(s).is_signal]

    def for_run(self, name: str) -> Study:
        """The study as run ``name`` trains on it: the run's own ``contamination``, if it has one, in
        place of ``data.contamination`` (where the loader, the run's settings hash and its results
        read it); otherwise the study itself."""
        own = self.run(name).contamination
        if own is None:
            return self
        return self.model_copy(update={"data": self.data.model_copy(update={"contamination": own})})

    def representation(self, name: str) -> RepresentationConfig:
        try:
            return self.preprocess.representations[name]
        except KeyError:
            raise ConfigError(
                f"preprocess.representations: no representation named {name!r}; the study has "
                f"{', '.join(self.preprocess.representations) or 'none'} (presets: {', '.join(REPRESENTATION_PRESETS)})"
            ) from None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: Any, *, source: str = "study") -> Study:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a study must be a mapping of keys to values, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error_from(exc, cls, source=source) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Study:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"study file {str(path)!r} does not exist: pass the path of a study YAML file")
        try:
            with path.open("rb") as stream:  # a file stream: PyYAML's messages name the file
                data = yaml.safe_load(stream)
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_error(path, exc)) from None
        study = cls.from_dict(data, source=str(path))
        store = study.store
        if "://" not in store and not Path(store).is_absolute():
            # a relative store path is relative to the study file, not to the shell's cwd
            study = study.model_copy(update={"store": str((path.parent / store).resolve())})
        return study

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def sample(self, name: str) -> SampleConfig:
        try:
            return self.samples[name]
        except KeyError:
            raise ConfigError(
                f"samples: no sample named {name!r} in study {self.name!r}; samples: {', '.join(self.samples)}"
            ) from None

    def generation_settings(self, sample: str) -> dict[str, Any]:
        """Everything that determines the jets of one sample (what its hash covers)."""
        return {
            "sqrt_s_gev": self.sqrt_s_gev,
            "seed": self.seed,
            "jet": self.jet.model_dump(mode="json"),
            "detector": self.detector.model_dump(mode="json"),
            "generation": self.generation.model_dump(mode="json"),
            # the splits say how jets are used, not which jets are made
            "sample": {"name": sample, **self.sample(sample).model_dump(mode="json", exclude={"splits"})},
        }

    def split_fractions(self, sample: str) -> tuple[float, float, float]:
        """(train, val, test) fractions of ``sample``: its own ``splits`` or ``data.splits``."""
        s = self.sample(sample).split_config(self.data.splits)
        return (s.train, s.val, s.test)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """``studies/x.yaml, line 3, column 5: not valid YAML: <problem> (<context>, line L, column C)``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:  # e.g. a byte that is not UTF-8: PyYAML names the file itself
        return f"{path}: not valid YAML: {exc}"
    text = f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"
    context, where = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        text += f" ({context}" + (f", line {where.line + 1}, column {where.column + 1})" if where else ")")
    return text


def settings_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able settings mapping."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk a pydantic model along an error location to list the keys valid there."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:  # dict[str, Model]: skip the free key
            args = getattr(current, "__args__", ())
            current = args[-1] if args else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def config_error_from(exc: ValidationError, model: type[BaseModel], *, source: str) -> ConfigError:
    """Turn a pydantic ValidationError into one ConfigError naming each key, rule and value."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc)
            hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
            lines.append(f"{key}: unknown key{hint}")
        elif err["type"] == "missing":
            hint = f" (presets: {', '.join(REPRESENTATION_PRESETS)})" if loc[-1] == "preset" else ""
            lines.append(f"{key}: required key is missing{hint}")
        elif not loc:  # a cross-reference check: its message names the key; the input is the whole study
            lines.append(msg)
        elif loc[0] == "storage_options":  # never echo what may be a credential
            lines.append(f"{key}: {msg}")
        else:
            lines.append(f"{key}: {msg} (got {err.get('input')!r})")
    return ConfigError(f"{source}: invalid study\n  " + "\n  ".join(lines))
