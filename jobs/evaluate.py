"""Stage 4, evaluate: score the test split, compute the papers' metrics, store and plot them.

The whole story of the stage (``jetscan evaluate STUDY.yaml [--model RUN ...]``):

1. Each finished run is loaded from its checkpoint (:func:`jetscan.jobs.train.load_trained`)
   onto the study's device (``train.device``, chosen as for training by
   :mod:`jetscan.cluster.devices`: the GPU of this process's local rank, or the CPU); scores
   are computed there in float32 and come back to the host.
2. Every relevant sample's *test* split is scored jet by jet: an autoencoder's score is its
   reconstruction loss (the anomaly score), a tagger's the signal probability. Autoencoders
   are compared against every signal sample of the study, taggers against their own signal.
3. :mod:`jetscan.storage.results` turns the scores into the metrics of the seed papers (AUC,
   1/eps_B at eps_S = 0.3, E10, E100, accuracy, bands from 10 independent test subsamples,
   background mass sculpting) and writes one zarr group per run plus one parquet row per
   (run, signal), every config parameter a column.
4. :mod:`jetscan.jobs.report` draws the plots and an HTML report for the study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from jetscan.cluster.devices import use_device
from jetscan.core.study import Study
from jetscan.jobs.train import load_trained
from jetscan.storage import blobs, results
from jetscan.storage.loader import JetStream

__all__ = ["score_sample", "evaluation_for", "evaluate", "flat_config"]


@torch.no_grad()
def score_sample(study: Study, module, info, representation: str, sample: str, *, want_images: bool = False):
    """Scores, masses and labels of one sample's test split (and mean input/reconstruction
    images), computed on the module's device."""
    stream = JetStream(study, [sample], representation, split="test", shuffle=False, on_the_fly=_on_the_fly(study, sample, representation))
    device = next(iter(module.state_dict().values()), torch.empty(0)).device
    scores, masses, labels = [], [], []
    img_in = img_out = None
    n = 0
    for batch in stream.iter_numpy():
        x = torch.from_numpy(batch["x"])
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        x = x.reshape(len(x), *info.input_shape)
        out = module(x)
        if info.kind == "tagger":
            s = torch.softmax(out, dim=1)[:, 1]
        else:
            s = module.loss(x, out)
            if want_images:
                img_in = x.sum(0) if img_in is None else img_in + x.sum(0)
                img_out = out.reshape(x.shape).sum(0) if img_out is None else img_out + out.reshape(x.shape).sum(0)
        n += len(x)
        scores.append(s.double().cpu().numpy())
        masses.append(batch["mass"])
        labels.append(batch["label"])
    arrays = {"score": np.concatenate(scores), "mass": np.concatenate(masses), "label": np.concatenate(labels)}
    images = None
    if want_images and img_in is not None and n:
        images = {"input": _image2d(img_in / n), "reconstruction": _image2d(img_out / n)}
    return arrays, images


def _image2d(t: torch.Tensor) -> np.ndarray:
    """A mean image as (H, W): colour channels, if any, are summed."""
    a = t.cpu().numpy().astype(np.float32)
    return a.reshape(-1, *a.shape[-2:]).sum(axis=0)


def _on_the_fly(study: Study, sample: str, representation: str) -> bool:
    from jetscan.core.errors import StorageError

    try:
        JetStream(study, [sample], representation, split="test")
        return False
    except StorageError:
        return True


def flat_config(study: Study, run: str, ckpt: dict) -> dict:
    """Every parameter of a run as one flat {column: scalar} mapping (the results table's columns)."""
    cfg = study.run(run)
    c = study.data.contamination
    out = {
        "model": cfg.model,
        "representation": cfg.representation or "",
        "train_samples": ",".join(cfg.samples),
        "contaminated": cfg.contaminated,
        "contamination_signal": c.signal if (c and cfg.contaminated) else "",
        "contamination_fraction": float(c.fraction) if (c and cfg.contaminated) else 0.0,
        "epochs": cfg.epochs,
        "patience": cfg.patience,
        "batch_size": cfg.batch_size or 0,
        "adv_lambda": float(cfg.adversary.adv_lambda) if cfg.adversary else 0.0,
        "mass_bins": cfg.adversary.mass_bins if cfg.adversary else 0,
        "seed": study.seed,
        "sqrt_s_gev": study.sqrt_s_gev,
        "jet_r": study.jet.r,
        "jet_pt_min_gev": study.jet.pt_window_gev[0],
        "jet_pt_max_gev": study.jet.pt_window_gev[1],
        "epochs_run": ckpt["summary"]["epochs_run"],
        "best_epoch": ckpt["summary"]["best_epoch"],
        "n_train_jets": ckpt["summary"]["train_jets"],
        "train_seconds": float(ckpt["summary"]["seconds"]),
    }
    for key, value in dict(ckpt.get("hyper", {}) or {}).items():
        out[key] = value
    return out


def evaluation_for(study: Study, run: str) -> dict:
    """Score a finished run on the test split: the mapping :mod:`jetscan.storage.results` takes."""
    study = study.for_run(run)  # a run's own contamination (its results' contamination columns)
    module, info, ckpt = load_trained(study, run, use_device(study.train.device))
    cfg = study.run(run)
    representation = cfg.representation or info.representation
    background = study.background_samples(run)
    if info.kind == "tagger":
        signals = [s for s in cfg.samples if study.sample(s).is_signal]
    else:
        signals = [s for s in study.samples if study.sample(s).is_signal]
    image_model = len(info.input_shape) >= 2 and info.input_shape[-1] == info.input_shape[-2]
    samples, images = {}, {}
    for s in background + signals:
        arrays, imgs = score_sample(study, module, info, representation, s, want_images=image_model and info.kind != "tagger")
        samples[s] = arrays
        if imgs is not None:
            images[s] = imgs
    config = flat_config(study, run, {**ckpt, "hyper": dict(info.hyper)})
    config["representation"] = representation
    evaluation = {
        "run": run,
        "study": study.name,
        "config": config,
        "kind": info.kind,
        "background": background[0],
        "samples": samples,
        "signals": signals,
        "history": ckpt["history"],
    }
    if images:
        evaluation["images"] = images
    return evaluation


def evaluate(study: Study, runs: Iterable[str] | None = None, *, report_dir: str | Path | None = None) -> list[dict]:
    """Evaluate runs (default: every run of the study); returns the summary rows written."""
    names = list(runs) if runs is not None else list(study.train.runs)
    for name in names:
        study.run(name)
    blobs.use_storage_options(study.store, study.storage_options)
    rows = []
    for name in names:
        evaluation = evaluation_for(study, name)
        summary = results.summarise(evaluation)
        results.write_run(study.store, evaluation, summary)
        rows.extend(summary)
    if report_dir is not None:
        from jetscan.jobs.report import write_report

        write_report(study.store, study.name, Path(report_dir))
    return rows
