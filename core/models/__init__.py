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
Horovod; modules are float32 and device-agnostic (move them with ``.to(device)``).
"""

from jetscan.core.models.registry import (
    KINDS,
    JetModel,
    ModelInfo,
    available_models,
    build_model,
    default_hyper,
    make_optimizer,
    model_class,
    register,
)
from jetscan.core.models.taggers import DeepTopMinimal, MacalusoShih
from jetscan.core.models.lola import CoLa, LoLa, LolaTagger
from jetscan.core.models.autoencoders import PCA, CnnAE, DenseAE, ImageAE, LolaAE
from jetscan.core.models.adversarial import (
    AdversarialLosses,
    MassAdversary,
    adversarial_step,
    mass_bin_edges,
    mass_bin_labels,
)

__all__ = [
    "KINDS",
    "JetModel",
    "ModelInfo",
    "available_models",
    "build_model",
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
