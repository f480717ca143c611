"""The ``scan:`` section of a study file: contamination and systematics grids.

Pure config (pydantic, no I/O, no Dask): :mod:`jetscan.jobs.scan` turns a :class:`ScanConfig`
into a Dask graph of cells. Example (``studies/scan-contamination.yaml``)::

    scan:
      contamination:                    # jetscan scan STUDY.yaml contamination
        runs: [dense_ae]                # runs of train.runs (model configurations)
        signal: top                     # the signal mixed into the background training set
        fractions: [0, 0.001, 0.003, 0.01, 0.03, 0.1]   # signal / (signal + background)
        repeats: 3                      # independent training seeds per point (the band)
        params:                         # run parameters, every listed value (a grid)
          adversary.lambda: [0, 1.0e-4, 1.0e-3]
        variations:                     # systematic variants of every sample
          vincia: {shower: vincia}
          tune14: {tune: 14}
          mpi_on: {mpi: true}
          res_up: {detector: {energy_resolution_scale: 1.5}}
          eff_down: {detector: {track_efficiency_scale: 0.9}}
          thr_up: {detector: {ecal_threshold_gev: 1.0, hcal_threshold_gev: 2.0}}
        matrix: true                    # train on each variant, test on every variant
        cut_fpr: 0.1                    # the fixed loss cut: this QCD false-positive rate on the training variant

Axes: ``runs`` x ``params`` x ``fractions`` x ``repeats`` x training variant (``nominal`` and
each variation) x test variant (the training one, or every one with ``matrix: true``). A
cell is one training (train on its variant's background, ``fraction`` of ``signal`` mixed in,
the cell's seed from its name) evaluated on one test variant.

Farina, Nakai & Shih (arXiv:1808.08992) Fig. 8 (contamination 0-10 %); Heimel et al.
(arXiv:1808.08979) sec. 4 (3 % with and without the adversary), Farina et al. sec. 5
(trained on Pythia, tested on Herwig: here Pythia's default shower vs Vincia, tunes, MPI and
the detector model).

A variation produces *variant samples*: the base sample's process and size generated with the
variation's generation/detector settings, stored under ``<sample>__<variation>`` with their own
settings hash (the store refuses a changed sample, so a variant never overwrites the base).
:func:`variant_study_data` and :func:`cell_study_data` build the derived study mappings;
:func:`check_scan` cross-checks a scan against the study (:class:`jetscan.core.study.Study`
calls it), so a bad scan section is one ConfigError before any work.
"""

from __future__ import annotations

import copy
import json
import hashlib
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jetscan.core.splits import split_counts

__all__ = [
    "SHOWERS",
    "TUNE_PP_RANGE",
    "DETECTOR_SCALES",
    "NOMINAL",
    "VariationConfig",
    "ScanConfig",
    "check_scan",
    "variant_sample",
    "base_sample",
    "variant_study_data",
    "cell_study_data",
    "cell_name",
    "contamination_needs",
]

#: showers pythia8mc 8.317 can run (Dire was folded out of Pythia 8.3's build)
SHOWERS = ("simple", "vincia")
#: Tune:pp values of Pythia 8.3 (1-32 in the settings index; 14 is Monash 2013, the default)
TUNE_PP_RANGE = (1, 32)
#: detector scale factors -> the DetectorConfig fields they multiply
DETECTOR_SCALES: dict[str, tuple[str, ...]] = {
    "energy_resolution_scale": ("ecal_resolution_abc", "hcal_resolution_abc"),
    "ecal_resolution_scale": ("ecal_resolution_abc",),
    "hcal_resolution_scale": ("hcal_resolution_abc",),
    "track_resolution_scale": ("track_pt_resolution_constant", "track_pt_resolution_per_gev"),
    "track_efficiency_scale": ("track_efficiency",),
    "threshold_scale": ("ecal_threshold_gev", "hcal_threshold_gev"),
}
NOMINAL = "nominal"
_NAME_RE = r"^[A-Za-z][A-Za-z0-9_\-]*$"
VARIANT_SEP = "__"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariationConfig(_Frozen):
    """One systematic variation of every sample: shower, Pythia tune, MPI, detector model."""

    shower: str | None = Field(None, description="simple (Pythia's default) | vincia")
    tune: int | None = Field(None, description="Pythia Tune:pp (14: Monash 2013)")
    mpi: bool | None = None
    detector: dict[str, Any] = Field(
        default_factory=dict,
        description="scale factors (energy_resolution_scale, track_efficiency_scale, ...) or DetectorConfig fields",
    )

    @field_validator("shower")
    @classmethod
    def _shower(cls, v: str | None) -> str | None:
        if v is not None and v not in SHOWERS:
            raise ValueError(
                f"the generator cannot run shower {v!r}: pythia8mc 8.317 has {', '.join(SHOWERS)} "
                "('simple' is Pythia's default shower; Dire was folded out of Pythia 8.3's build)"
            )
        return v

    @field_validator("tune")
    @classmethod
    def _tune(cls, v: int | None) -> int | None:
        lo, hi = TUNE_PP_RANGE
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"Pythia's Tune:pp takes {lo}..{hi} (14: Monash 2013), got {v}")
        return v

    @field_validator("detector")
    @classmethod
    def _detector(cls, v: dict[str, Any]) -> dict[str, Any]:
        from jetscan.core.study import DetectorConfig

        fields = list(DetectorConfig.model_fields)
        for key, value in v.items():
            if key in DETECTOR_SCALES:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"detector.{key}: a scale factor must be a positive number (got {value!r})")
            elif key not in fields:
                raise ValueError(
                    f"detector.{key}: the detector model has no such setting; scale factors: "
                    f"{', '.join(DETECTOR_SCALES)}; fields: {', '.join(fields)}"
                )
        both = [(s, f) for s in v if s in DETECTOR_SCALES for f in DETECTOR_SCALES[s] if f in v]
        if both:
            raise ValueError(f"detector: {both[0][0]} and {both[0][1]} both set {both[0][1]}; give one")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> VariationConfig:
        if self.shower is None and self.tune is None and self.mpi is None and not self.detector:
            raise ValueError("an empty variation changes nothing: give shower, tune, mpi or detector")
        return self

    def detector_settings(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The varied DetectorConfig mapping (``base``: ``DetectorConfig.model_dump(mode='json')``)."""
        out = copy.deepcopy(dict(base))
        for key, value in self.detector.items():
            if key in DETECTOR_SCALES:
                for field in DETECTOR_SCALES[key]:
                    old = out[field]
                    out[field] = [x * value for x in old] if isinstance(old, (list, tuple)) else old * value
            else:
                out[key] = value
        return out


class ScanConfig(_Frozen):
    """A grid of cells (``jetscan scan STUDY.yaml NAME``)."""

    runs: tuple[str, ...] = Field(min_length=1, description="runs of train.runs (model configurations)")
    signal: str | None = Field(None, description="the signal sample mixed into training (needed for fractions > 0)")
    fractions: tuple[float, ...] = Field((0.0,), min_length=1, description="signal / (signal + background) in training")
    repeats: int = Field(1, ge=1, le=1000, description="independent training seeds per point")
    params: dict[str, tuple[bool | int | float | str, ...]] = Field(
        default_factory=dict, description="run parameter path -> every value to run (hyper.x, adversary.lambda, lr...)"
    )
    variations: dict[str, VariationConfig] = Field(default_factory=dict)
    matrix: bool = Field(False, description="test every training variant on every variant (train row x test column)")
    cut_fpr: float = Field(0.1, gt=0.0, lt=1.0, description="the fixed loss cut: QCD false-positive rate on the training variant")
    n_boot: int = Field(50, ge=2, le=10_000, description="bootstrap resamples of each ROC band")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in v if not 0.0 <= f < 1.0]
        if bad:
            raise ValueError(f"a fraction is signal / (signal + background), in [0, 1): got {bad} (0.03 is 3 %)")
        if len(set(v)) != len(v):
            raise ValueError(f"fractions repeat: {list(v)}")
        return tuple(float(f) for f in v)

    @field_validator("runs")
    @classmethod
    def _runs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"runs repeat: {list(v)}")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, tuple]) -> dict[str, tuple]:
        out = {}
        for path, values in v.items():
            if not values:
                raise ValueError(f"params.{path}: empty list; give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"params.{path}: values repeat: {list(values)}")
            numbers = [x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if any(isinstance(x, float) for x in numbers) and len(numbers) == len(values):
                values = tuple(float(x) for x in values)  # [0, 1.0e-4]: one float column, not int and float
            out[path] = values
        return out

    @field_validator("variations")
    @classmethod
    def _variation_names(cls, v: dict[str, VariationConfig]) -> dict[str, VariationConfig]:
        import re

        for name in v:
            if name == NOMINAL or not re.match(_NAME_RE, name) or VARIANT_SEP in name:
                raise ValueError(
                    f"variation name {name!r}: must start with a letter (letters, digits, '_', '-'), hold no "
                    f"'{VARIANT_SEP}', and not be {NOMINAL!r} (the unvaried samples)"
                )
        return v

    @model_validator(mode="after")
    def _signal_needed(self) -> ScanConfig:
        if any(f > 0 for f in self.fractions) and self.signal is None:
            raise ValueError("fractions above 0 mix a signal into training: add signal: <signal sample>")
        if self.matrix and not self.variations:
            raise ValueError("matrix: true needs variations (the matrix is train variant x test variant)")
        return self

    @property
    def variants(self) -> list[str]:
        return [NOMINAL, *self.variations]

    def param_points(self) -> list[dict[str, Any]]:
        """Every combination of the params values (one empty point when there are none)."""
        points: list[dict[str, Any]] = [{}]
        for path, values in self.params.items():
            points = [{**p, path: value} for p in points for value in values]
        return points


def variant_sample(sample: str, variant: str) -> str:
    return sample if variant == NOMINAL else f"{sample}{VARIANT_SEP}{variant}"


def base_sample(sample: str, variant: str) -> str:
    """The inverse of :func:`variant_sample`: only the variant's own suffix comes off (a sample
    name may itself hold ``__``)."""
    return sample if variant == NOMINAL else sample.removesuffix(f"{VARIANT_SEP}{variant}")


def _rename_runs(data: dict, rename: Mapping[str, str]) -> None:
    for run in data.get("train", {}).get("runs", {}).values():
        run["samples"] = [rename.get(s, s) for s in run["samples"]]
    c = (data.get("data") or {}).get("contamination")
    if c:
        c["signal"] = rename.get(c["signal"], c["signal"])


def variant_study_data(data: Mapping[str, Any], scan: ScanConfig, variant: str) -> dict[str, Any]:
    """The study mapping (``Study.model_dump(mode='json')``) whose samples are ``variant``'s.

    Samples are renamed ``<sample>__<variant>`` (runs and contamination follow), the variation's
    shower / MPI go to ``generation``, its tune to every sample's Pythia settings, its detector
    settings to ``detector``. Searches and scans are dropped (they name the base runs' samples)."""
    out = copy.deepcopy(dict(data))
    out.pop("search", None)
    out.pop("scan", None)
    if variant == NOMINAL:
        return out
    var = scan.variations[variant]
    rename = {s: variant_sample(s, variant) for s in out["samples"]}
    samples = {}
    for name, cfg in out["samples"].items():
        cfg = dict(cfg)
        if var.tune is not None:
            cfg["pythia_settings"] = [*cfg.get("pythia_settings", ()), f"Tune:pp = {var.tune}"]
        samples[rename[name]] = cfg
    out["samples"] = samples
    gen = dict(out.get("generation") or {})
    if var.shower is not None:
        gen["shower"] = var.shower
    if var.mpi is not None:
        gen["mpi"] = var.mpi
    out["generation"] = gen
    if var.detector:
        out["detector"] = var.detector_settings(out.get("detector") or {})
    _rename_runs(out, rename)
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def cell_name(scan_name: str, run: str, params: Mapping[str, Any], fraction: float, repeat: int, train_variant: str,
              settings: str) -> str:
    """``<scan>-<run>-<hash>``: the same cell settings are always the same run (and seed).

    ``settings``: a hash of everything the training's weights depend on apart from its name (the
    base run's settings with the cell's parameters, contamination and variant applied:
    :func:`jetscan.core.run_settings.run_settings` minus ``run``). An edited base run, sample or
    variation so gives new cell runs (training under the old name would meet a checkpoint made
    with other settings), while unchanged settings keep their name and their stored results."""
    key = {"run": run, "params": {k: params[k] for k in sorted(params)}, "fraction": fraction, "repeat": repeat,
           "train_variant": train_variant, "settings": settings}
    return f"{scan_name}-{run}-{_hash(key)}"


def cell_study_data(
    data: Mapping[str, Any],
    scan: ScanConfig,
    *,
    run: str,
    params: Mapping[str, Any],
    fraction: float,
    train_variant: str,
    name: str,
    threads: int | None = 1,
) -> dict[str, Any]:
    """The training variant's study mapping with one more run ``name``: ``run`` with ``params``
    set and ``fraction`` of the scan's signal mixed in (``fraction`` 0: no contamination)."""
    from jetscan.core.search_space import apply_params

    base = copy.deepcopy(dict(data))
    cfg = apply_params(base["train"]["runs"][run], params)
    cfg.pop("contamination", None)  # the cell's fraction of the scan's signal, not the run's own mix
    if fraction > 0:
        base.setdefault("data", {})["contamination"] = {"signal": scan.signal, "fraction": fraction}
        cfg["contaminated"] = True
    else:
        base.setdefault("data", {})["contamination"] = None
        cfg["contaminated"] = False
    base["train"]["runs"] = {name: cfg}
    if threads:
        base["train"]["threads"] = threads
    return variant_study_data(base, scan, train_variant)


def contamination_needs(n_background: int, fraction: float) -> int:
    """Signal jets the loader mixes into ``n_background`` jets for ``fraction`` (its rounding)."""
    return int(round(fraction * n_background / (1.0 - fraction)))


def _split_jets(sample: Any, splits: Any, split: str) -> int:
    """Jets of ``sample`` in ``split``, counted as the loader splits them."""
    share = sample.split_config(splits)
    return split_counts(sample.n_jets, (share.train, share.val, share.test))[("train", "val", "test").index(split)]


def check_scan(name: str, scan: ScanConfig, runs: Mapping[str, Any], samples: Mapping[str, Any], splits: Any) -> None:
    """Cross-check a scan against the study's runs, samples and splits (ValueError naming the key).

    ``runs``: {name: RunConfig}; ``samples``: {name: SampleConfig}; ``splits``: SplitConfig.
    Run parameters are checked like a search's space (every value applied to every run); a
    fraction must find enough signal jets in the training and validation splits."""
    from jetscan.core.search_space import ParamSpec, SearchConfig, check_search

    key = f"scan.{name}"
    for run in scan.runs:
        if run not in runs:
            raise ValueError(f"{key}.runs: no run named {run!r}; runs: {', '.join(runs) or 'none'}")
    if scan.params:
        for run in scan.runs:
            probe = SearchConfig(run=run, space={p: ParamSpec(choices=v) for p, v in scan.params.items()})
            try:
                check_search(name, probe, runs, samples)
            except ValueError as exc:
                raise ValueError(str(exc).replace(f"search.{name}.space.", f"{key}.params.")) from None
    if scan.signal is not None:
        if scan.signal not in samples:
            raise ValueError(f"{key}.signal: no sample named {scan.signal!r}; samples: {', '.join(samples)}")
        if not samples[scan.signal].is_signal:
            raise ValueError(f"{key}.signal: sample {scan.signal!r} is background, not a signal")
        n_sig = samples[scan.signal].n_jets
        for run in scan.runs:
            background = [s for s in runs[run].samples if not samples[s].is_signal]
            if scan.signal in runs[run].samples:
                raise ValueError(f"{key}.signal: {scan.signal!r} is already a training sample of run {run!r}")
            for split in ("train", "val"):
                signal_share = getattr(samples[scan.signal].split_config(splits), split)
                if signal_share == 0.0 and any(f > 0 for f in scan.fractions):
                    raise ValueError(
                        f"{key}.fractions: samples.{scan.signal}.splits gives its {split} split no jets, so "
                        f"nothing can contaminate run {run!r}'s {split} set: give {scan.signal!r} a {split} share"
                    )
                have = _split_jets(samples[scan.signal], splits, split)
                n_bkg = sum(_split_jets(samples[s], splits, split) for s in background)
                for f in scan.fractions:
                    need = contamination_needs(n_bkg, f)
                    if need > have:
                        raise ValueError(
                            f"{key}.fractions: {f} needs {need} {scan.signal!r} jets in the {split} split of run "
                            f"{run!r} ({n_bkg} background jets) but the split holds {have} of its {n_sig}: "
                            f"raise samples.{scan.signal}.n_jets to at least {-(-need * n_sig // max(have, 1))}, "
                            "or lower the fraction"
                        )
    if not any(s.is_signal for s in samples.values()):
        raise ValueError(f"{key}: the study has no signal sample to evaluate the cells against")
