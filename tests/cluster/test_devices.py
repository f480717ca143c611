"""One GPU per local rank: the device choice on each launcher's environment (no GPU needed).

:func:`jetscan.cluster.devices.choose_device` takes the environment, the number of visible
GPUs and the Ray GPU ids as arguments, so every launcher's case runs here on the CPU:
horovodrun, torchrun, srun (with and without ``--gpus-per-task``), Ray actors (alone, under
Horovod's ``RayExecutor``, and the DDP actors of :mod:`jetscan.cluster.ray_train`), and the
errors for too few GPUs, ``cuda`` without CUDA and bad local ranks. Also
:class:`jetscan.cluster.ddp.DDPModule` in a one-process gloo group: the model's loss and
attributes through the wrapper, DDP's gradients equal to the plain module's, and the
adversarial step with both modules wrapped (the adversary frozen in the autoencoder's step)
equal to the plain step; and 2 gloo ranks of that step, each on half of the batch, equal to
one process on the whole batch (the training runs of 2 workers are in test_distributed.py).
"""

from __future__ import annotations

import pytest
import torch

from jetscan.cluster.devices import choose_device, cpu_has_bf16, local_rank, use_device, wants_cuda
from jetscan.cluster.distributed import SingleProcess
from jetscan.core.errors import ConfigError, RunnerError


def cuda(i: int) -> torch.device:
    return torch.device("cuda", i)


def test_cpu_and_auto_without_gpus():
    for env in ({}, {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}):
        assert choose_device("cpu", environ=env, visible=8) == torch.device("cpu")
        assert choose_device("auto", environ=env, visible=0) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: 'cuda' asked for but no CUDA device is visible; use 'auto' or 'cpu'"):
        choose_device("cuda", environ={}, visible=0)
    with pytest.raises(ConfigError, match="train.device: must be one of auto, cpu, cuda \\(got 'gpu'\\)"):
        choose_device("gpu", environ={}, visible=1)
    assert wants_cuda("auto", True) and wants_cuda("cuda", False) and not wants_cuda("auto", False)
    assert not wants_cuda("cpu", True)


def test_one_process_uses_the_first_visible_gpu():
    assert choose_device("auto", environ={}, visible=1) == cuda(0)
    assert choose_device("cuda", environ={"CUDA_VISIBLE_DEVICES": "3,1"}, visible=2) == cuda(0)


def test_torchrun_local_rank():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    assert [choose_device("auto", environ={**env, "LOCAL_RANK": str(i)}, visible=4) for i in range(4)] == [cuda(i) for i in range(4)]
    assert local_rank(env).source == "LOCAL_RANK (torchrun)" and local_rank(env).size == 4
    with pytest.raises(RunnerError) as info:
        choose_device("auto", environ={**env, "LOCAL_RANK": "0"}, visible=2)  # every rank fails alike, rank 0 too
    msg = str(info.value)
    assert msg.startswith("4 local ranks (LOCAL_RANK (torchrun)) but 2 visible GPUs on this node")
    assert "start one worker per GPU (--np 2) or set CUDA_VISIBLE_DEVICES" in msg
    # without LOCAL_WORLD_SIZE the rank itself must fit
    with pytest.raises(RunnerError, match="local rank 2 \\(LOCAL_RANK \\(torchrun\\)\\) but 2 visible GPUs .*--np 2"):
        choose_device("auto", environ={"LOCAL_RANK": "2"}, visible=2)
    with pytest.raises(RunnerError, match="CUDA_VISIBLE_DEVICES='0'"):
        choose_device("cuda", environ={"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0"}, visible=1)


def test_horovod_local_rank_from_horovod_and_from_horovodrun():
    env = {"HOROVOD_RANK": "3", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2"}
    assert choose_device("auto", environ=env, visible=2) == cuda(1)
    # hvd.local_rank() / local_size() after hvd.init() win over the variables
    assert choose_device("auto", environ=env, visible=4, horovod=(3, 4)) == cuda(3)
    with pytest.raises(RunnerError, match="^4 local ranks \\(Horovod's local_rank\\(\\)\\) but 1 visible GPU on this node"):
        choose_device("auto", environ={}, visible=1, horovod=(0, 4))
    # horovodrun inside a Slurm task: horovodrun's variables, not SLURM_LOCALID
    assert choose_device("auto", environ={**env, "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1"}, visible=2) == cuda(1)


def test_srun_tasks():
    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
            "SLURM_NODEID": "1", "SLURM_LOCALID": "1"}
    assert choose_device("auto", environ=step, visible=2) == cuda(1)
    assert local_rank(step).size == 2 and local_rank(step).source == "SLURM_LOCALID (srun)"
    uneven = {**step, "SLURM_STEP_TASKS_PER_NODE": "1,3", "SLURM_LOCALID": "0"}
    with pytest.raises(RunnerError, match="^3 local ranks \\(SLURM_LOCALID \\(srun\\)\\) but 2 visible GPUs .*--np 2"):
        choose_device("auto", environ=uneven, visible=2)  # node 1 runs 3 tasks
    # ddp under srun: jetscan.cluster.slurm.ddp_env adds torchrun's variables, which agree
    assert choose_device("auto", environ={**step, "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, visible=2) == cuda(1)
    # srun --gpus-per-task=1: Slurm shows each task only its own GPU
    bound = {**step, "SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "0"}
    assert choose_device("auto", environ=bound, visible=1) == cuda(0)


def test_ray_actor_uses_the_gpu_ray_gave_it():
    # an actor with num_gpus=1: Ray sets CUDA_VISIBLE_DEVICES to its GPU, whatever its local rank
    # (Horovod's RayExecutor with num_workers packs actors so: hvd.local_rank() 1 sees one GPU)
    assert choose_device("auto", environ={"CUDA_VISIBLE_DEVICES": "3"}, visible=1, ray_gpus=[3]) == cuda(0)
    assert choose_device("auto", environ={"CUDA_VISIBLE_DEVICES": "3"}, visible=1, ray_gpus=["3"], horovod=(1, 2)) == cuda(0)
    # Horovod's colocated placement lists the host's workers' GPUs in every actor
    assert choose_device("auto", environ={"CUDA_VISIBLE_DEVICES": "4,6"}, visible=2, ray_gpus=[6], horovod=(1, 2)) == cuda(1)
    # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the id is the node's GPU index
    assert choose_device("auto", environ={}, visible=4, ray_gpus=[2]) == cuda(2)
    with pytest.raises(RunnerError, match="this Ray actor was given GPU\\(s\\) 5, which are not among the 2 GPU\\(s\\) it sees"):
        choose_device("auto", environ={"CUDA_VISIBLE_DEVICES": "0,1"}, visible=2, ray_gpus=[5])


def test_ray_ddp_actors_each_get_their_own_gpu():
    """cluster/ray_train.py's torchrun-style environments for 4 actors on 2 nodes: every actor
    trains on the GPU Ray gave it."""
    from jetscan.cluster.ray_train import _ddp_envs

    places = [("nodeA", "10.0.0.1", [5]), ("nodeB", "10.0.0.2", [0]), ("nodeA", "10.0.0.1", [2]), ("nodeB", "10.0.0.2", [1])]
    envs = _ddp_envs(places, 29500)
    got = []
    for (_node, _ip, gpus), env in zip(places, envs):
        listed = env["CUDA_VISIBLE_DEVICES"].split(",")
        device = choose_device("auto", environ=env, visible=len(listed), ray_gpus=gpus)
        assert listed[device.index] == str(gpus[0])
        # the same GPU from LOCAL_RANK alone (the DDP process group is made before Ray is asked)
        assert choose_device("auto", environ=env, visible=len(listed)) == device
        got.append(device.index)
    assert got == [0, 0, 1, 1]


def test_bad_local_ranks():
    with pytest.raises(RunnerError, match="LOCAL_RANK='x': the launcher's local rank must be an integer"):
        local_rank({"LOCAL_RANK": "x"})
    with pytest.raises(RunnerError, match="local rank 2 of 2 from HOROVOD_LOCAL_RANK \\(horovodrun\\): need 0 <= local rank < local size"):
        local_rank({"HOROVOD_LOCAL_RANK": "2", "HOROVOD_LOCAL_SIZE": "2"})
    assert local_rank({}) == local_rank({"RANK": "0", "WORLD_SIZE": "1"})
    assert (local_rank({}).rank, local_rank({}).size) == (0, 1)


def test_bfloat16_units_are_avx512_bf16_or_amx():
    """train.amp_cpu needs a CPU that computes in bfloat16 (torch.cpu.get_capabilities() keys)."""
    assert cpu_has_bf16({"avx512_bf16": True, "amx_bf16": False})  # e.g. AMD Zen 4
    assert cpu_has_bf16({"avx512_bf16": True, "amx_bf16": True})  # Intel Sapphire Rapids
    assert not cpu_has_bf16({"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False})  # Skylake-SP
    assert not cpu_has_bf16({"avx2": True})  # older torch / other architectures: keys absent
    assert cpu_has_bf16() == bool(torch.cpu.get_capabilities().get("avx512_bf16") or
                                  torch.cpu.get_capabilities().get("amx_bf16"))


def test_this_process_device_and_set_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/jobs/test_gpu.py checks the CUDA side")
    assert use_device("auto", environ={}) == torch.device("cpu")
    assert SingleProcess().use_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        use_device("cuda", environ={})


# ------------------------------------------------------------- DDPModule, one process
@pytest.fixture
def gloo_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_module_gradients_loss_and_adversarial_step(gloo_group):
    from jetscan.cluster.ddp import DDPModule
    from jetscan.core.models import build_model
    from jetscan.core.models.adversarial import MassAdversary, adversarial_step

    torch.manual_seed(0)
    ae, _ = build_model("dense_ae")
    adversary = MassAdversary(n_inputs=1600, n_bins=5, adv_lambda=5e-4)
    plain_ae, plain_adv = build_model("dense_ae")[0], MassAdversary(n_inputs=1600, n_bins=5, adv_lambda=5e-4)
    plain_ae.load_state_dict(ae.state_dict())
    plain_adv.load_state_dict(adversary.state_dict())
    net, adv_net = DDPModule(ae), DDPModule(adversary)
    assert adv_net.adv_lambda == 5e-4 and net.hyper is ae.hyper and net.module is ae  # the model's attributes

    x = torch.rand(8, 40, 40)
    net.loss(x, net(x)).mean().backward()
    plain_ae.loss(x, plain_ae(x)).mean().backward()
    for p, q in zip(ae.parameters(), plain_ae.parameters()):
        torch.testing.assert_close(p.grad, q.grad)  # DDP's all-reduce over one rank: the same gradient

    # the adversarial step (adversary frozen in the AE step): DDP on both equals the plain step, twice
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ae, adversary, plain_ae, plain_adv)]
    labels = torch.randint(0, 7, (8,))
    for _ in range(2):
        a = adversarial_step(net, adv_net, opts[0], opts[1], x, labels)
        b = adversarial_step(plain_ae, plain_adv, opts[2], opts[3], x, labels)
        assert a == pytest.approx(b, rel=1e-6)
    torch.testing.assert_close(ae.state_dict(), plain_ae.state_dict())
    torch.testing.assert_close(adversary.state_dict(), plain_adv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(net(x), ae(x))


def _adversarial_worker(rank: int, world: int, path: str, out: str) -> None:
    """One rank of :func:`test_two_ddp_ranks_of_the_adversarial_step_equal_one_process`."""
    import torch.distributed as dist

    from jetscan.cluster.ddp import DDPModule
    from jetscan.core.models.adversarial import adversarial_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        ae, adversary, x, labels = _adversarial_setup()
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)  # this rank's share of the global batch
        net, adv_net = DDPModule(ae), DDPModule(adversary)
        opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ae, adversary)]
        for _ in range(3):
            adversarial_step(net, adv_net, opts[0], opts[1], x[part], labels[part])
        if rank == 0:
            torch.save({"ae": ae.state_dict(), "adversary": adversary.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def _adversarial_setup():
    from jetscan.core.models import build_model
    from jetscan.core.models.adversarial import MassAdversary

    torch.manual_seed(3)
    ae, adversary = build_model("dense_ae")[0], MassAdversary(n_inputs=1600, n_bins=5, adv_lambda=5e-2)
    g = torch.Generator().manual_seed(4)
    return ae, adversary, torch.rand(16, 40, 40, generator=g), torch.randint(0, 7, (16,), generator=g)


def test_two_ddp_ranks_of_the_adversarial_step_equal_one_process(tmp_path):
    """2 gloo ranks, each with half of the global batch and both modules in DDPModule, take the
    one-process steps on the whole batch (the adversary frozen in the AE step, then stepped)."""
    import torch.multiprocessing as mp

    from jetscan.core.models.adversarial import adversarial_step

    out = tmp_path / "rank0.pt"
    mp.start_processes(_adversarial_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, start_method="fork")
    ae, adversary, x, labels = _adversarial_setup()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ae, adversary)]
    for _ in range(3):
        adversarial_step(ae, adversary, opts[0], opts[1], x, labels)
    got = torch.load(out)
    torch.testing.assert_close(got["ae"], ae.state_dict(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["adversary"], adversary.state_dict(), rtol=1e-4, atol=1e-6)
    fresh = _adversarial_setup()[0].state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in ae.state_dict().items())  # the steps moved the weights
