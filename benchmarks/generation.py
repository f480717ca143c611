"""Generation throughput: the full jetscan chain against bare Pythia8 and Pythia8 + FastJet.

One run prints, on the same settings (QCD dijets, 14 TeV, pTHatMin 550 GeV, MPI off,
anti-kT R = 0.8, 550 < pT < 650 GeV, |eta| < 2) and the same seed, on one core:

1. bare Pythia8: ``pythia.next()`` in a Python loop (the reference the issue names);
2. Pythia8 + FastJet: ``nextBatch``, final-state selection and anti-kT clustering of all
   visible particles (the floor any Python jet generator pays);
3. the full jetscan chain (``ShardMaker.make_arrays``: detector, clustering, selection,
   soft drop, N-subjettiness, padding) on one shard;

then the events/s ratios 3/1 and 3/2, and the same study on 1 vs 2 Ray workers.
Appends one JSON line to ``benchmarks/results.jsonl`` (git revision, device, settings).

    python benchmarks/generation.py [--events 3000] [--shards 4] [--shard-jets 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import awkward as ak  # noqa: E402
import fastjet  # noqa: E402
import numpy as np  # noqa: E402
import pythia8mc  # noqa: E402

from _common import append_result, git_rev  # noqa: E402
from jetscan.core.events import final_state_particles  # noqa: E402
from jetscan.core.study import Study, settings_hash  # noqa: E402
from jetscan.jobs.generate import ShardMaker, ShardSpec, generate, sample_pythia_settings  # noqa: E402

HERE = Path(__file__).parent
SEED = 4242


def study_for(store: str, n_jets: int, shard_jets: int) -> Study:
    return Study.from_dict(
        {
            "name": "bench-generation",
            "store": store,
            "seed": 1,
            "sqrt_s_gev": 14000.0,
            "jet": {"r": 0.8, "pt_window_gev": [550.0, 650.0], "abs_eta_max": 2.0},
            "generation": {"shard_jets": shard_jets, "batch_events": 200},
            "samples": {"qcd": {"process": "qcd_dijet", "n_jets": n_jets, "pthat_min_gev": 550.0}},
        }
    )


def new_pythia(study: Study) -> pythia8mc.Pythia:
    p = pythia8mc.Pythia("", False)
    for line in sample_pythia_settings(study, "qcd", SEED):
        assert p.readString(line), line
    assert p.init()
    return p


def bare_next(study: Study, n_events: int) -> float:
    p = new_pythia(study)
    t0 = time.perf_counter()
    for _ in range(n_events):
        p.next()
    return time.perf_counter() - t0


def pythia_fastjet(study: Study, n_events: int, batch: int = 200) -> tuple[float, int]:
    p = new_pythia(study)
    jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, study.jet.r)
    lo, hi = study.jet.pt_window_gev
    t0 = time.perf_counter()
    done = n_jets = 0
    while done < n_events:
        b = p.nextBatch(min(batch, n_events - done))
        done += len(b)
        parts = final_state_particles(b.prt)
        counts = np.bincount(parts["event"], minlength=parts["n_events"])
        vecs = ak.unflatten(
            ak.zip({"px": parts["px"], "py": parts["py"], "pz": parts["pz"], "E": parts["e"]}, with_name="Momentum4D"),
            counts,
        )
        jets = fastjet.ClusterSequence(vecs, jetdef).inclusive_jets(min_pt=lo)
        pt = np.hypot(ak.flatten(jets.px).to_numpy(), ak.flatten(jets.py).to_numpy())
        n_jets += int(((pt >= lo) & (pt < hi)).sum())
    return time.perf_counter() - t0, n_jets


def full_chain(study: Study, n_jets: int) -> tuple[float, int, list[float]]:
    maker = ShardMaker(study)
    spec = ShardSpec("qcd", 0, 0, n_jets, SEED)
    # time each nextBatch + chain step too
    steps: list[float] = []
    orig = maker.jets_from_batch

    def timed(batch, spec, rng):
        t = time.perf_counter()
        out = orig(batch, spec, rng)
        steps.append(time.perf_counter() - t)
        return out

    maker.jets_from_batch = timed  # type: ignore[method-assign]
    t0 = time.perf_counter()
    _, n_events = maker.make_arrays(spec)
    return time.perf_counter() - t0 - 0.0, n_events, steps


def workers_scaling(tmp: Path, shards: int, shard_jets: int) -> dict[int, float]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    try:
        for w in (1, 2):
            st = study_for(str(tmp / f"w{w}.zarr"), shards * shard_jets, shard_jets)
            t0 = time.perf_counter()
            generate(st, workers=w)
            out[w] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=3000, help="events for the single-core comparison")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-jets", type=int, default=300)
    ap.add_argument("--skip-workers", action="store_true")
    args = ap.parse_args()

    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="jetscan-bench-"))
    study = study_for(str(tmp / "single.zarr"), 10, 10)

    # 3 first: it tells how many events a given number of jets needs
    jets_wanted = max(10, int(args.events * 0.55))
    t_full, n_events, steps = full_chain(study, jets_wanted)
    t_bare = bare_next(study, n_events)
    t_pf, n_pf_jets = pythia_fastjet(study, n_events)

    ms = lambda t: 1e3 * t / n_events  # noqa: E731
    print(f"events: {n_events} (QCD, 14 TeV, pTHatMin 550, MPI off), jets kept by jetscan: {jets_wanted}")
    print(f"  bare Pythia8 next()      {ms(t_bare):6.3f} ms/event   {n_events / t_bare:7.1f} events/s")
    print(f"  Pythia8 + FastJet        {ms(t_pf):6.3f} ms/event   {n_events / t_pf:7.1f} events/s  ({n_pf_jets} jets in window)")
    print(f"  jetscan full chain       {ms(t_full):6.3f} ms/event   {n_events / t_full:7.1f} events/s  "
          f"{jets_wanted / t_full:6.1f} jets/s per worker (init included)")
    step_ms = 1e3 * np.array(steps)
    print(f"  chain step per 200-event batch after nextBatch: p50 {np.percentile(step_ms, 50):.1f} ms, "
          f"p95 {np.percentile(step_ms, 95):.1f} ms; first batch {step_ms[0]:.1f} ms")
    r_bare = t_bare / t_full
    r_pf = t_pf / t_full
    print(f"ratio full chain / bare next()     = {r_bare:.3f}  (issue target >= 0.9; physical floor ~0.77)")
    print(f"ratio full chain / Pythia+FastJet  = {r_pf:.3f}  (aim >= 0.95)")

    result = {
        "bench": "generation",
        "git": git_rev(),
        "device": f"{platform.processor() or platform.machine()} x{os.cpu_count()} (cpu)",
        "config_hash": settings_hash(study.generation_settings("qcd")),
        "events": n_events,
        "ms_per_event": {"bare_next": ms(t_bare), "pythia_fastjet": ms(t_pf), "full_chain": ms(t_full)},
        "ratio_full_over_bare": r_bare,
        "ratio_full_over_pythia_fastjet": r_pf,
    }
    if not args.skip_workers:
        times = workers_scaling(tmp, args.shards, args.shard_jets)
        speedup = times[1] / times[2]
        n = args.shards * args.shard_jets
        print(f"Ray, {args.shards} shards x {args.shard_jets} jets: 1 worker {times[1]:.1f} s ({n / times[1]:.1f} jets/s), "
              f"2 workers {times[2]:.1f} s ({n / times[2]:.1f} jets/s)")
        print(f"ratio 2 workers / 1 worker = {speedup:.2f}  (target >= 1.8)")
        result["ray_seconds"] = times
        result["speedup_2_over_1"] = speedup
    append_result(result)


if __name__ == "__main__":
    main()
