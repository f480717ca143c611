"""Stage 3, train: one loop for every model, written for data-parallel execution.

The whole story of the stage (``jetscan train STUDY.yaml --model RUN``):

1. :func:`prepare` checks the run before any work: the model and hyperparameters (through
   the registry, so a bad value names its key), the representation (stored, or computed on
   the fly), the training samples and, for an existing checkpoint, that it was made by the
   same run configuration.
2. Every rank reads its own disjoint part of the training split through
   :class:`jetscan.storage.loader.JetStream` (rank and size from the launcher's
   environment, :mod:`jetscan.cluster.distributed`); one process on a laptop is size 1.
3. Per epoch: one pass over the data, the validation loss (averaged across ranks), early
   stopping after ``patience`` epochs without improvement, and a checkpoint written by rank
   0 alone into the store (``<store>/_runs/<run>/checkpoint.pt``, atomically): model,
   optimizer, scheduler, RNG states, history and the best weights so far. A killed run
   restarts from its last checkpoint and, since the data order depends on (seed, epoch)
   only, reaches the same final weights as an uninterrupted run.
4. Autoencoders minimise their per-jet reconstruction loss (the anomaly score); taggers
   their classification loss; PCA is fitted once; the adversarial AE alternates an AE step
   on L_auto - lambda L_adv and an adversary step per batch (Heimel et al. sec. 2.3).
"""

from __future__ import annotations

import io
import math
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from jetscan.cluster.devices import cpu_has_bf16, wants_cuda
from jetscan.cluster.distributed import Comm, make_comm
from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.models import build_model, make_optimizer
from jetscan.core.models.adversarial import MassAdversary, adversarial_step, mass_bin_edges, mass_bin_labels
from jetscan.core.models.schedule import lr_factor, warmup_lr
from jetscan.core.run_settings import run_settings  # re-exported: callers of jetscan.jobs.train.run_settings
from jetscan.core.study import RunConfig, Study, settings_hash
from jetscan.storage import blobs
from jetscan.storage.loader import JetStream, split_jets

__all__ = ["Prepared", "prepare", "train", "train_runs", "load_trained", "checkpoint_path", "run_settings", "autocast_on"]


def checkpoint_path(run: str) -> str:
    return f"_runs/{run}/checkpoint.pt"


@dataclass
class Prepared:
    """A run ready to train: model, its info, data streams and settings."""

    run: str
    cfg: RunConfig
    module: torch.nn.Module
    info: object
    representation: str
    on_the_fly: bool
    train_stream: JetStream
    val_stream: JetStream
    fit_stream: JetStream
    batch_size: int
    settings: dict
    settings_hash: str


def _seed(study: Study, run: str) -> int:
    return (study.seed ^ zlib.crc32(run.encode())) % 2**31


def prepare(study: Study, run: str, comm: Comm | None = None, *, on_the_fly: bool | None = None) -> Prepared:
    """Check everything a run needs and build its model and data streams (no training)."""
    comm = comm or make_comm()
    study = study.for_run(run)  # a run's own contamination replaces data.contamination
    cfg = study.run(run)
    torch.manual_seed(_seed(study, run))
    module, info = build_model(cfg.model, **cfg.hyper)  # ConfigError naming a bad hyperparameter
    representation = cfg.representation or info.representation
    if representation not in study.preprocess.representations:
        raise ConfigError(
            f"train.runs.{run}: model {cfg.model!r} reads {representation!r}, which is not in "
            f"preprocess.representations ({', '.join(study.preprocess.representations)}); add it there"
        )
    if info.kind != "tagger":
        signals = [s for s in cfg.samples if study.sample(s).is_signal]
        if signals:
            raise ConfigError(
                f"train.runs.{run}.samples: an autoencoder trains on background only, but {signals} are signal "
                "samples; use contaminated: true with data.contamination to mix signal in"
            )
    else:
        labels = {study.sample(s).is_signal for s in cfg.samples}
        if labels != {True, False}:
            raise ConfigError(f"train.runs.{run}.samples: a tagger needs background and signal samples (got {list(cfg.samples)})")
    batch_size = cfg.batch_size or info.batch_size or study.data.batch_size
    if cfg.lr_scaling != "none":
        batch_size *= comm.size  # batch_size is per worker: the global batch grows with the workers
    if on_the_fly is None:
        try:
            JetStream(study, list(cfg.samples), representation, split="train", batch_size=batch_size)
            on_the_fly = False
        except StorageError:
            on_the_fly = True  # not preprocessed: compute the inputs while reading
    common = dict(rank=comm.rank, world_size=comm.size, on_the_fly=on_the_fly, batch_size=batch_size)
    # lockstep: every rank takes the same steps, and step k's global batch is the same for any
    # world size dividing data.virtual_ranks (1 worker with virtual_ranks 2 == 2 workers)
    lockstep = comm.size > 1 or study.data.virtual_ranks > 1
    train_stream = JetStream(
        study, list(cfg.samples), representation, split="train", contaminated=cfg.contaminated, lockstep=lockstep,
        max_jets=cfg.max_train_jets, **common
    )
    val_stream = JetStream(study, list(cfg.samples), representation, split="val", contaminated=cfg.contaminated, shuffle=False, **common)
    if train_stream.n_kept_jets < train_stream.n_split_jets:  # max_train_jets: validate on the same share
        share = train_stream.n_kept_jets / train_stream.n_split_jets
        val_stream = JetStream(study, list(cfg.samples), representation, split="val", contaminated=cfg.contaminated,
                               shuffle=False, max_jets=max(1, math.ceil(share * val_stream.n_split_jets)), **common)
    # a fit (PCA) is one computation, not data parallel: every rank fits on the whole training
    # split in the order one worker reads it, so all ranks hold the same fit as one worker
    fit_stream = train_stream if comm.size == 1 else JetStream(
        study, list(cfg.samples), representation, split="train", contaminated=cfg.contaminated, lockstep=lockstep,
        max_jets=cfg.max_train_jets, **{**common, "rank": 0, "world_size": 1},
    )
    settings = run_settings(study, run)
    return Prepared(
        run, cfg, module, info, representation, on_the_fly, train_stream, val_stream, fit_stream, batch_size, settings,
        settings_hash(settings),
    )


def _tensors(batch: dict, device) -> dict:
    """A loader batch as tensors; on CUDA the inputs and labels in pinned (page-locked) host
    memory, so their copies to the GPU (``non_blocking``) overlap the work queued before them."""
    b = {k: torch.from_numpy(v) for k, v in batch.items()}
    if device.type == "cuda":
        for key in ("x", "label"):
            b[key] = b[key].pin_memory()
    return b


def _x(batch: dict, info, device) -> torch.Tensor:
    x = batch["x"].to(device, non_blocking=True)
    return x.reshape(len(x), *info.input_shape)


def _batch_loss(module, info, batch, device) -> torch.Tensor:
    """Per-jet training loss of one batch (``module``: the model, or its data-parallel wrapper)."""
    x = _x(batch, info, device)
    if info.kind == "tagger":
        return module.loss(module(x), batch["label"].to(device, non_blocking=True))
    return module.loss(x, module(x))


def _mass_labels(batch: dict, edges: np.ndarray, device) -> torch.Tensor:
    """The adversary's mass classes of a batch's jets (from its numpy ``mass`` column)."""
    return torch.from_numpy(np.asarray(mass_bin_labels(batch["mass"], edges))).to(device)


def _val_means(stream: JetStream, device, comm: Comm, epoch: int, per_jet, n_values: int = 1) -> list[float]:
    """Means over the validation split, all ranks together, of the ``n_values`` per-jet tensors
    that ``per_jet(tensors, batch)`` returns for each batch (no gradients)."""
    sums, n = [0.0] * n_values, 0
    with torch.no_grad():
        for batch in stream.iter_numpy(epoch=epoch):
            values = per_jet(_tensors(batch, device), batch)
            sums = [total + float(v.sum()) for total, v in zip(sums, values)]
            n += len(values[0])
    n = comm.allreduce_mean(float(n)) * comm.size
    return [comm.allreduce_mean(total) * comm.size / max(n, 1.0) for total in sums]


def _mean_loss(module, info, stream: JetStream, device, comm: Comm, epoch: int) -> float:
    module.eval()
    return _val_means(stream, device, comm, epoch, lambda b, _: (_batch_loss(module, info, b, device),))[0]


def _adversarial_val_losses(module, adversary, info, stream: JetStream, device, comm: Comm, epoch: int,
                            edges: np.ndarray) -> tuple[float, float, float]:
    """(``L_auto - adv_lambda * L_adv``, ``L_auto``, ``L_adv``): validation means of an adversarial run.

    The first is what the autoencoder is trained to minimise (Heimel et al. sec. 2.3), so model
    selection and early stopping use it: on ``L_auto`` alone they would keep the epoch that
    reconstructs best, which is the one that has given up least of its mass information."""

    def losses(b, batch):
        x = _x(b, info, device)
        recon = module(x)
        labels = _mass_labels(batch, edges, device)
        return module.loss(x, recon), adversary.loss(adversary(recon), labels)

    module.eval()
    adversary.eval()
    auto, adv = _val_means(stream, device, comm, epoch, losses, n_values=2)
    adversary.train()
    return auto - adversary.adv_lambda * adv, auto, adv


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])


def _save(study: Study, p: Prepared, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    blobs.write_atomic(study.store, checkpoint_path(p.run), buf.getvalue())


def _load_checkpoint(study: Study, run: str) -> dict | None:
    if not blobs.exists(study.store, checkpoint_path(run)):
        return None
    return torch.load(io.BytesIO(blobs.read_blob(study.store, checkpoint_path(run))), map_location="cpu", weights_only=False)


def _mass_edges(study: Study, cfg: RunConfig) -> np.ndarray:
    """Equal-population QCD mass bins from the background jets of the training split."""
    masses = [split_jets(study, s, ["jets/mass"], "train")["jets/mass"] for s in cfg.samples]
    return mass_bin_edges(np.concatenate(masses), n_bins=cfg.adversary.mass_bins)


def autocast_on(study: Study, device_type: str, representation: str, capabilities: dict | None = None) -> bool:
    """Whether the training steps run under bfloat16 autocast: on CUDA with ``train.amp``, on the
    CPU with ``train.amp_cpu`` (one ConfigError, before any work, on a CPU without bfloat16 units,
    where it would be slower than float32); never for LoLa, whose four-vector arithmetic (the
    masses) needs float32. Validation and evaluation always run in float32."""
    if representation.startswith("lola"):
        return False
    if device_type == "cuda":
        return study.train.amp
    if not study.train.amp_cpu:
        return False
    if not cpu_has_bf16(capabilities):
        raise ConfigError(
            "train.amp_cpu: this CPU has no bfloat16 units (AVX512-BF16 or AMX; torch.cpu.get_capabilities()), "
            "so bfloat16 autocast would be slower than float32 here; set train.amp_cpu: false in the study file"
        )
    return True


def _optimizer_info(info, cfg: RunConfig):
    """The model's ModelInfo with the run's optimizer / learning-rate overrides applied."""
    import dataclasses

    if cfg.optimizer == "paper" and cfg.lr is None:
        return info
    name = info.optimizer if cfg.optimizer == "paper" else cfg.optimizer
    settings = dict(info.optimizer_settings) if cfg.optimizer == "paper" else {}
    settings["lr"] = cfg.lr if cfg.lr is not None else settings.get("lr", 1e-3 if name == "adam" else 0.01)
    return dataclasses.replace(info, optimizer=name, optimizer_settings=settings)


def train(
    study: Study,
    run: str,
    *,
    comm: Comm | None = None,
    restart: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    stop_after_epochs: int | None = None,
    backend: str = "auto",
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Train (or resume) one run; returns its summary. ``stop_after_epochs`` ends the process's
    work early (a test hook standing in for a killed job); the checkpoint stays resumable.
    ``should_stop`` (e.g. :func:`jetscan.cluster.preempt.from_env`'s flag, set by Slurm's
    preemption signal) is asked after each epoch's checkpoint; when any rank says yes, every
    rank returns ``{"run", "stopped_after_epoch", "preempted": True}`` and a re-run resumes.

    Data parallel: ``comm`` (default ``make_comm(backend)``: ``"auto"``, ``"horovod"``,
    ``"ddp"``) gives rank and size; each rank reads ``batch_size / size`` jets of every global
    batch (``data.virtual_ranks``), takes the mean loss over them, and the gradients are
    averaged (ddp: ``DistributedDataParallel`` in the backward pass; horovod: its
    ``DistributedOptimizer``), so N workers take the steps of one worker on the global batch
    with the same learning rate. With the run's ``lr_scaling`` ``"linear"`` (or ``"sqrt"``), ``batch_size`` is
    per worker instead, the global batch is N times larger and the learning rate N (sqrt N)
    times larger, reached by a linear warm-up over ``warmup_epochs`` (Goyal et al. 2017,
    :mod:`jetscan.core.models.schedule`); both optimizers of the adversarial AE are scaled."""
    blobs.use_storage_options(study.store, study.storage_options)  # s3:// etc.: this worker's process too
    comm = comm or make_comm(backend, cuda=wants_cuda(study.train.device))
    if study.train.threads:
        torch.set_num_threads(study.train.threads)
    p = prepare(study, run, comm)
    device = comm.use_device(study.train.device)  # this worker's own GPU (jetscan.cluster.devices)
    module, info, cfg = p.module.to(device), p.info, p.cfg
    use_amp = info.kind != "pca" and cfg.adversary is None and autocast_on(study, device.type, p.representation)

    ckpt = None if restart else _load_checkpoint(study, run)
    if ckpt is not None and ckpt["settings_hash"] != p.settings_hash:
        raise StorageError(
            f"run {run!r} has a checkpoint in {study.store!r} made with other settings; "
            "pass --restart to train it from scratch (the old checkpoint is replaced), or rename the run"
        )
    if ckpt is not None and ckpt.get("finished"):
        return ckpt["summary"]

    t0 = time.perf_counter()
    if info.kind == "pca":
        xs, n = [], 0
        for batch in p.fit_stream.iter_numpy(epoch=0):
            xs.append(batch["x"])
            n += len(batch["x"])
            if n >= cfg.max_fit_jets:
                break
        x = torch.from_numpy(np.concatenate(xs)[: cfg.max_fit_jets]).reshape(-1, *info.input_shape).to(device)
        module.fit(x)
        val = _mean_loss(module, info, p.val_stream, device, comm, 0)
        history = {"epoch": [0], "train_loss": [float(module.loss(x, module(x)).mean())], "val_loss": [val]}
        summary = _finish(study, p, module, history, best_epoch=0, seconds=time.perf_counter() - t0, comm=comm)
        return summary

    optimizer, scheduler = make_optimizer(module, _optimizer_info(info, cfg))
    optimizer = comm.wrap_optimizer(optimizer, module)
    factor = lr_factor(comm.size, cfg.lr_scaling)
    adversary = opt_adv = edges = None
    if cfg.adversary is not None:
        if info.kind != "autoencoder":
            raise ConfigError(f"train.runs.{run}.adversary: only autoencoders can be mass-decorrelated")
        n_out = int(np.prod(info.input_shape))
        adversary = MassAdversary(
            n_inputs=n_out, n_bins=cfg.adversary.mass_bins, adv_lambda=cfg.adversary.adv_lambda, lr=cfg.adversary.lr
        ).to(device)
        opt_adv = comm.wrap_optimizer(torch.optim.Adam(adversary.parameters(), lr=cfg.adversary.lr), adversary)
        edges = _mass_edges(study, cfg)
    optimizers = [o for o in (optimizer, opt_adv) if o is not None]
    for opt in optimizers:  # the scaled rates (a resumed optimizer brings its own back)
        for group in opt.param_groups:
            group["target_lr"] = group["lr"] * factor
    _warm_up(optimizers, factor, 0.0, cfg.warmup_epochs)

    start_epoch, history, best = 0, {"epoch": [], "train_loss": [], "val_loss": [], "seconds": []}, None
    if ckpt is not None and factor != 1.0 and ckpt.get("world_size", comm.size) != comm.size:
        raise StorageError(
            f"run {run!r} was checkpointed on {ckpt['world_size']} workers with lr_scaling {cfg.lr_scaling!r}, "
            f"which sets its batch and learning rate; resume it on {ckpt['world_size']} workers, or pass --restart"
        )
    if ckpt is not None:
        module.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if adversary is not None:
            adversary.load_state_dict(ckpt["adversary"])
            opt_adv.load_state_dict(ckpt["opt_adv"])
        _set_rng_state(ckpt["rng"])
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
        history.setdefault("seconds", [float("nan")] * len(history["epoch"]))  # a checkpoint from before epochs were timed
    else:
        comm.broadcast_state(module, optimizer)
        if adversary is not None:
            comm.broadcast_state(adversary, opt_adv)

    # the training forward passes go through the comm's wrapper (ddp: DistributedDataParallel,
    # made after the weights are final on every rank); the loss, validation and checkpoints
    # use the models themselves
    net = comm.wrap_module(module)
    adv_net = comm.wrap_module(adversary) if adversary is not None else None
    stale = 0 if best is None else (history["epoch"][-1] - best["epoch"] if history["epoch"] else 0)
    done_now = 0
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        module.train()
        total, n = 0.0, 0
        warming = factor != 1.0 and epoch < cfg.warmup_epochs
        steps = max(p.train_stream.steps_per_epoch(epoch) or 1, 1) if warming else 1
        for step, batch in enumerate(p.train_stream.iter_numpy(epoch=epoch)):
            if warming:  # per step: lr rises linearly to the scaled rate (Goyal et al. sec. 2.2)
                _warm_up(optimizers, factor, epoch + step / steps, cfg.warmup_epochs)
            b = _tensors(batch, device)
            if adversary is not None:
                labels = _mass_labels(batch, edges, device)
                losses = adversarial_step(net, adv_net, optimizer, opt_adv, _x(b, info, device), labels)
                total += losses.auto * len(batch["x"])
            else:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = _batch_loss(net, info, b, device).mean()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch["x"])
            n += len(batch["x"])
        train_loss = (comm.allreduce_mean(total) * comm.size) / max(comm.allreduce_mean(float(n)) * comm.size, 1.0)
        if adversary is not None:  # the AE's own objective, L_auto - lambda L_adv (and both parts)
            val_loss, val_auto, val_adv = _adversarial_val_losses(
                module, adversary, info, p.val_stream, device, comm, epoch, edges)
            for key, value in (("val_auto", val_auto), ("val_adv", val_adv)):
                history.setdefault(key, [float("nan")] * len(history["epoch"])).append(value)
        else:
            val_loss = _mean_loss(module, info, p.val_stream, device, comm, epoch)
        if warming:  # the rate at the epoch's end: the scaled one once the warm-up is over
            _warm_up(optimizers, factor, epoch + 1, cfg.warmup_epochs)
        if scheduler is not None and epoch + 1 >= cfg.warmup_epochs:  # plateau annealing after the warm-up
            scheduler.step(val_loss)
        history["epoch"].append(epoch)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        history["seconds"].append(time.perf_counter() - t_epoch)  # wall time of the epoch, validation included
        # the training steps' precision (the adversarial step has no autocast); a resume may change it
        history.setdefault("precision", [None] * (len(history["epoch"]) - 1)).append(
            "bfloat16" if use_amp else "float32")
        if best is None or val_loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_loss, "state": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}}
            stale = 0
        else:
            stale += 1
        if comm.is_root:
            state = {
                "settings_hash": p.settings_hash,
                "settings": p.settings,
                "epoch": epoch,
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": _rng_state(),
                "history": history,
                "best": best,
                "world_size": comm.size,
            }
            if adversary is not None:
                state.update(adversary=adversary.state_dict(), opt_adv=opt_adv.state_dict())
            _save(study, p, state)
        if on_epoch is not None:
            on_epoch({"run": run, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                      "seconds": history["seconds"][-1]})
        done_now += 1
        if stale >= cfg.patience:
            break
        if stop_after_epochs is not None and done_now >= stop_after_epochs:
            return {"run": run, "stopped_after_epoch": epoch}
        if should_stop is not None and epoch + 1 < cfg.epochs and comm.allreduce_mean(float(should_stop())) > 0:
            return {"run": run, "stopped_after_epoch": epoch, "preempted": True}  # every rank stops together
    module.load_state_dict(best["state"])
    return _finish(study, p, module, history, best_epoch=best["epoch"], seconds=time.perf_counter() - t0, comm=comm)


def train_runs(
    study: Study, runs: list[str], restart: bool = False, backend: str = "auto", on_epoch: Callable[[dict], None] | None = None
) -> list[dict]:
    """Train ``runs`` in turn in this worker; their summaries. The job a runner is handed
    (:func:`jetscan.cluster.launch.launch_ray`): a top-level function, so Ray pickles it by
    reference."""
    return [train(study, run, restart=restart, backend=backend, on_epoch=on_epoch) for run in runs]


def _warm_up(optimizers: list, factor: float, progress_epochs: float, warmup_epochs: float) -> None:
    """Set every parameter group's rate for ``progress_epochs`` of training (its ``target_lr``
    is the scaled rate, reached at ``warmup_epochs``)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = warmup_lr(group["target_lr"], factor, progress_epochs, warmup_epochs)


def _finish(study: Study, p: Prepared, module, history: dict, *, best_epoch: int, seconds: float, comm: Comm) -> dict:
    summary = {
        "run": p.run,
        "model": p.cfg.model,
        "representation": p.representation,
        "epochs_run": len(history["epoch"]),
        "best_epoch": best_epoch,
        "best_val_loss": float(min(history["val_loss"])),
        "train_jets": p.train_stream.n_jets_total,
        "seconds": seconds,  # this invocation's (every epoch's, over resumes: history["seconds"])
        "world_size": comm.size,
        "global_batch": p.batch_size,
        # the training steps' precision ("bfloat16+float32" when resumes changed it)
        "precision": "+".join(sorted({x for x in history.get("precision", []) if x})) or "float32",
    }
    if comm.is_root:
        state = {
            "settings_hash": p.settings_hash,
            "settings": p.settings,
            "finished": True,
            "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
            "history": history,
            "summary": summary,
        }
        _save(study, p, state)
    comm.barrier()
    return summary


def load_trained(study: Study, run: str, device: torch.device | None = None):
    """(module in eval mode, ModelInfo, checkpoint) of a finished run."""
    cfg = study.run(run)
    ckpt = _load_checkpoint(study, run)
    if ckpt is None or not ckpt.get("finished"):
        raise StorageError(f"run {run!r} is not trained yet in {study.store!r}: run 'jetscan train --model {run}' first")
    if ckpt["settings_hash"] != settings_hash(run_settings(study, run)):
        raise StorageError(f"run {run!r} in {study.store!r} was trained with other settings; retrain it (--restart)")
    module, info = build_model(cfg.model, **cfg.hyper)
    module.load_state_dict(ckpt["model"])
    module.to(device or torch.device("cpu")).eval()
    return module, info, ckpt
