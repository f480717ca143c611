"""The Horovod build from ``cluster/build_horovod.sh``: Gloo + PyTorch, really distributed.

- ``hvd.init()`` in this process (no launcher): a world of one, Gloo compiled in.
- ``horovodrun -np 2 --gloo`` on localhost: an allreduce across two processes gives the
  expected sum and average.
- ``hvd.DistributedOptimizer`` across two processes, each holding half of a batch, takes the
  same steps as one process with plain SGD on the whole batch.

The two-process checks share one ``horovodrun`` launch (module fixture) to stay fast.
Skipped where Horovod is not installed (build it with ``cluster/build_horovod.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.horovod

# (a missing horovod, or a missing runtime dependency of it, skips with the import error as reason)
hvd = pytest.importorskip("horovod.torch")
torch = pytest.importorskip("torch")

NP = 2
LAUNCH_TIMEOUT_S = 120
STEPS = 3
LR = 0.1
BATCH = 8  # global batch; each rank takes BATCH // NP rows
N_IN = 5

WORKER = textwrap.dedent(
    f"""
    import json, os, sys
    import torch
    import horovod.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    out = {{"rank": rank, "size": size, "local_rank": hvd.local_rank(), "gloo": hvd.gloo_enabled()}}

    # allreduce: rank r contributes r + 1 everywhere
    t = torch.full((3, 2), float(rank + 1))
    out["sum"] = hvd.allreduce(t, op=hvd.Sum, name="sum").tolist()
    out["avg"] = hvd.allreduce(t, name="avg").tolist()  # default op: Average

    # DistributedOptimizer: the same model on every rank; rank r trains on the r-th contiguous
    # chunk of the global batch, so the averaged gradient is the full-batch (mean-loss) one.
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear({N_IN}, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr={LR}), named_parameters=model.named_parameters()
    )
    g = torch.Generator().manual_seed(99)
    x, y = torch.randn({BATCH}, {N_IN}, generator=g), torch.randn({BATCH}, 1, generator=g)
    xs, ys = x.chunk(size)[rank], y.chunk(size)[rank]
    for _ in range({STEPS}):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()
    out["params"] = {{k: v.tolist() for k, v in model.state_dict().items()}}

    with open(os.path.join(sys.argv[1], f"rank{{rank}}.json"), "w") as f:
        json.dump(out, f)
    hvd.shutdown()
    """
)


def _horovodrun() -> list[str]:
    """The ``horovodrun`` of this interpreter's environment (its console script if installed)."""
    script = Path(sys.executable).with_name("horovodrun")
    if script.exists():
        return [str(script)]
    found = shutil.which("horovodrun")
    if found:
        return [found]
    return [sys.executable, "-c", "from horovod.runner.launch import run_commandline; run_commandline()"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Launch the worker on 2 local Gloo ranks once; return the per-rank results."""
    work = tmp_path_factory.mktemp("hvd2")
    worker = work / "worker.py"
    worker.write_text(WORKER)
    cmd = [
        *_horovodrun(),
        "-np", str(NP), "-H", f"localhost:{NP}", "--gloo",
        sys.executable, str(worker), str(work),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(
            cmd, cwd=work, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"horovodrun did not finish in {LAUNCH_TIMEOUT_S}s:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, (
        f"horovodrun failed ({proc.returncode}): {' '.join(cmd)}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    results = {}
    for r in range(NP):
        path = work / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote no result\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        results[r] = json.loads(path.read_text())
    return results


@pytest.fixture
def hvd_single():
    hvd.init()
    try:
        yield hvd
    finally:
        hvd.shutdown()


def test_init_in_process_is_a_world_of_one(hvd_single):
    assert hvd_single.size() == 1
    assert hvd_single.rank() == 0
    assert hvd_single.local_rank() == 0
    assert hvd_single.gloo_built()
    # a world of one: allreduce is the identity
    t = torch.arange(6, dtype=torch.float32)
    assert torch.equal(hvd_single.allreduce(t, op=hvd_single.Sum), t)


def test_two_process_gloo_allreduce(two_ranks):
    expected_sum = float(sum(r + 1 for r in range(NP)))  # 1 + 2
    for r, out in two_ranks.items():
        assert out["rank"] == r
        assert out["size"] == NP
        assert out["local_rank"] == r
        assert out["gloo"], "horovodrun --gloo did not run on Gloo"
        assert torch.equal(torch.tensor(out["sum"]), torch.full((3, 2), expected_sum))
        assert torch.allclose(torch.tensor(out["avg"]), torch.full((3, 2), expected_sum / NP))


def test_distributed_optimizer_matches_single_process_full_batch(two_ranks):
    # the reference: one process, plain SGD, the whole batch
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(N_IN, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(99)
    x, y = torch.randn(BATCH, N_IN, generator=g), torch.randn(BATCH, 1, generator=g)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    expected = model.state_dict()

    for r, out in two_ranks.items():
        got = {k: torch.tensor(v) for k, v in out["params"].items()}
        assert got.keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=f"rank {r} {k}")
            # and it did train: the step is not a no-op
            assert not torch.allclose(got[k], initial[k]), f"rank {r}: {k} did not move"
