"""What determines a run's weights: :func:`run_settings`, whose hash a checkpoint, a result
row, a search trial and a scan cell carry (a checkpoint made with other settings is refused;
results with the current hash are reused).

Configuration only (no torch): a scan or search plans its cells and trials, and finds those
already done, without importing the training stack (~3 s of a driver's start-up).
"""

from __future__ import annotations

from jetscan.core.study import RunConfig, Study, settings_hash

__all__ = ["run_settings"]


def run_settings(study: Study, run: str) -> dict:
    """Everything that determines a run's weights (its checkpoint is refused if this changes)."""
    study = study.for_run(run)  # a run's own contamination replaces data.contamination
    cfg = study.run(run)
    config = cfg.model_dump(mode="json")
    for key, default in (("lr_scaling", "none"), ("warmup_epochs", 0.0)):
        if config.get(key) == default:
            del config[key]  # defaults: checkpoints made before these options stay valid
    return {
        "run": run,
        "seed": study.seed,
        "config": config,
        "data": _data_settings(study),
        "jets": {s: settings_hash(study.generation_settings(s)) for s in _all_samples(study, cfg)},
    }


# how the stream reads, not what it yields (the batches are the same for any value: tests/storage/test_loader.py)
_READ_KNOBS = {"cache_mb": 1024, "prefetch_chunks": 4}


def _data_settings(study: Study) -> dict:
    data = study.data.model_dump(mode="json")
    if data.get("virtual_ranks") == 1:
        del data["virtual_ranks"]  # the default: checkpoints made before the option stay valid
    data.pop("decode_workers", None)
    data.pop("batches_ahead", None)
    data.pop("decode_process", None)
    data.update(_READ_KNOBS)  # hashed at their defaults, so checkpoints made before stay valid
    own = {s: study.samples[s].splits.model_dump(mode="json") for s in study.samples if study.samples[s].splits}
    if own:  # only when set: runs of studies without per-sample splits keep their hash
        data["sample_splits"] = own
    return data


def _all_samples(study: Study, cfg: RunConfig) -> list[str]:
    names = list(cfg.samples)
    c = study.data.contamination
    if cfg.contaminated and c is not None and c.signal not in names:
        names.append(c.signal)
    return names
