"""The base class of every registered model (an ``nn.Module``): hyperparameter checks and
:class:`~jetscan.core.models.registry.ModelInfo`.

It lives apart from :mod:`jetscan.core.models.registry` so that the registry (model names and
kinds, hyperparameter rules, ``ModelInfo``) imports without torch: a study that names models
is checked on a machine without torch (``jetscan generate``), and torch is imported only when
a model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from jetscan.core.errors import ConfigError
from jetscan.core.models.registry import FrozenMapping, ModelInfo, Rule, _validate

__all__ = ["JetModel"]


class JetModel(nn.Module):
    """Base of every registered model: hyperparameter checks and :class:`ModelInfo`.

    Subclasses set the class attributes described in :mod:`jetscan.core.models.registry`, call
    ``self._configure(**hyper)`` at the top of ``__init__``, and override
    ``input_shape``/``representation``/``optimizer_settings`` where they depend on the
    hyperparameters. Joint checks (one hyperparameter against another) go in ``_check_joint``,
    returning a list of messages.
    """

    NAME: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    PAPER: ClassVar[str] = ""
    LOSS: ClassVar[str] = ""
    OPTIMIZER: ClassVar[str | None] = None
    REPRESENTATION: ClassVar[str] = ""
    RULES: ClassVar[Mapping[str, Rule]] = {}

    def _configure(self, **values) -> Mapping[str, Any]:
        name = self.NAME or type(self).__name__
        hyper = _validate(name, self.RULES, values)
        problems = self._check_joint(hyper)
        if problems:
            raise ConfigError("; ".join(f"{name}.{p}" for p in problems))
        self.hyper = FrozenMapping(hyper)
        return self.hyper

    @staticmethod
    def _check_joint(hyper: Mapping[str, Any]) -> list[str]:
        return []

    # -- what ModelInfo reports -------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def representation(self) -> str:
        return self.REPRESENTATION

    @property
    def optimizer_settings(self) -> dict[str, Any]:
        return {"lr": self.hyper["lr"]} if "lr" in self.hyper else {}

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.NAME or type(self).__name__,
            kind=self.KIND,
            representation=self.representation,
            input_shape=self.input_shape,
            paper=self.PAPER,
            optimizer=self.OPTIMIZER,
            optimizer_settings=self.optimizer_settings,
            batch_size=self.hyper.get("batch_size"),
            loss=self.LOSS,
            hyper=dict(self.hyper),
            n_params=self.n_params,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in getattr(self, "hyper", {}).items())
