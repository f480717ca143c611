"""The training loop on real generated jets: learning, resume, early stopping, bad inputs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jetscan.cluster.devices import cpu_has_bf16
from jetscan.core.errors import ConfigError, StorageError
from jetscan.core.metrics import auc
from jetscan.core.models import build_model
from jetscan.core.study import Study
from jetscan.jobs.evaluate import score_sample
from jetscan.jobs.train import _mass_edges, checkpoint_path, load_trained, prepare, train
from jetscan.storage import blobs

pytestmark = [pytest.mark.slow, pytest.mark.pythia]

RUNS = {
    "tagger": {
        "model": "deeptop_minimal", "samples": ["qcd", "top"], "representation": "heimel40_max",
        "epochs": 30, "batch_size": 16, "optimizer": "adam", "lr": 1e-3,
    },
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 4},
    "pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 6}},
    "adv": {"model": "image_ae", "samples": ["qcd"], "epochs": 2, "adversary": {"adv_lambda": 5e-4, "mass_bins": 10}},
}


def with_runs(study: Study, runs: dict, store: str | None = None) -> Study:
    data = study.model_dump(mode="json")
    data["train"] = {"runs": runs, "threads": 2}
    if store:
        data["store"] = store
    return Study.from_dict(data)


@pytest.fixture(scope="module")
def study(pythia_store, ray_local):
    from jetscan.jobs.preprocess import preprocess

    preprocess(pythia_store, workers=2)
    return with_runs(pythia_store, RUNS)


def test_the_cnn_tagger_separates_top_from_qcd(study):
    summary = train(study, "tagger", restart=True)
    assert summary["train_jets"] == 150 + 100
    module, info, ckpt = load_trained(study, "tagger")
    top, _ = score_sample(study, module, info, "heimel40_max", "top")
    qcd, _ = score_sample(study, module, info, "heimel40_max", "qcd")
    s = np.r_[top["score"], qcd["score"]]
    y = np.r_[np.ones(len(top["score"])), np.zeros(len(qcd["score"]))]
    assert auc(s, y) > 0.75
    assert ckpt["history"]["train_loss"][-1] < ckpt["history"]["train_loss"][0]


def _test_split_mse(study, module, sample: str) -> tuple[np.ndarray, np.ndarray]:
    """(jet masses, per-jet reconstruction loss) of the test split's stored heimel40 images,
    the loss recomputed here as Farina et al.'s mean squared pixel error."""
    from jetscan.storage import layout
    from jetscan.storage.loader import split_assignment
    from jetscan.storage.reader import read_jets

    images = layout.open_sample(layout.open_root(study.store), sample)["inputs/heimel40"][:]
    mass = read_jets(study.store, sample, ["jets/mass"])["jets/mass"]
    f = study.data.splits
    test = split_assignment(len(mass), (f.train, f.val, f.test), study.seed, sample) == 2
    x = torch.from_numpy(images[test]).reshape(-1, 40, 40)
    with torch.no_grad():
        recon = module(x).reshape(x.shape)
    return mass[test], ((x - recon) ** 2).mean(dim=(1, 2)).double().numpy()


def _assert_scores_are_the_losses(arrays: dict, mass: np.ndarray, mse: np.ndarray) -> None:
    """The scores of ``score_sample`` are the recomputed losses of the same jets (paired by mass)."""
    assert len(np.unique(mass)) == len(mass) == len(arrays["score"]) == 75
    got, want = np.argsort(arrays["mass"]), np.argsort(mass)
    np.testing.assert_array_equal(arrays["mass"][got], mass[want])  # the same test jets
    np.testing.assert_allclose(arrays["score"][got], mse[want], rtol=1e-5, atol=1e-12)


def test_autoencoder_loss_falls_and_scores_are_per_jet_losses(study):
    summary = train(study, "dense", restart=True)
    module, info, ckpt = load_trained(study, "dense")
    losses = ckpt["history"]["train_loss"]
    assert losses[-1] < losses[0]
    assert summary["best_val_loss"] == pytest.approx(min(ckpt["history"]["val_loss"]))
    arrays, _ = score_sample(study, module, info, "heimel40", "qcd")
    _assert_scores_are_the_losses(arrays, *_test_split_mse(study, module, "qcd"))


def test_pca_is_fitted_and_reconstructs_by_projection(study):
    train(study, "pca", restart=True)
    module, info, _ = load_trained(study, "pca")
    arrays, _ = score_sample(study, module, info, "heimel40", "qcd")
    _assert_scores_are_the_losses(arrays, *_test_split_mse(study, module, "qcd"))
    x = torch.rand(5, 40, 40)
    recon = module(x)
    flat = x.reshape(5, -1) - module.mean
    proj = flat @ module.components.T @ module.components + module.mean
    torch.testing.assert_close(recon.reshape(5, -1), proj, rtol=1e-4, atol=1e-5)


def test_adversary_mass_bins_hold_equal_qcd_populations(study):
    from jetscan.core.models.adversarial import mass_bin_labels
    from jetscan.storage.loader import split_assignment
    from jetscan.storage.reader import read_jets

    cfg = study.run("adv")
    edges = _mass_edges(study, cfg)
    m = read_jets(study.store, "qcd", ["jets/mass"])["jets/mass"]
    train_m = m[split_assignment(len(m), (0.5, 0.25, 0.25), study.seed, "qcd") == 0]
    counts = np.bincount(mass_bin_labels(train_m, edges), minlength=12)[1:11]
    assert counts.max() - counts.min() <= 1
    summary = train(study, "adv", restart=True)
    assert summary["epochs_run"] == 2
    # validation, model selection and early stopping follow the AE's own objective,
    # L_auto - lambda L_adv, not the reconstruction alone (which keeps the least decorrelated epoch)
    h = load_trained(study, "adv")[2]["history"]
    auto, adv, val = (np.asarray(h[k]) for k in ("val_auto", "val_adv", "val_loss"))
    assert len(auto) == len(adv) == len(val) == 2
    np.testing.assert_allclose(val, auto - 5e-4 * adv, rtol=1e-12)
    assert np.all(auto > 0) and np.all((adv > 0) & (adv < 2 * np.log(12)))  # per-jet SSE; a 12-class cross entropy
    assert summary["best_epoch"] == int(np.argmin(val))


def test_resume_reaches_the_same_weights(study, tmp_path):
    runs = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 3}}
    a = with_runs(study, runs, str(tmp_path / "a.zarr"))
    b = with_runs(study, runs, str(tmp_path / "b.zarr"))
    shutil.copytree(study.store, a.store, ignore=shutil.ignore_patterns("_runs"))
    shutil.copytree(study.store, b.store, ignore=shutil.ignore_patterns("_runs"))
    train(a, "dense")
    assert train(b, "dense", stop_after_epochs=1) == {"run": "dense", "stopped_after_epoch": 0}
    train(b, "dense")  # resumes from the epoch-0 checkpoint
    wa, wb = load_trained(a, "dense")[2], load_trained(b, "dense")[2]
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=0, atol=0)
    timed = {k: v for k, v in wa["history"].items() if k != "seconds"}
    assert timed == {k: v for k, v in wb["history"].items() if k != "seconds"}
    assert len(wb["history"]["seconds"]) == 3 and all(s > 0 for s in wb["history"]["seconds"])  # resumed epochs too
    # a finished run is not trained again
    assert train(b, "dense") == wb["summary"]


def test_a_killed_training_process_resumes(study, tmp_path):
    runs = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 6}}
    ref = with_runs(study, runs, str(tmp_path / "ref.zarr"))
    killed = with_runs(study, runs, str(tmp_path / "killed.zarr"))
    for s in (ref, killed):
        shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    train(ref, "dense")
    yaml_path = tmp_path / "killed.yaml"
    yaml_path.write_text(killed.to_yaml())
    proc = subprocess.Popen(
        [sys.executable, "-m", "jetscan.jobs.cli", "train", str(yaml_path), "--model", "dense"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not blobs.exists(killed.store, checkpoint_path("dense")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(Path(killed.store) / checkpoint_path("dense"), weights_only=False)
    assert not ckpt.get("finished"), "the run finished before it could be killed"
    train(killed, "dense")
    want, got = load_trained(ref, "dense")[2]["model"], load_trained(killed, "dense")[2]["model"]
    for k in want:
        torch.testing.assert_close(want[k], got[k], rtol=0, atol=0)


def test_early_stopping_and_changed_settings(study, tmp_path):
    runs = {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 30, "patience": 1, "hyper": {"lr": 10.0}}}
    s = with_runs(study, runs, str(tmp_path / "es.zarr"))
    shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    summary = train(s, "dense")
    assert summary["epochs_run"] < 30  # a huge learning rate stops improving quickly
    changed = with_runs(study, {"dense": {**runs["dense"], "epochs": 31}}, s.store)
    with pytest.raises(StorageError, match="trained with other settings; retrain it"):
        load_trained(changed, "dense")


def test_bad_models_and_parameters_are_rejected(study):
    with pytest.raises(ConfigError, match="unknown model 'cnnae'; models: cnn_ae"):
        with_runs(study, {"x": {"model": "cnnae", "samples": ["qcd"]}})
    with pytest.raises(ConfigError, match="cnn_ae.bottleneck: must be a positive integer \\(got -3\\)"):
        prepare(with_runs(study, {"x": {"model": "cnn_ae", "samples": ["qcd"], "hyper": {"bottleneck": -3}}}), "x")
    with pytest.raises(ConfigError, match="an autoencoder trains on background only"):
        prepare(with_runs(study, {"x": {"model": "dense_ae", "samples": ["qcd", "top"]}}), "x")
    with pytest.raises(ConfigError, match="a tagger needs background and signal samples"):
        prepare(with_runs(study, {"x": {"model": "deeptop_minimal", "samples": ["qcd"]}}), "x")
    with pytest.raises(ConfigError, match="train.runs.x.samples: no sample named 'wjets'"):
        with_runs(study, {"x": {"model": "dense_ae", "samples": ["wjets"]}})
    with pytest.raises(ConfigError, match="needs data.contamination"):
        with_runs(study, {"x": {"model": "dense_ae", "samples": ["qcd"], "contaminated": True}})
    with pytest.raises(ConfigError, match="no run named 'nope'"):
        train(study, "nope")
    with pytest.raises(StorageError, match="is not trained yet"):
        load_trained(with_runs(study, {"fresh": {"model": "dense_ae", "samples": ["qcd"]}}), "fresh")


def _with_amp_cpu(study: Study, runs: dict, store: str) -> Study:
    data = with_runs(study, runs, store).model_dump(mode="json")
    data["train"]["amp_cpu"] = True
    return Study.from_dict(data)


def test_autocast_is_amp_on_cuda_amp_cpu_on_the_cpu_and_never_for_lola(study):
    from jetscan.jobs.train import autocast_on

    plain, amp_cpu = with_runs(study, {}), _with_amp_cpu(study, {}, study.store)
    bf16_cpu, old_cpu = {"avx512_bf16": True, "amx_bf16": True}, {"avx2": True, "avx512_bf16": False}
    assert autocast_on(plain, "cuda", "heimel40") and autocast_on(amp_cpu, "cuda", "heimel40")
    assert not autocast_on(plain, "cpu", "heimel40", bf16_cpu)  # off by default: CPU runs stay float32
    assert autocast_on(amp_cpu, "cpu", "heimel40", bf16_cpu) and autocast_on(amp_cpu, "cpu", "ms37x4", bf16_cpu)
    assert not autocast_on(amp_cpu, "cpu", "lola40", bf16_cpu) and not autocast_on(plain, "cuda", "lola40")
    assert not autocast_on(plain, "cpu", "heimel40", old_cpu)
    with pytest.raises(ConfigError, match="train.amp_cpu: this CPU has no bfloat16 units .* set train.amp_cpu: false"):
        autocast_on(amp_cpu, "cpu", "heimel40", old_cpu)


def test_amp_cpu_on_a_cpu_without_bfloat16_units_fails_before_training(study, tmp_path, monkeypatch):
    """One clear error before any work: no checkpoint is written (a CPU without bfloat16 units
    is simulated through torch's capability report, which is what the check reads)."""
    s = _with_amp_cpu(study, {"t": {**RUNS["tagger"], "epochs": 1}}, str(tmp_path / "old-cpu.zarr"))
    shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False, "amx_bf16": False})
    with pytest.raises(ConfigError, match="train.amp_cpu: this CPU has no bfloat16 units"):
        train(s, "t")
    assert not (Path(s.store) / checkpoint_path("t")).exists()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bfloat16 units: train.amp_cpu refuses to run here")
def test_bfloat16_autocast_on_the_cpu_trains_the_cnn_tagger_near_float32(study, tmp_path):
    """train.amp_cpu (the CNNs train 1.9-2.5x faster on CPUs with AMX): the same seed's CNN
    tagger starts at nearly the float32 run's loss without equalling it (its steps did run in
    bfloat16), learns as well, keeps float32 weights, separates tops, and its checkpoint and
    summary say bfloat16."""
    runs = {"t": RUNS["tagger"]}
    f32 = with_runs(study, runs, str(tmp_path / "f32.zarr"))
    b16 = _with_amp_cpu(study, runs, str(tmp_path / "b16.zarr"))
    for s in (f32, b16):
        shutil.copytree(study.store, s.store, ignore=shutil.ignore_patterns("_runs"))
    assert train(f32, "t")["precision"] == "float32"
    assert train(b16, "t")["precision"] == "bfloat16"
    (m32, info, c32), (m16, _, c16) = load_trained(f32, "t"), load_trained(b16, "t")
    n = len(c16["history"]["epoch"])
    assert c16["history"]["precision"] == ["bfloat16"] * n and c32["history"]["precision"] == ["float32"] * len(c32["history"]["epoch"])
    assert all(v.dtype == torch.float32 for v in c16["model"].values() if v.is_floating_point())
    l32, l16 = np.asarray(c32["history"]["val_loss"]), np.asarray(c16["history"]["val_loss"])
    # the first epoch: near float32's, not equal; later the two trajectories part (the steps differ
    # in the third digit and early stopping picks its own epoch), so compare where they end up
    assert l16[0] != l32[0] and abs(l16[0] / l32[0] - 1) < 0.01
    assert l16.min() < 0.5 * l16[0] and l16.min() < 1.25 * l32.min()
    top, _ = score_sample(b16, m16, info, "heimel40_max", "top")
    qcd, _ = score_sample(b16, m16, info, "heimel40_max", "qcd")
    assert auc(np.r_[top["score"], qcd["score"]], np.r_[np.ones(len(top["score"])), np.zeros(len(qcd["score"]))]) > 0.75


def test_contaminated_training_mixes_the_signal_fraction(study, tmp_path):
    data = study.model_dump(mode="json")
    data["data"]["contamination"] = {"signal": "top", "fraction": 0.1}
    data["train"] = {"runs": {"dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 1, "contaminated": True}}}
    data["store"] = str(tmp_path / "c.zarr")
    shutil.copytree(study.store, data["store"], ignore=shutil.ignore_patterns("_runs"))
    s = Study.from_dict(data)
    summary = train(s, "dense")
    assert summary["train_jets"] == 150 + round(0.1 * 150 / 0.9)


def test_read_knobs_leave_the_run_hash_alone(make_study, tmp_path):
    """cache_mb, prefetch_chunks and decode_workers change how a stream reads, not what it
    yields: a run's settings hash (which its checkpoint must match) ignores them."""
    from jetscan.core.study import settings_hash
    from jetscan.jobs.train import run_settings

    base = with_runs(make_study(tmp_path / "s.zarr"), {"dense": RUNS["dense"]})
    data = base.model_dump(mode="json")
    data["data"].update(cache_mb=0, prefetch_chunks=1, decode_workers=2)
    tuned = Study.from_dict(data)
    assert tuned.data.cache_mb == 0 and tuned.data.decode_workers == 2
    assert settings_hash(run_settings(tuned, "dense")) == settings_hash(run_settings(base, "dense"))
    data["data"]["batch_size"] = 64  # what the run sees still counts
    assert settings_hash(run_settings(Study.from_dict(data), "dense")) != settings_hash(run_settings(base, "dense"))


def test_max_train_jets_trains_on_a_subset_and_validates_on_the_same_share(study, tmp_path):
    """train.runs.RUN.max_train_jets (Farina's CNN AE on 2 CPU cores): the run trains on that many
    of the 150 qcd training jets and validates on the same share of the 75 validation jets; its
    summary (the results' training size) says so, and only its own settings hash changes."""
    from jetscan.core.study import settings_hash
    from jetscan.jobs.train import run_settings

    sub = with_runs(study, {"dense": RUNS["dense"], "sub": {**RUNS["dense"], "epochs": 1, "max_train_jets": 60}},
                    store=str(tmp_path / "m.zarr"))
    shutil.copytree(study.store, sub.store, ignore=shutil.ignore_patterns("_runs"))
    p = prepare(sub, "sub")
    assert (p.train_stream.n_jets_total, p.val_stream.n_jets_total) == (60, 30)  # 60/150 of the 75 validation jets
    assert (p.train_stream.n_split_jets, p.val_stream.n_split_jets) == (150, 75)
    assert train(sub, "sub")["train_jets"] == 60
    plain = with_runs(study, {"dense": RUNS["dense"]})
    assert settings_hash(run_settings(sub, "dense")) == settings_hash(run_settings(plain, "dense"))
    assert "max_train_jets" not in plain.run("dense").model_dump(mode="json")
    as_sub = with_runs(study, {"sub": {**RUNS["dense"], "epochs": 1}})
    assert settings_hash(run_settings(as_sub, "sub")) != settings_hash(run_settings(sub, "sub"))


def test_cnn_ae_learns_more_than_the_mean_image_of_real_jets(study):
    """Farina's CNN AE on unit-sum jet images (pixels of 0.01-0.3, most of the 1600 empty): 100
    Adam steps on the 150 qcd training jets reconstruct the 75 validation jets better than their
    mean training image does, for three seeds (16 filters keep it fast). Under PyTorch's default
    initialisation (random biases that swamp such inputs) it stayed above the mean image."""
    from jetscan.storage.loader import JetStream

    def images(split):
        return torch.from_numpy(np.concatenate([b["x"] for b in JetStream(study, ["qcd"], "heimel40", split=split,
                                                                           shuffle=False).iter_numpy()]))

    train_x, val_x = images("train").reshape(-1, 40, 40), images("val").reshape(-1, 40, 40)
    mean_image_loss = float(((val_x - train_x.mean(0)) ** 2).mean())
    for seed in range(3):
        torch.manual_seed(seed)
        model, _ = build_model("cnn_ae", bottleneck=6, filters=16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(100):
            batch = train_x[(step % 3) * 50:(step % 3 + 1) * 50]
            opt.zero_grad()
            model.loss(batch, model(batch)).mean().backward()
            opt.step()
        with torch.no_grad():
            assert float(model.loss(val_x, model(val_x)).mean()) < 0.85 * mean_image_loss, seed
