"""Networks of the seed papers as pure PyTorch modules, built by name.

``build_model(name, **hyper) -> (module, ModelInfo)``; ``available_models()`` lists the names:

========================  ===========  ===============  ==========================================
name                      kind         input            paper
========================  ===========  ===============  ==========================================
``deeptop_minimal``       tagger       heimel40         Kasieczka et al. arXiv:1701.08784
``macaluso_shih``         tagger       ms37x4           Macaluso & Shih arXiv:1803.00107
``lola_tagger``           tagger       lola40           Butter et al. arXiv:1707.08966
``pca``                   pca          heimel40         Farina, Nakai & Shih arXiv:1808.08992
``dense_ae``              autoencoder  heimel40         Farina, Nakai & Shih arXiv:1808.08992
``cnn_ae``                autoencoder  heimel40         Farina, Nakai & Shih arXiv:1808.08992
``image_ae``              autoencoder  heimel40         Heimel et al. arXiv:1808.08979
``lola_ae``               autoencoder  lola40           Heimel et al. arXiv:1808.08979
========================  ===========  ===============  ==========================================

Plus the mass adversary of Heimel et al. (:mod:`.adversarial`). No I/O here and no Ray, Dask or
Horovod; modules are float32 and device-agnostic (move them with ``.to(device)``). Importing
this package, listing and checking model names import no torch: the network classes (and
torch) load on first use.
"""

import importlib

from jetscan.core.models.registry import (
    BUILTIN_MODELS,
    KINDS,
    ModelInfo,
    available_models,
    build_model,
    check_model_name,
    default_hyper,
    make_optimizer,
    model_class,
    register,
)

# the network classes import torch: they are loaded on first access, so that importing this
# package (and checking a study's model names) works without torch
_LAZY = {
    "JetModel": "jetscan.core.models.base",
    "DeepTopMinimal": "jetscan.core.models.taggers",
    "MacalusoShih": "jetscan.core.models.taggers",
    "CoLa": "jetscan.core.models.lola",
    "LoLa": "jetscan.core.models.lola",
    "LolaTagger": "jetscan.core.models.lola",
    "PCA": "jetscan.core.models.autoencoders",
    "DenseAE": "jetscan.core.models.autoencoders",
    "CnnAE": "jetscan.core.models.autoencoders",
    "ImageAE": "jetscan.core.models.autoencoders",
    "LolaAE": "jetscan.core.models.autoencoders",
    "MassAdversary": "jetscan.core.models.adversarial",
    "AdversarialLosses": "jetscan.core.models.adversarial",
    "adversarial_step": "jetscan.core.models.adversarial",
    "mass_bin_edges": "jetscan.core.models.adversarial",
    "mass_bin_labels": "jetscan.core.models.adversarial",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BUILTIN_MODELS",
    "KINDS",
    "JetModel",
    "ModelInfo",
    "available_models",
    "build_model",
    "check_model_name",
    "default_hyper",
    "make_optimizer",
    "model_class",
    "register",
    "DeepTopMinimal",
    "MacalusoShih",
    "CoLa",
    "LoLa",
    "LolaTagger",
    "PCA",
    "DenseAE",
    "CnnAE",
    "ImageAE",
    "LolaAE",
    "MassAdversary",
    "AdversarialLosses",
    "adversarial_step",
    "mass_bin_edges",
    "mass_bin_labels",
]
