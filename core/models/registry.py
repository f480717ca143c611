"""The model registry: ``build_model(name, **hyper) -> (module, ModelInfo)``.

Models plug in the way weaver's network files do: each is an ``nn.Module`` class registered
under a name with :func:`register`, and :func:`build_model` validates the hyperparameters
before anything is built. Hyperparameters are plain numbers (and a few booleans) with the seed
papers' names (``bottleneck``, ``adv_lambda``, ``lr``...), so an Optuna search can drive them::

    module, info = build_model("cnn_ae", bottleneck=8)
    module, info = build_model({"name": "cnn_ae", "bottleneck": 8})   # a config mapping

A bad name or value raises :class:`~jetscan.core.errors.ConfigError` with the key, the rule and
the value::

    cnn_ae.bottleneck: must be a positive integer (got -3)

Each registered class declares, as class attributes:

- ``KIND``: ``"tagger"``, ``"autoencoder"`` or ``"pca"``;
- ``PAPER``: the citation its architecture follows;
- ``LOSS``: the loss's name; ``OPTIMIZER``: the paper's optimizer (``None`` for PCA);
- ``RULES``: ``{hyperparameter: Rule}``, one entry for every keyword of ``__init__``;

and calls ``self._configure(**values)`` first thing in ``__init__``, so a directly constructed
model is checked too. Instances expose ``hyper`` (the resolved hyperparameters), ``info`` (a
:class:`ModelInfo`) and ``loss(...)`` (per-jet losses).

This module does not import torch: the built-in models' names and kinds are listed in
:data:`BUILTIN_MODELS`, so :func:`available_models` (what a study's ``train.runs`` is checked
against) works on a machine without torch, e.g. for ``jetscan generate``. The network modules,
and torch, are imported by :func:`model_class` / :func:`build_model`, and the base class
``JetModel`` (:mod:`jetscan.core.models.base`) is imported on first access.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from jetscan.core.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "KINDS",
    "ModelInfo",
    "FrozenMapping",
    "Rule",
    "BuiltinModel",
    "BUILTIN_MODELS",
    "JetModel",
    "register",
    "build_model",
    "available_models",
    "check_model_name",
    "model_class",
    "default_hyper",
    "make_optimizer",
    "positive_int",
    "nonneg_int",
    "positive_float",
    "nonneg_float",
    "fraction",
    "boolean",
    "int_at_least",
    "multiple_of",
]

#: the kinds a registered model may have
KINDS = ("tagger", "autoencoder", "pca")



class BuiltinModel(NamedTuple):
    """Where a built-in model is defined: its kind, module and class name."""

    kind: str
    module: str
    cls: str


#: the built-in models, listed here so that names and kinds are known without importing torch;
#: each class is registered under its name when its module is imported (``register`` checks the
#: two agree, and that no other class takes a built-in name)
BUILTIN_MODELS: Mapping[str, BuiltinModel] = {
    "deeptop_minimal": BuiltinModel("tagger", "jetscan.core.models.taggers", "DeepTopMinimal"),
    "macaluso_shih": BuiltinModel("tagger", "jetscan.core.models.taggers", "MacalusoShih"),
    "lola_tagger": BuiltinModel("tagger", "jetscan.core.models.lola", "LolaTagger"),
    "pca": BuiltinModel("pca", "jetscan.core.models.autoencoders", "PCA"),
    "dense_ae": BuiltinModel("autoencoder", "jetscan.core.models.autoencoders", "DenseAE"),
    "cnn_ae": BuiltinModel("autoencoder", "jetscan.core.models.autoencoders", "CnnAE"),
    "image_ae": BuiltinModel("autoencoder", "jetscan.core.models.autoencoders", "ImageAE"),
    "lola_ae": BuiltinModel("autoencoder", "jetscan.core.models.autoencoders", "LolaAE"),
}

# the classes registered so far (the built-in ones once their module is imported, and any
# model registered by the user's code)
_REGISTRY: dict[str, type] = {}


# --------------------------------------------------------------------------------------------
# ModelInfo
# --------------------------------------------------------------------------------------------


class FrozenMapping(Mapping):
    """A read-only, hashable, picklable mapping (``MappingProxyType`` cannot be pickled, and
    models and their ``ModelInfo`` travel to Ray workers and into checkpoints)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None):
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __hash__(self):
        return hash(frozenset(self._data.items()))

    def __setattr__(self, name, value):
        raise AttributeError("FrozenMapping is read-only")

    def __reduce__(self):
        return (FrozenMapping, (self._data,))

    def __repr__(self):
        return f"FrozenMapping({self._data!r})"


def _frozen_mapping(values: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return FrozenMapping(values)


@dataclass(frozen=True)
class ModelInfo:
    """What a training stage needs to know about a built model (frozen).

    - ``name``: the registry name (``"cnn_ae"``);
    - ``kind``: ``"tagger"``, ``"autoencoder"`` or ``"pca"``;
    - ``representation``: the input preset the model reads (``"heimel40"``, ``"ms37x4"``,
      ``"ms37"``, ``"lola40"``; ``"image<C>x<H>x<W>"`` for a non-preset image size);
    - ``input_shape``: the shape of one jet's input, batch axis excluded (``(40, 40)``,
      ``(4, 37, 37)``, ``(40, 4)``);
    - ``paper``: the citation the architecture follows;
    - ``optimizer``: ``"sgd"``, ``"adadelta"``, ``"adam"``, or ``None`` (PCA is fitted, not
      trained); ``optimizer_settings``: its settings (``lr`` and, for Macaluso-Shih, the
      annealing), read-only;
    - ``batch_size``: the paper's minibatch (``None`` for PCA);
    - ``loss``: the loss's name (``"cross_entropy"``, ``"mse_softmax"``, ``"pixel_sse"``...);
    - ``hyper``: every hyperparameter as resolved (defaults filled in), read-only;
    - ``n_params``: the number of trainable parameters.
    """

    name: str
    kind: str
    representation: str
    input_shape: tuple[int, ...]
    paper: str
    optimizer: str | None
    optimizer_settings: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    loss: str = ""
    hyper: Mapping[str, Any] = field(default_factory=dict)
    n_params: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"ModelInfo.kind: must be one of {', '.join(KINDS)} (got {self.kind!r})")
        object.__setattr__(self, "input_shape", tuple(int(n) for n in self.input_shape))
        object.__setattr__(self, "optimizer_settings", _frozen_mapping(self.optimizer_settings))
        object.__setattr__(self, "hyper", _frozen_mapping(self.hyper))

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists and dicts), for YAML or JSON."""
        return {
            "name": self.name,
            "kind": self.kind,
            "representation": self.representation,
            "input_shape": list(self.input_shape),
            "paper": self.paper,
            "optimizer": self.optimizer,
            "optimizer_settings": dict(self.optimizer_settings),
            "batch_size": self.batch_size,
            "loss": self.loss,
            "hyper": dict(self.hyper),
            "n_params": self.n_params,
        }


# --------------------------------------------------------------------------------------------
# Hyperparameter rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One hyperparameter rule: ``text`` is the rule as the error states it; ``check`` returns
    the normalised value (``int``, ``float`` or ``bool``) or ``None`` when the value breaks it."""

    text: str
    check: Callable[[Any], Any]


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def int_at_least(minimum: int) -> Rule:
    """An integer ``>= minimum``."""
    text = {1: "must be a positive integer", 0: "must be a non-negative integer"}.get(
        minimum, f"must be an integer >= {minimum}"
    )
    return Rule(text, lambda v: int(v) if _is_int(v) and v >= minimum else None)


def multiple_of(step: int, minimum: int) -> Rule:
    """An integer ``>= minimum`` divisible by ``step`` (image sizes that pool cleanly)."""
    return Rule(
        f"must be an integer multiple of {step}, at least {minimum}",
        lambda v: int(v) if _is_int(v) and v >= minimum and v % step == 0 else None,
    )


def _positive_float(v):
    return float(v) if _is_real(v) and v > 0 else None


def _nonneg_float(v):
    return float(v) if _is_real(v) and v >= 0 else None


def _fraction(v):
    return float(v) if _is_real(v) and 0 < v < 1 else None


def _boolean(v):
    return bool(v) if isinstance(v, bool) else None


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)
positive_float = Rule("must be a finite number > 0", _positive_float)
nonneg_float = Rule("must be a finite number >= 0", _nonneg_float)
fraction = Rule("must be a number strictly between 0 and 1", _fraction)
boolean = Rule("must be True or False", _boolean)


def _validate(model: str, rules: Mapping[str, Rule], values: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise ``values`` against ``rules``; one ConfigError listing every broken rule."""
    problems, out = [], {}
    for key, value in values.items():
        rule = rules.get(key)
        if rule is None:  # a registered class whose RULES miss a keyword: a developer error
            raise TypeError(f"{model}: hyperparameter {key!r} has no rule in RULES")
        try:
            normalised = rule.check(value)
        except (TypeError, ValueError, OverflowError):
            normalised = None
        if normalised is None:
            problems.append(f"{model}.{key}: {rule.text} (got {value!r})")
        else:
            out[key] = normalised
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def image_representation(channels: int, size: int) -> str:
    """The image preset name for ``(channels, size, size)`` inputs (``image<C>x<S>x<S>`` else)."""
    return {(1, 40): "heimel40", (1, 37): "ms37", (4, 37): "ms37x4"}.get(
        (channels, size), f"image{channels}x{size}x{size}"
    )


# --------------------------------------------------------------------------------------------
# Registration and lookup
# --------------------------------------------------------------------------------------------


def __getattr__(name: str):
    if name == "JetModel":  # the nn.Module base class: importing it imports torch
        from jetscan.core.models.base import JetModel

        return JetModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(name: str):
    """Class decorator: register a :class:`JetModel` subclass under ``name``.

    Checks at import that the class is complete (kind, paper, a rule for every ``__init__``
    keyword, every keyword with a default), so a broken model never reaches a study.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"register: a model name must be a Python identifier (got {name!r})")

    def deco(cls):
        from jetscan.core.models.base import JetModel

        if not (isinstance(cls, type) and issubclass(cls, JetModel)):
            raise TypeError(f"register({name!r}) decorates JetModel subclasses, not {cls!r}")
        if cls.KIND not in KINDS:
            raise TypeError(f"{name}: KIND must be one of {KINDS} (got {cls.KIND!r})")
        if not cls.PAPER:
            raise TypeError(f"{name}: PAPER must cite the architecture's paper")
        params = _init_params(cls)
        missing = [p for p in params if p not in cls.RULES]
        no_default = [p for p, d in params.items() if d is inspect.Parameter.empty]
        if missing or no_default:
            raise TypeError(f"{name}: keywords without a rule {missing} or default {no_default}")
        old = _REGISTRY.get(name)
        builtin = BUILTIN_MODELS.get(name)
        taken = f"{old.__module__}.{old.__qualname__}" if old is not None else None
        if builtin is not None and taken is None:
            taken = f"{builtin.module}.{builtin.cls}"
        if taken is not None and taken != f"{cls.__module__}.{cls.__qualname__}":
            raise ConfigError(
                f"register: the name {name!r} is taken by {taken}; "
                f"pick another name for {cls.__module__}.{cls.__qualname__}"
            )
        if builtin is not None and cls.KIND != builtin.kind:  # BUILTIN_MODELS is out of date
            raise TypeError(f"{name}: KIND {cls.KIND!r} differs from BUILTIN_MODELS' {builtin.kind!r}")
        cls.NAME = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _init_params(cls) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _kinds() -> dict[str, str]:
    """Every known model name and its kind: the built-in ones and those registered here."""
    kinds = {name: b.kind for name, b in BUILTIN_MODELS.items()}
    kinds.update({name: cls.KIND for name, cls in _REGISTRY.items()})
    return kinds


def available_models(kind: str | None = None) -> tuple[str, ...]:
    """The model names, sorted; ``kind`` keeps one kind (``"tagger"``, ...). Imports no torch."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"available_models: kind must be one of {', '.join(KINDS)} (got {kind!r})")
    return tuple(sorted(n for n, k in _kinds().items() if kind is None or k == kind))


def check_model_name(name: Any) -> str:
    """``name`` if it names a model, else ConfigError listing the names (imports no torch)."""
    names = sorted(_kinds())
    if not isinstance(name, str) or name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; registered models: {', '.join(names)}")
    return name


def model_class(name: str) -> type:
    """The class registered under ``name`` (ConfigError listing the names when there is none);
    a built-in model's module (and torch) is imported here."""
    check_model_name(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    builtin = BUILTIN_MODELS[name]
    return getattr(importlib.import_module(builtin.module), builtin.cls)


def default_hyper(name: str) -> dict[str, Any]:
    """The hyperparameters of ``name`` with their defaults."""
    return _init_params(model_class(name))


def build_model(name: str | Mapping[str, Any], **hyper) -> tuple[nn.Module, ModelInfo]:
    """Build a registered model: ``(module, ModelInfo)``.

    ``name`` is a registered name, or a config mapping ``{"name": ..., **hyper}`` (keywords
    given here override the mapping's). Unknown hyperparameters and broken rules raise
    :class:`ConfigError` before anything is built. The module is float32, on the CPU, in
    training mode; move it with ``.to(device)``.
    """
    if isinstance(name, Mapping):
        cfg = dict(name)
        if "name" not in cfg:
            raise ConfigError(
                f"build_model: a config mapping needs a 'name' key naming the model "
                f"(got keys {sorted(cfg)}); e.g. {{'name': 'cnn_ae', 'bottleneck': 6}}"
            )
        name = cfg.pop("name")
        hyper = {**cfg, **hyper}
    cls = model_class(name)
    defaults = _init_params(cls)
    unknown = sorted(set(hyper) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        raise ConfigError(
            "; ".join(f"{name}.{k}: unknown hyperparameter (got {hyper[k]!r})" for k in unknown)
            + f"; valid hyperparameters (defaults): {valid}"
        )
    module = cls(**hyper)
    return module, module.info


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


def make_optimizer(module: nn.Module, info: ModelInfo | None = None):
    """The paper's optimizer for ``module``: ``(optimizer, scheduler or None)``.

    - ``"sgd"``: plain SGD (DeepTop);
    - ``"adadelta"``: AdaDelta with Keras's ``rho = 0.95``, ``eps = 1e-7``; with
      ``anneal_factor`` in the settings a ``ReduceLROnPlateau`` scheduler (step it once an
      epoch with the validation loss);
    - ``"adam"``: Adam.
    """
    import torch

    info = info if info is not None else module.info
    if info.optimizer is None:
        raise ConfigError(
            f"{info.name} is fitted, not trained: call module.fit(x) instead of make_optimizer"
        )
    s = dict(info.optimizer_settings)
    params = [p for p in module.parameters() if p.requires_grad]
    if info.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=s["lr"], momentum=s.get("momentum", 0.0))
    elif info.optimizer == "adadelta":
        opt = torch.optim.Adadelta(params, lr=s["lr"], rho=s.get("rho", 0.95), eps=s.get("eps", 1e-7))
    elif info.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=s["lr"])
    else:
        raise ConfigError(
            f"{info.name}.optimizer: must be one of sgd, adadelta, adam (got {info.optimizer!r})"
        )
    sched = None
    if "anneal_factor" in s:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=s["anneal_factor"], patience=s.get("anneal_patience", 0)
        )
    return opt, sched
