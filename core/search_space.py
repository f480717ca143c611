"""The ``search:`` section of a study file: hyper-parameter searches over one run.

Pure config (pydantic, no I/O, no optuna): ``jetscan.jobs.search`` turns a
:class:`SearchConfig` into an Optuna study. Example (``studies/search-bottleneck.yaml``)::

    search:
      bottleneck:                       # jetscan search STUDY.yaml bottleneck
        run: dense                      # a run of train.runs, the base of every trial
        space:
          hyper.bottleneck: {int: [2, 34], step: 4}
          lr: {float: [1.0e-4, 1.0e-2], log: true}
        objectives: [val_loss, {metric: auc, signal: top}]
        sampler: nsga2                  # tpe | nsga2 | grid | random (default: tpe, or nsga2 for 2+ objectives)
        pruner: none                    # none | median (single objective only)
        trials: 12

A parameter is ``hyper.<name>`` (a hyperparameter of the run's model), ``adversary.<field>``
(``adversary.lambda`` is ``adversary.adv_lambda``; the run needs an ``adversary`` section) or a
plain run field (``lr``, ``epochs``, ``batch_size``, ``patience``, ``warmup_epochs``,
``max_fit_jets``, ``optimizer``...). Objectives are the validation loss of training (for an
adversarial run the AE's objective ``L_auto - lambda L_adv``) and the metrics of evaluation
(``jetscan.storage.results``): ``auc``, ``inv_eb_at_0p3`` (alias
``inv_eps_b``), ``e10``, ``e100`` against a named signal sample, and the background
mass-sculpting JSDs ``jsd_50``, ``jsd_80``, ``jsd_95`` (alias ``sculpting`` = ``jsd_50``).

:func:`check_search` does the cross-checks against the study (run, parameter paths and their
end points, signals); :func:`jetscan.core.study.Study` calls it, so a bad search section is
one ConfigError before any trial starts.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jetscan.core.splits import split_counts

__all__ = [
    "METRICS",
    "METRIC_ALIASES",
    "ParamSpec",
    "Objective",
    "SearchConfig",
    "check_search",
    "check_objectives",
    "canonical_path",
    "apply_params",
    "grid_values",
]

#: objective metric -> default direction
METRICS: dict[str, str] = {
    "val_loss": "minimize",
    "auc": "maximize",
    "inv_eb_at_0p3": "maximize",
    "e10": "maximize",
    "e100": "maximize",
    "jsd_50": "minimize",
    "jsd_80": "minimize",
    "jsd_95": "minimize",
}
METRIC_ALIASES = {"inv_eps_b": "inv_eb_at_0p3", "sculpting": "jsd_50", "val": "val_loss"}
#: metrics compared against a signal sample (the others are background-only)
SIGNAL_METRICS = ("auc", "inv_eb_at_0p3", "e10", "e100")
#: run fields a search may not vary (they name data, not hyper-parameters)
_FIXED_FIELDS = ("model", "samples", "representation", "contaminated", "hyper", "adversary")
_PATH_ALIASES = {"adversary.lambda": "adversary.adv_lambda"}

SAMPLERS = ("tpe", "nsga2", "grid", "random")
PRUNERS = ("none", "median")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ParamSpec(_Frozen):
    """One dimension: ``{int: [lo, hi], step: s}``, ``{float: [lo, hi], log: true}`` or ``{choices: [...]}``."""

    int_range: tuple[int, int] | None = Field(None, alias="int")
    float_range: tuple[float, float] | None = Field(None, alias="float")
    choices: tuple[bool | int | float | str, ...] | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        given = [k for k, v in (("int", self.int_range), ("float", self.float_range), ("choices", self.choices)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of int: [lo, hi], float: [lo, hi] or choices: [...] (got {given or 'none'})"
            )
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices: empty list; give at least one value")
            if self.step is not None or self.log:
                raise ValueError("step and log apply to int and float ranges, not to choices")
            return self
        lo, hi = self.int_range if self.int_range is not None else self.float_range
        if not lo < hi:
            raise ValueError(f"empty range: lower end {lo} must be below upper end {hi}")
        if self.log and lo <= 0:
            raise ValueError(f"log: true needs a positive lower end (got {lo})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples either on a log scale or on a grid)")
        if self.int_range is not None and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an int range needs an integer step (got {self.step})")
        return self

    @property
    def kind(self) -> str:
        return "int" if self.int_range is not None else ("float" if self.float_range is not None else "choices")

    @property
    def ends(self) -> tuple[Any, ...]:
        """The values a trial can take at the edges (the choices themselves for ``choices``)."""
        if self.choices is not None:
            return tuple(self.choices)
        lo, hi = self.int_range if self.int_range is not None else self.float_range
        return (lo, hi)


class Objective(_Frozen):
    """One objective: a metric, the signal it is measured against, and its direction."""

    metric: str
    signal: str | None = None
    direction: Literal["minimize", "maximize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, v: Any) -> Any:
        if isinstance(v, str):  # "val_loss" or "auc:top"
            metric, _, signal = v.partition(":")
            return {"metric": metric, **({"signal": signal} if signal else {})}
        return v

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        v = METRIC_ALIASES.get(v, v)
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; metrics: {', '.join(METRICS)} (aliases: {', '.join(METRIC_ALIASES)})")
        return v

    @model_validator(mode="after")
    def _signal(self) -> Objective:
        if self.metric in SIGNAL_METRICS and self.signal is None:
            raise ValueError(f"metric {self.metric!r} is measured against a signal: add signal: <sample>")
        if self.metric not in SIGNAL_METRICS and self.signal is not None:
            raise ValueError(f"metric {self.metric!r} does not depend on a signal; drop signal: {self.signal}")
        return self

    @property
    def sense(self) -> str:
        return self.direction or METRICS[self.metric]

    @property
    def label(self) -> str:
        return self.metric if self.signal is None else f"{self.metric}[{self.signal}]"


class SearchConfig(_Frozen):
    """A hyper-parameter search over one run (``jetscan search STUDY.yaml NAME``)."""

    run: str = Field(description="the run of train.runs every trial starts from")
    space: dict[str, ParamSpec] = Field(description="parameter path -> range")
    objectives: tuple[Objective, ...] = Field((Objective(metric="val_loss"),), min_length=1)
    sampler: Literal["auto", "tpe", "nsga2", "grid", "random"] = "auto"
    pruner: Literal["none", "median"] = "none"
    trials: int = Field(10, ge=1, le=100_000, description="COMPLETE (or pruned) trials the search ends with")
    seed: int | None = Field(None, ge=0, description="sampler seed (each worker adds its index)")
    keep_weights: Literal["best", "all"] = Field(
        "best", description="checkpoints kept at the end: the best trial (the Pareto front for 2+ objectives), or all"
    )
    heartbeat_seconds: int = Field(
        60, ge=1, le=3600,
        description="heartbeat interval of a running trial (RDB storages: Optuna's, grace 2x; journals: the "
                    "trial's 'heartbeat' user attr)",
    )
    stale_seconds: int | None = Field(
        None, ge=1, le=7 * 86400,
        description="journal storages: a RUNNING trial whose heartbeat is older than this is taken as a dead "
                    "worker's and retried (default: 5 heartbeats); a worker on the driver's host whose process "
                    "is gone is taken as dead at once",
    )
    max_failures: int | None = Field(None, ge=0, description="failed trials after which the search stops (default: trials)")

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not v:
            raise ValueError("empty space: name at least one parameter, e.g. hyper.bottleneck: {int: [6, 34], step: 2}")
        paths = [canonical_path(k) for k in v]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise ValueError(f"parameter(s) {dup} given twice (adversary.lambda is adversary.adv_lambda)")
        return v

    @model_validator(mode="after")
    def _sampler_pruner(self) -> SearchConfig:
        if self.pruner != "none" and len(self.objectives) > 1:
            raise ValueError(
                f"pruner {self.pruner!r} with {len(self.objectives)} objectives: Optuna cannot prune multi-objective "
                "studies (Trial.report is refused there); use pruner: none"
            )
        if self.sampler == "grid":
            loose = [k for k, p in self.space.items() if p.kind == "float" and p.step is None]
            if loose:
                raise ValueError(f"sampler grid needs a finite space: give {', '.join(loose)} a step, or choices")
        labels = [o.label for o in self.objectives]
        if len(set(labels)) != len(labels):
            raise ValueError(f"objectives repeat: {labels}")
        if self.stale_seconds is not None and self.stale_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"stale_seconds {self.stale_seconds} would take live workers for dead ones: it must exceed two "
                f"heartbeats (2 x heartbeat_seconds = {2 * self.heartbeat_seconds}); raise it or lower heartbeat_seconds"
            )
        return self

    @property
    def stale_after_seconds(self) -> int:
        """Journal storages: the heartbeat age after which a RUNNING trial is a dead worker's."""
        return self.stale_seconds if self.stale_seconds is not None else 5 * self.heartbeat_seconds

    @property
    def sampler_name(self) -> str:
        if self.sampler != "auto":
            return self.sampler
        return "nsga2" if len(self.objectives) > 1 else "tpe"

    @property
    def directions(self) -> list[str]:
        return [o.sense for o in self.objectives]

    @property
    def params(self) -> dict[str, ParamSpec]:
        """The space with canonical paths."""
        return {canonical_path(k): v for k, v in self.space.items()}

    def grid_size(self) -> int | None:
        """Number of distinct points of a finite space (None if any dimension is continuous)."""
        n = 1
        for spec in self.space.values():
            values = grid_values(spec)
            if values is None:
                return None
            n *= len(values)
        return n

    def target_trials(self) -> int:
        """Trials the search ends with: ``trials``, at most the number of points of a finite space."""
        size = self.grid_size()
        return self.trials if size is None else min(self.trials, size)


def canonical_path(path: str) -> str:
    return _PATH_ALIASES.get(path, path)


def grid_values(spec: ParamSpec) -> list[Any] | None:
    """Every value of a finite dimension (int range, stepped float range, choices); else None."""
    if spec.choices is not None:
        return list(spec.choices)
    if spec.int_range is not None:
        lo, hi = spec.int_range
        if spec.log:
            return list(range(lo, hi + 1))
        return list(range(lo, hi + 1, int(spec.step or 1)))
    if spec.step is None:
        return None
    lo, hi = spec.float_range
    n = int(math.floor((hi - lo) / spec.step + 1e-9))
    return [lo + i * spec.step for i in range(n + 1)]


def apply_params(run: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config mapping (``RunConfig.model_dump``) with the search parameters set."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in run.items()}
    for path, value in params.items():
        path = canonical_path(path)
        head, _, tail = path.partition(".")
        if tail:
            section = dict(out.get(head) or {})
            section[tail] = value
            out[head] = section
        else:
            out[path] = value
    return out


def check_search(name: str, search: SearchConfig, runs: Mapping[str, Any], samples: Mapping[str, Any],
                 splits: Any = None) -> None:
    """Cross-check a search against the study's runs and samples (ValueError naming key, rule, value).

    ``runs``: {name: RunConfig}; ``samples``: {name: SampleConfig}; ``splits``: the study's
    ``data.splits`` (see :func:`check_objectives`). Every end point of every range is applied to
    the run and validated as the trial's run would be (RunConfig fields, the model's
    hyperparameter rules), so a range the run cannot take is refused up front; so are objectives
    the study cannot measure."""
    key = f"search.{name}"
    if search.run not in runs:
        raise ValueError(f"{key}.run: no run named {search.run!r}; runs: {', '.join(runs) or 'none'}")
    run = runs[search.run]
    run_cls = type(run)
    base = run.model_dump(mode="python")
    for raw, spec in search.space.items():
        path = canonical_path(raw)
        where = f"{key}.space.{raw}"
        head, _, tail = path.partition(".")
        if head == "hyper" and tail:
            from jetscan.core.models import model_class

            rules = getattr(model_class(run.model), "RULES", {})
            if tail not in rules:
                raise ValueError(
                    f"{where}: model {run.model!r} of run {search.run!r} has no hyperparameter {tail!r}; "
                    f"its hyperparameters: {', '.join(rules) or 'none'}"
                )
            for value in spec.ends:
                if rules[tail].check(value) is None:
                    raise ValueError(f"{where}: {run.model}.{tail} {rules[tail].text} (got {value!r})")
            continue
        if head == "adversary" and tail:
            if run.adversary is None:
                raise ValueError(
                    f"{where}: run {search.run!r} has no adversary; add adversary: {{adv_lambda: 5.0e-4}} to "
                    f"train.runs.{search.run} to search its {tail}"
                )
            fields = list(type(run.adversary).model_fields)
            if tail not in fields:
                raise ValueError(f"{where}: the adversary has no field {tail!r}; fields: {', '.join(fields)} (or lambda)")
        elif tail or head not in run_cls.model_fields or head in _FIXED_FIELDS:
            free = [f for f in run_cls.model_fields if f not in _FIXED_FIELDS]
            raise ValueError(
                f"{where}: not a parameter of run {search.run!r}; use hyper.<name>, adversary.<field> or one of "
                f"{', '.join(free)}"
            )
        for value in spec.ends:
            try:
                run_cls.model_validate(apply_params(base, {path: value}))
            except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError: name the first problem
                errors = exc.errors() if hasattr(exc, "errors") else [{"msg": str(exc)}]
                msg = errors[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"{where}: value {value!r} is not valid for {path}: {msg}") from None
    for i, obj in enumerate(search.objectives):
        if obj.signal is None:
            continue
        if obj.signal not in samples:
            raise ValueError(
                f"{key}.objectives.{i}.signal: no sample named {obj.signal!r}; samples: {', '.join(samples)}"
            )
        if not samples[obj.signal].is_signal:
            raise ValueError(f"{key}.objectives.{i}.signal: sample {obj.signal!r} is background, not a signal")
    check_objectives(name, search, runs, samples, splits)


def _test_jets(sample: Any, splits: Any) -> int | None:
    """Jets of ``sample`` in the test split (the loader's rounding); None if its split is unknown
    (no ``splits`` of its own, and the study's ``data.splits`` not given)."""
    own = sample.splits if sample.splits is not None else splits
    if own is None:
        return None
    return split_counts(sample.n_jets, (own.train, own.val, own.test))[2]


def check_objectives(name: str, search: SearchConfig, runs: Mapping[str, Any], samples: Mapping[str, Any],
                     splits: Any = None) -> None:
    """Objectives other than ``val_loss`` are measured by evaluating each trial on the test split,
    against the study's signal samples (a tagger: its own): refuse, before any trial trains, one
    the study cannot measure. ``splits``: the study's ``data.splits`` (SplitConfig); without it
    only samples with splits of their own are checked for test jets."""
    key = f"search.{name}"
    measured = [o for o in search.objectives if o.metric != "val_loss"]
    if not measured:
        return
    labels = ", ".join(o.label for o in measured)
    if not any(s.is_signal for s in samples.values()):
        raise ValueError(
            f"{key}.objectives: {labels} are measured by evaluating each trial against a signal sample, and the "
            "study has none: add a signal sample, or use objectives: [val_loss]"
        )
    run = runs[search.run]
    background = [s for s in run.samples if not samples[s].is_signal]
    n_bkg = _test_jets(samples[background[0]], splits) if background else None
    if n_bkg == 0:
        raise ValueError(
            f"{key}.objectives: {labels} are measured on the test split, and run {search.run!r}'s background sample "
            f"{background[0]!r} has no jets there: give it a test share (samples.{background[0]}.splits or data.splits)"
        )
    from jetscan.core.models import available_models

    tagger = run.model in available_models("tagger")  # imports no torch
    for i, obj in enumerate(search.objectives):
        if obj.signal is None:
            continue
        where = f"{key}.objectives.{i}.signal"
        if tagger and obj.signal not in run.samples:
            raise ValueError(
                f"{where}: run {search.run!r} is a tagger, evaluated only against its own signal samples "
                f"({', '.join(s for s in run.samples if samples[s].is_signal) or 'none'}): pick one of them, or add "
                f"{obj.signal!r} to train.runs.{search.run}.samples"
            )
        if _test_jets(samples[obj.signal], splits) == 0:
            raise ValueError(
                f"{where}: sample {obj.signal!r} has no jets in the test split, so {obj.label} cannot be measured: "
                f"give it a test share (samples.{obj.signal}.splits or data.splits) or more jets"
            )
