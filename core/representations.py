"""Network inputs computed from stored jets: one function for the stored and on-the-fly paths.

A representation turns a batch of stored jet arrays (the fields of
:mod:`jetscan.storage.layout`, e.g. ``constituents/pt``) into one float32 array per jet:

- image presets (``heimel40``, ``heimel40_centred``, ``ms37x4``, ``ms37``) through
  :func:`jetscan.core.images.jet_images`, with the study's overrides applied;
- ``lola40``: the leading N constituents' (E, px, py, pz) in the jet rest frame
  (:func:`jetscan.core.kinematics.lola_inputs`);
- ``highlevel``: (mass, tau32, tau21, soft-drop mass).

``jetscan preprocess`` stores ``compute(...)`` of every shard; the streaming loader's
on-the-fly mode calls the same ``compute`` on the same stored float32 constituents, so both
paths give identical arrays.
"""

from __future__ import annotations

import numpy as np

from jetscan.core.images import IMAGE_PRESETS, high_level_inputs, jet_images
from jetscan.core.kinematics import lola_inputs
from jetscan.core.study import RepresentationConfig

__all__ = ["required_fields", "output_shape", "compute", "image_settings"]

_CONSTITUENTS = ["constituents/pt", "constituents/eta", "constituents/phi"]


def image_settings(cfg: RepresentationConfig) -> dict:
    """The preset's jet_images settings with the study's overrides applied."""
    settings = dict(IMAGE_PRESETS[cfg.preset])
    for key in ("n_pixels", "x_range", "y_range", "colours", "centre", "rotate", "flip", "normalise"):
        value = getattr(cfg, key)
        if value is not None:
            settings[key] = value
    return settings


def required_fields(cfg: RepresentationConfig) -> list[str]:
    if cfg.preset == "lola40":
        return [*_CONSTITUENTS, "constituents/e"]
    if cfg.preset == "highlevel":
        return ["jets/mass", "jets/tau1", "jets/tau2", "jets/tau3", "jets/sd_mass"]
    return [*_CONSTITUENTS, "constituents/kind"]


def output_shape(cfg: RepresentationConfig) -> tuple[int, ...]:
    """Per-jet shape: images (C, ny, nx), lola (N, 4), highlevel (4,)."""
    if cfg.preset == "lola40":
        return (cfg.n_constituents, 4)
    if cfg.preset == "highlevel":
        return (4,)
    s = image_settings(cfg)
    nx, ny = s["n_pixels"]
    return (len(s["colours"]), ny, nx)


def compute(cfg: RepresentationConfig, fields: dict[str, np.ndarray]) -> np.ndarray:
    """The representation of a batch of jets, float32 of shape (n_jets, *output_shape(cfg))."""
    if cfg.preset == "lola40":
        out = lola_inputs(
            fields["constituents/pt"], fields["constituents/eta"], fields["constituents/phi"],
            fields["constituents/e"], n_const=cfg.n_constituents,
        )
    elif cfg.preset == "highlevel":
        out = high_level_inputs(
            fields["jets/mass"], fields["jets/tau1"], fields["jets/tau2"], fields["jets/tau3"], fields["jets/sd_mass"]
        )
    else:
        out = jet_images(
            fields["constituents/pt"], fields["constituents/eta"], fields["constituents/phi"],
            fields["constituents/kind"], **image_settings(cfg),
        )
    return np.ascontiguousarray(out, dtype=np.float32)
