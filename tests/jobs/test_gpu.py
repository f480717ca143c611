"""Training and evaluation on CUDA agree with the CPU; each local rank takes its own GPU.

Skipped without a CUDA device (marker ``gpu``). On a GPU machine:

- a dense autoencoder trained on ``cuda`` (float32, no autocast) reaches the CPU run's losses
  and weights to a loose tolerance (different kernels and summation orders, not different
  steps), and with bfloat16 autocast its losses stay near them;
- PCA fitted on the GPU equals the CPU fit;
- ``jetscan evaluate`` on ``cuda`` scores the test split as on the CPU (same AUC);
- the device of each local rank (torchrun's ``LOCAL_RANK``) is that GPU, made current;
- with 2 GPUs or more, 2 torchrun workers (NCCL, one GPU each, DistributedDataParallel) reach
  the weights of one GPU worker.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from jetscan.core.metrics import auc
from jetscan.core.study import Study

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.pythia,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible to torch)"),
]

RUNS = {
    "dense": {"model": "dense_ae", "samples": ["qcd"], "epochs": 3, "batch_size": 16, "optimizer": "adam", "lr": 1e-3},
    "pca": {"model": "pca", "samples": ["qcd"], "hyper": {"bottleneck": 6}},
    "tagger": {
        "model": "deeptop_minimal", "samples": ["qcd", "top"], "representation": "heimel40_max",
        "epochs": 10, "batch_size": 16, "optimizer": "adam", "lr": 1e-3,
    },
}


def on(study: Study, store, device: str, *, amp: bool = False, **data) -> Study:
    """A copy of ``study``'s store (without runs) at ``store``, training on ``device``."""
    d = study.model_dump(mode="json")
    d["store"] = str(store)
    d["train"] = {"runs": RUNS, "threads": 2, "device": device, "amp": amp}
    d["data"].update(data)
    shutil.copytree(study.store, d["store"], ignore=shutil.ignore_patterns("_runs", "_results", "results"))
    return Study.from_dict(d)


@pytest.fixture(scope="module")
def study(pythia_store, ray_local):
    from jetscan.jobs.preprocess import preprocess

    preprocess(pythia_store, workers=2, representations=["heimel40", "heimel40_max"])
    return pythia_store


def test_training_on_cuda_reaches_the_cpu_run(study, tmp_path):
    from jetscan.jobs.train import load_trained, train

    cpu, gpu, amp = (on(study, tmp_path / f"{n}.zarr", d, amp=a) for n, d, a in
                     (("cpu", "cpu", False), ("gpu", "cuda", False), ("amp", "cuda", True)))
    for s in (cpu, gpu, amp):
        train(s, "dense", restart=True)
    (m_cpu, _, c_cpu), (m_gpu, _, c_gpu), (_, _, c_amp) = (load_trained(s, "dense") for s in (cpu, gpu, amp))
    assert c_gpu["summary"]["epochs_run"] == c_cpu["summary"]["epochs_run"] == 3
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(c_gpu["history"][key], c_cpu["history"][key], rtol=1e-3)
        # bfloat16 keeps about 3 significant digits: near the float32 losses, not equal to them
        np.testing.assert_allclose(c_amp["history"][key], c_cpu["history"][key], rtol=0.2)
    # about 30 Adam steps of lr 1e-3: float32 kernels may round differently, the steps may not
    torch.testing.assert_close(m_gpu.state_dict(), m_cpu.state_dict(), rtol=1e-2, atol=5e-3)
    for c in (c_gpu, c_amp):
        assert c["history"]["train_loss"][-1] < c["history"]["train_loss"][0]


def test_pca_fit_on_cuda_equals_the_cpu_fit(study, tmp_path):
    from jetscan.jobs.train import load_trained, train

    cpu, gpu = on(study, tmp_path / "cpu.zarr", "cpu"), on(study, tmp_path / "gpu.zarr", "cuda")
    for s in (cpu, gpu):
        train(s, "pca", restart=True)
    a, b = load_trained(cpu, "pca")[2], load_trained(gpu, "pca")[2]
    torch.testing.assert_close(b["model"]["mean"], a["model"]["mean"], rtol=1e-4, atol=1e-7)
    # principal axes up to sign
    ca, cb = a["model"]["components"], b["model"]["components"]
    np.testing.assert_allclose(np.abs((ca * cb).sum(1).numpy()), 1.0, atol=1e-3)
    np.testing.assert_allclose(b["history"]["val_loss"], a["history"]["val_loss"], rtol=1e-3)


def test_evaluation_on_cuda_gives_the_cpu_scores_and_auc(study, tmp_path):
    from jetscan.jobs.evaluate import evaluation_for
    from jetscan.jobs.train import train

    cpu = on(study, tmp_path / "cpu.zarr", "cpu")
    train(cpu, "tagger", restart=True)
    gpu = cpu.model_copy(update={"train": cpu.train.model_copy(update={"device": "cuda"})})  # same store, same run
    e_cpu, e_gpu = evaluation_for(cpu, "tagger"), evaluation_for(gpu, "tagger")
    for s in ("qcd", "top"):
        np.testing.assert_array_equal(e_gpu["samples"][s]["mass"], e_cpu["samples"][s]["mass"])
        np.testing.assert_allclose(e_gpu["samples"][s]["score"], e_cpu["samples"][s]["score"], rtol=1e-3, atol=1e-4)

    def roc_auc(e):
        top, qcd = e["samples"]["top"]["score"], e["samples"]["qcd"]["score"]
        return auc(np.r_[top, qcd], np.r_[np.ones(len(top)), np.zeros(len(qcd))])

    assert roc_auc(e_cpu) > 0.75
    assert roc_auc(e_gpu) == pytest.approx(roc_auc(e_cpu), abs=2e-3)


def test_each_local_rank_takes_its_own_gpu():
    from jetscan.cluster.devices import use_device
    from jetscan.core.errors import RunnerError

    n = torch.cuda.device_count()
    before = torch.cuda.current_device()
    try:
        for rank in range(n):
            env = {"LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(n)}
            assert use_device("auto", environ=env) == torch.device("cuda", rank)
            assert torch.cuda.current_device() == rank
        with pytest.raises(RunnerError, match=f"{n + 1} local ranks .* but {n} visible GPU"):
            use_device("auto", environ={"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(n + 1)})
    finally:
        torch.cuda.set_device(before)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for 2 NCCL workers")
def test_two_ddp_workers_on_two_gpus_reach_the_one_gpu_weights(study, tmp_path):
    from jetscan.cluster.distributed import SingleProcess
    from jetscan.cluster.launch import launch_local
    from jetscan.jobs.train import load_trained, train

    one = on(study, tmp_path / "one.zarr", "cuda", virtual_ranks=2)
    two = on(study, tmp_path / "two.zarr", "cuda", virtual_ranks=2)
    train(one, "dense", restart=True, comm=SingleProcess())
    yaml_path = tmp_path / "two.yaml"
    yaml_path.write_text(two.to_yaml())
    launch_local(str(yaml_path), ["dense"], np=2, backend="ddp", timeout=300)
    (m1, _, c1), (m2, _, c2) = load_trained(one, "dense"), load_trained(two, "dense")
    assert c2["summary"]["world_size"] == 2
    np.testing.assert_allclose(c2["history"]["train_loss"], c1["history"]["train_loss"], rtol=1e-3)
    torch.testing.assert_close(m2.state_dict(), m1.state_dict(), rtol=1e-2, atol=2e-3)
