"""How many points of a finite search space are left (the workers and the driver stop at 0):
the same count as listing the grid, without listing it (no Optuna study, no training)."""

from __future__ import annotations

import itertools
import random
import tracemalloc
from types import SimpleNamespace

from jetscan.core.search_space import SearchConfig, grid_values
from jetscan.jobs.search import _failed_in, _remaining_points

STATES = ("COMPLETE", "PRUNED", "RUNNING", "FAIL", "WAITING")


def trial(state: str, params: dict, session: str | None = None, raised: bool = False):
    attrs = {"session": session, **({"traceback": "..."} if raised else {})}
    return SimpleNamespace(state=SimpleNamespace(name=state), params=params, user_attrs=attrs)


def listed(cfg: SearchConfig, trials, session: str | None) -> int:
    """The reference: every point of the grid listed, less the taken ones."""
    params = cfg.params
    taken = {tuple(sorted(t.params.items())) for t in trials
             if t.state.name in ("COMPLETE", "PRUNED", "RUNNING") or _failed_in(t, session)}
    points = {tuple(sorted(zip(params, combo))) for combo in itertools.product(*(grid_values(s) for s in params.values()))}
    return len(points - taken)


def test_the_count_is_the_listed_grids_for_random_spaces_and_trials():
    rng = random.Random(5)
    space = {"hyper.bottleneck": {"int": [2, 10], "step": 2}, "lr": {"float": [0.001, 0.004], "step": 0.001},
             "optimizer": {"choices": ["adam", "sgd"]}, "epochs": {"choices": [1, 2, 2.0]}}
    cfg = SearchConfig(run="r", space=space, sampler="grid")
    axes = {p: grid_values(s) for p, s in cfg.params.items()}
    for _ in range(200):
        trials = []
        for _ in range(rng.randrange(0, 40)):
            params = {p: rng.choice(v) for p, v in axes.items()}
            if rng.random() < 0.1:
                params["hyper.bottleneck"] = 99  # off the grid (an edited space)
            if rng.random() < 0.1:
                params.pop("lr")  # a parameter fewer
            trials.append(trial(rng.choice(STATES), params, rng.choice(["s", "t"]), raised=rng.random() < 0.5))
        assert _remaining_points(cfg, trials, "s") == listed(cfg, trials, "s")


def test_a_continuous_space_has_no_count():
    cfg = SearchConfig(run="r", space={"lr": {"float": [1e-4, 1e-2], "log": True}})
    assert _remaining_points(cfg, [], None) is None


def test_a_large_grid_is_counted_without_listing_it():
    space = {f"p{i}": {"int": [1, 20]} for i in range(4)}  # 160,000 points (listed: ~100 MB)
    cfg = SearchConfig(run="r", space=space, sampler="grid")
    trials = [trial("COMPLETE", {f"p{i}": 1 + (k + i) % 20 for i in range(4)}) for k in range(100)]
    tracemalloc.start()
    try:
        left = _remaining_points(cfg, trials, None)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert left == 20**4 - 20  # k and k + 20 give the same point
    assert peak_bytes < 1_000_000
