"""Generation throughput: the full jetscan chain against bare Pythia8 and Pythia8 + FastJet,
then the same study on 1 vs 2 Ray workers.

Settings (one core, ``OMP_NUM_THREADS=1``): QCD dijets, 14 TeV, pTHatMin 550 GeV, MPI off,
anti-kT R = 0.8, 550 < pT < 650 GeV, |eta| < 2, ``batch_events`` 200.

**a. One core, three sides on the same events.** Every round makes one shard with the full
chain (``ShardMaker.make_arrays``: ``nextBatch``, final-state particles, detector, anti-kT,
selection, soft drop, N-subjettiness, padding) from seed ``s_r``, and counts the events it
used; then

1. bare Pythia8: ``pythia.nextBatch(200)`` and nothing else;
2. Pythia8 + FastJet: ``nextBatch(200)``, visible final-state particles, anti-kT over all of
   them in one awkward ``ClusterSequence`` per batch, jets in the pT window;

process exactly those events from the same seed. All three sides make the same Pythia call
(``nextBatch`` of the same size) on the same events. Pythia's (re-)initialisation, which the
chain pays once per shard, is left out of every side's time and reported on its own. Rounds
come in pairs on one seed: chain, Pythia+FastJet, bare, then bare, Pythia+FastJet, chain
(ABC CBA ...), after one warm-up round left out of the statistics (reported as "cold"), so
a slow drift of a shared machine hits all sides alike. Each ratio is computed per round and
reported as the median with its [min, max] and interquartile range over the rounds, in wall
time and, as a cross-check less disturbed by other jobs, in this process's CPU time.

The physical floor: any generator of clustered jets runs Pythia and then clusters every
event; the chain's own anti-kT step (``cluster_fat_jets`` on the detector's tracks and
towers) is timed inside the same rounds, and bare / (bare + that clustering time) is printed
as the ceiling full chain / bare cannot exceed, whatever the rest of the chain costs. When
that ceiling is below 0.9, the >= 0.9 target is out of reach for any chain that clusters.
``full / (Pythia+FastJet) >= 0.95`` compares with the floor of a jet generator without a
detector model (all visible particles clustered, which are more objects than tracks and towers).

**b. Ray, 1 vs 2 workers on equal total work** (``--shards`` x ``--shard-jets`` jets, the same
shard seeds, a fresh store per run), in the order 1, 2, 2, 1 (``--ray-repeats`` times), on one
Ray instance started once (its start-up reported separately). Per run: wall time from
``generate()`` to its return (plan, actor start, every shard, commit), time to the first
committed shard (start-up: actor process, imports, Pythia construction and init, first shard),
and the steady-state rate after each worker's first shard ((N - w) shards over the time from
the w-th to the last commit). Both 2/1 ratios are printed: wall (what a user sees) and steady
state; the default size keeps start-up a small part of the wall time.

Appends one JSON line to ``benchmarks/results.jsonl`` (revision, dirty state, device,
settings, every round), except with ``--quick`` (tiny sizes: checks the script runs).

    python benchmarks/generation.py [--rounds 6] [--round-jets 550] [--shards 16] [--shard-jets 500]
        [--ray-repeats 1] [--skip-workers] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import awkward as ak  # noqa: E402
import fastjet  # noqa: E402
import numpy as np  # noqa: E402
import pythia8mc  # noqa: E402

from _common import append_result, cpu_device  # noqa: E402
from jetscan.core.events import final_state_particles  # noqa: E402
from jetscan.core.processes import pythia_seed  # noqa: E402
from jetscan.core.study import Study, settings_hash  # noqa: E402
from jetscan.jobs.generate import ShardMaker, ShardSpec, generate, sample_pythia_settings  # noqa: E402

HERE = Path(__file__).parent
SIDES = ("bare", "pythia_fastjet", "full_chain")


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


# ------------------------------------------------------------------------ a. one core


class PythiaSide:
    """One Pythia instance, re-seeded and re-initialised per round exactly as ShardMaker does."""

    def __init__(self, study: Study, seed: int):
        self.study = study
        self.pythia = pythia8mc.Pythia("", False)
        for line in sample_pythia_settings(study, "qcd", seed):
            assert self.pythia.readString(line), line

    def reseed(self, seed: int) -> None:
        self.pythia.readString(f"Random:seed = {seed}")
        assert self.pythia.init()

    def bare(self, n_events: int, batch: int) -> tuple[float, float, int]:
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < n_events:
            done += len(self.pythia.nextBatch(min(batch, n_events - done)))
        return time.perf_counter() - t0, time.process_time() - c0, 0

    def pythia_fastjet(self, n_events: int, batch: int) -> tuple[float, float, int]:
        jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, self.study.jet.r)
        lo, hi = self.study.jet.pt_window_gev
        t0, c0 = time.perf_counter(), time.process_time()
        done = n_jets = 0
        while done < n_events:
            b = self.pythia.nextBatch(min(batch, n_events - done))
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
        return time.perf_counter() - t0, time.process_time() - c0, n_jets


class ChainSide:
    """The real ShardMaker; its per-shard Pythia (re-)initialisation is timed apart, and so is
    its anti-kT clustering (``cluster_fat_jets`` as jobs.generate calls it; this process only,
    the Ray workers of part b are untouched)."""

    def __init__(self, study: Study):
        import jetscan.jobs.generate as gen

        self.maker = ShardMaker(study)
        self.init_seconds: list[float] = []
        self.init_cpu_seconds: list[float] = []
        self.step_seconds: list[float] = []
        self.cluster_seconds: list[float] = []
        cluster = gen.cluster_fat_jets

        def timed_cluster(constituents, jet):
            t = time.perf_counter()
            out = cluster(constituents, jet)
            self.cluster_seconds.append(time.perf_counter() - t)
            return out

        gen.cluster_fat_jets = timed_cluster
        pythia_for, jets_from_batch = self.maker._pythia_for, self.maker.jets_from_batch

        def timed_init(sample, seed):
            t, c = time.perf_counter(), time.process_time()
            out = pythia_for(sample, seed)
            self.init_seconds.append(time.perf_counter() - t)
            self.init_cpu_seconds.append(time.process_time() - c)
            return out

        def timed_step(batch, spec, rng):
            t = time.perf_counter()
            out = jets_from_batch(batch, spec, rng)
            self.step_seconds.append(time.perf_counter() - t)
            return out

        self.maker._pythia_for = timed_init  # type: ignore[method-assign]
        self.maker.jets_from_batch = timed_step  # type: ignore[method-assign]

    def run(self, n_jets: int, seed: int) -> tuple[float, float, int, float, float]:
        """One shard: (seconds and CPU seconds without Pythia init, events, Pythia init seconds,
        clustering seconds)."""
        before, before_c = len(self.init_seconds), len(self.cluster_seconds)
        t0, c0 = time.perf_counter(), time.process_time()
        _, n_events = self.maker.make_arrays(ShardSpec("qcd", 0, 0, n_jets, seed))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        init, init_cpu = sum(self.init_seconds[before:]), sum(self.init_cpu_seconds[before:])
        return wall - init, cpu - init_cpu, n_events, init, sum(self.cluster_seconds[before_c:])


def one_round(chain: ChainSide, bare: PythiaSide, pf: PythiaSide, n_jets: int, seed: int,
              n_events: int | None, batch: int):
    """The three sides on the same events; returns {side: seconds}, {side: CPU seconds}, events,
    Pythia+FastJet jets.

    The chain decides how many events ``n_jets`` need, so a new seed runs chain first
    (chain, Pythia+FastJet, bare); a seed whose event count is known runs in the opposite
    order (bare, Pythia+FastJet, chain). Rounds come in such pairs, so every side runs both
    first and last on the same events.
    """
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    order = SIDES if n_events is not None else SIDES[::-1]
    n_pf_jets = 0
    for side in order:
        if side == "full_chain":
            t, cpu[side], n, seconds["full_chain_init"], seconds["full_chain_clustering"] = chain.run(n_jets, seed)
            assert n_events is None or n == n_events, (n, n_events)  # the same seed gives the same events
            n_events, seconds[side] = n, t
        elif side == "bare":
            bare.reseed(seed)
            seconds[side], cpu[side], _ = bare.bare(n_events, batch)
        else:
            pf.reseed(seed)
            seconds[side], cpu[side], n_pf_jets = pf.pythia_fastjet(n_events, batch)
    return seconds, cpu, n_events, n_pf_jets


def spread(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "min": float(v.min()), "max": float(v.max()), "iqr": float(q3 - q1), "n": int(len(v))}


def fmt(s: dict) -> str:
    return f"{s['median']:.3f}  [min {s['min']:.3f}, max {s['max']:.3f}; IQR {s['iqr']:.3f}; {s['n']} rounds]"


def single_core(study: Study, rounds: int, round_jets: int, warmup_jets: int) -> dict:
    batch = study.generation.batch_events
    seeds = [pythia_seed(4242, "qcd", r) for r in range((rounds + 1) // 2 + 1)]
    chain, bare, pf = ChainSide(study), PythiaSide(study, seeds[0]), PythiaSide(study, seeds[0])

    cold, _, n_cold, _ = one_round(chain, bare, pf, warmup_jets, seeds[0], None, batch)
    print(f"a. one core; cold round ({n_cold} events, warm-up, not in the statistics): "
          + ", ".join(f"{k} {1e3 * cold[k] / n_cold:.2f} ms/event" for k in SIDES)
          + f"; Pythia construction + init {cold['full_chain_init']:.2f} s")
    per_round, known = [], {}
    for r in range(1, rounds + 1):
        seed = seeds[(r + 1) // 2]
        order = "bare-first" if seed in known else "chain-first"
        sec, cpu, known[seed], n_pf_jets = one_round(chain, bare, pf, round_jets, seed, known.get(seed), batch)
        n_events = known[seed]
        per_round.append({"seed": seed, "events": n_events, "seconds": sec, "cpu_seconds": cpu,
                          "pythia_fastjet_jets": n_pf_jets, "order": order})
        print(f"  round {r} ({per_round[-1]['order']}, {n_events} events): "
              + ", ".join(f"{k} {1e3 * sec[k] / n_events:.2f}" for k in SIDES) + " ms/event")

    ms = {k: spread([1e3 * p["seconds"][k] / p["events"] for p in per_round]) for k in SIDES}
    full_over_bare = spread([p["seconds"]["bare"] / p["seconds"]["full_chain"] for p in per_round])
    full_over_pf = spread([p["seconds"]["pythia_fastjet"] / p["seconds"]["full_chain"] for p in per_round])
    pf_over_bare = spread([p["seconds"]["bare"] / p["seconds"]["pythia_fastjet"] for p in per_round])
    ceiling = spread([p["seconds"]["bare"] / (p["seconds"]["bare"] + p["seconds"]["full_chain_clustering"]) for p in per_round])
    cluster_ms = spread([1e3 * p["seconds"]["full_chain_clustering"] / p["events"] for p in per_round])
    cpu_full_over_bare = spread([p["cpu_seconds"]["bare"] / p["cpu_seconds"]["full_chain"] for p in per_round])
    cpu_full_over_pf = spread([p["cpu_seconds"]["pythia_fastjet"] / p["cpu_seconds"]["full_chain"] for p in per_round])
    with_init = spread([p["seconds"]["bare"] / (p["seconds"]["full_chain"] + p["seconds"]["full_chain_init"]) for p in per_round])
    init_ms = 1e3 * np.array(chain.init_seconds)
    step_ms = 1e3 * np.array(chain.step_seconds)
    n_events = sum(p["events"] for p in per_round)

    print(f"  ms/event, median [min, max] over {rounds} rounds ({n_events} events in all, same events on every side):")
    for k, label in zip(SIDES, ("bare Pythia8 nextBatch", "Pythia8 + FastJet", "jetscan full chain")):
        print(f"    {label:24s} {ms[k]['median']:6.3f} [{ms[k]['min']:.3f}, {ms[k]['max']:.3f}]   "
              f"{1e3 / ms[k]['median']:7.1f} events/s")
    print(f"  chain step per {batch}-event batch after nextBatch: p50 {np.percentile(step_ms, 50):.1f} ms, "
          f"p95 {np.percentile(step_ms, 95):.1f} ms; Pythia re-init per shard (not in the times above): "
          f"median {np.median(init_ms[1:] if len(init_ms) > 1 else init_ms):.0f} ms, first (construction) {init_ms[0]:.0f} ms")
    print(f"ratio full chain / bare Pythia         = {fmt(full_over_bare)}  (issue target >= 0.9)")
    print(f"  physical ceiling bare / (bare + the chain's anti-kT) = {fmt(ceiling)}: the chain's FastJet clustering "
          f"alone takes {cluster_ms['median']:.2f} ms/event (median), and any generator of clustered jets pays it "
          "on top of Pythia, so full / bare cannot exceed this")
    print(f"  (Pythia+FastJet) / bare               = {fmt(pf_over_bare)}  (clustering all visible particles, "
          "no detector: more objects than the chain's tracks and towers)")
    print(f"ratio full chain / Pythia+FastJet      = {fmt(full_over_pf)}  (aim >= 0.95)")
    print(f"  full chain with its per-shard Pythia re-init ({round_jets}-jet shards) / bare = {fmt(with_init)}")
    print(f"  the same two ratios in CPU time of this process (less disturbed by other jobs on a shared machine): "
          f"full / bare {fmt(cpu_full_over_bare)}; full / Pythia+FastJet {fmt(cpu_full_over_pf)}")
    return {
        "events": n_events,
        "rounds": per_round,
        "cold": {"events": n_cold, "seconds": cold},
        "ms_per_event": ms,
        "ratio_full_over_bare": full_over_bare,
        "ratio_full_over_pythia_fastjet": full_over_pf,
        "ceiling_bare_over_bare_plus_clustering": ceiling,
        "ratio_pythia_fastjet_over_bare": pf_over_bare,
        "chain_clustering_ms_per_event": cluster_ms,
        "ratio_full_with_reinit_over_bare": with_init,
        "cpu_ratio_full_over_bare": cpu_full_over_bare,
        "cpu_ratio_full_over_pythia_fastjet": cpu_full_over_pf,
        "pythia_init_ms": {"first": float(init_ms[0]), "median_reinit": float(np.median(init_ms[1:] if len(init_ms) > 1 else init_ms))},
        "chain_step_ms": {"p50": float(np.percentile(step_ms, 50)), "p95": float(np.percentile(step_ms, 95))},
    }


# -------------------------------------------------------------------------- b. Ray


def ray_run(tmp: Path, tag: str, workers: int, shards: int, shard_jets: int) -> dict:
    study = study_for(str(tmp / f"{tag}.zarr"), shards * shard_jets, shard_jets)
    stamps: list[float] = []
    shard_seconds: list[float] = []

    def on_shard(row: dict) -> None:
        stamps.append(time.perf_counter())
        shard_seconds.append(row["seconds"])

    t0 = time.perf_counter()
    rows = generate(study, workers=workers, on_shard=on_shard)
    wall = time.perf_counter() - t0
    assert len(rows) == shards
    t = np.array(stamps) - t0
    steady = (shards - workers) / (t[-1] - t[workers - 1]) if shards > workers and t[-1] > t[workers - 1] else float("nan")
    jets = shards * shard_jets
    return {
        "workers": workers,
        "wall_seconds": wall,
        "first_shard_seconds": float(t[0]),
        "steady_shards_per_s": float(steady),
        "steady_jets_per_s": float(steady * shard_jets),
        "wall_jets_per_s": jets / wall,
        "startup_share": float(1.0 - (shards / steady) / wall) if steady == steady else float("nan"),
        "shard_seconds_median": float(np.median(shard_seconds)),
    }


def workers_scaling(tmp: Path, shards: int, shard_jets: int, repeats: int) -> dict:
    import ray

    from jetscan.cluster.ray import ensure_ray

    t0 = time.perf_counter()
    started = ensure_ray(None, 2)
    ray_init = time.perf_counter() - t0
    runs = []
    try:
        order = [1, 2, 2, 1] * repeats
        print(f"b. Ray: {shards} shards x {shard_jets} jets per run, worker counts in the order {order}; "
              f"ray.init {ray_init:.1f} s (not in the runs' times)")
        for i, w in enumerate(order):
            run = ray_run(tmp, f"ray{i}-w{w}", w, shards, shard_jets)
            runs.append(run)
            print(f"  run {i + 1}: {w} worker(s): wall {run['wall_seconds']:.1f} s ({run['wall_jets_per_s']:.1f} jets/s), "
                  f"first shard after {run['first_shard_seconds']:.1f} s, steady {run['steady_jets_per_s']:.1f} jets/s "
                  f"({run['steady_shards_per_s']:.3f} shards/s), start-up {100 * run['startup_share']:.0f} % of wall, "
                  f"median shard {run['shard_seconds_median']:.1f} s")
    finally:
        if started:
            ray.shutdown()

    def pairs(key: str, invert: bool) -> list[float]:
        one = [r[key] for r in runs if r["workers"] == 1]
        two = [r[key] for r in runs if r["workers"] == 2]
        return [(a / b if invert else b / a) for a, b in zip(one, two)]

    wall = spread(pairs("wall_seconds", invert=True))
    steady = spread(pairs("steady_shards_per_s", invert=False))
    print(f"ratio 2 workers / 1 worker, wall time incl. start-up = {fmt(wall).replace('rounds', 'pairs')}  (target >= 1.8)")
    print(f"ratio 2 workers / 1 worker, steady state (shards/s)  = {fmt(steady).replace('rounds', 'pairs')}  (target >= 1.8)")
    first = {w: spread([r["first_shard_seconds"] for r in runs if r["workers"] == w]) for w in (1, 2)}
    print(f"  start-up (time to the first committed shard): 1 worker {first[1]['median']:.1f} s, "
          f"2 workers {first[2]['median']:.1f} s (median)")
    return {"ray_init_seconds": ray_init, "shards": shards, "shard_jets": shard_jets, "runs": runs,
            "ratio_2_over_1_wall": wall, "ratio_2_over_1_steady": steady, "first_shard_seconds": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds of the one-core comparison (pairs: one seed, both orders)")
    ap.add_argument("--round-jets", type=int, default=550, help="jets per round (~1000 events)")
    ap.add_argument("--shards", type=int, default=16, help="shards per Ray run")
    ap.add_argument("--shard-jets", type=int, default=500)
    ap.add_argument("--ray-repeats", type=int, default=1, help="repeats of the 1, 2, 2, 1 worker order")
    ap.add_argument("--skip-workers", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, nothing appended (checks that the script runs)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.round_jets, args.shards, args.shard_jets = 2, 40, 4, 20

    tmp = Path(tempfile.mkdtemp(prefix="jetscan-bench-"))
    study = study_for(str(tmp / "single.zarr"), 10, 10)
    t0 = time.perf_counter()
    result = {
        "bench": "generation",
        "device": cpu_device(),
        "config_hash": settings_hash(study.generation_settings("qcd")),
        "quick": args.quick,
        "method": "interleaved rounds, same events and nextBatch on every side, Pythia init excluded",
        "single_core": single_core(study, args.rounds, args.round_jets, warmup_jets=min(50, args.round_jets)),
    }
    if not args.skip_workers:
        result["ray"] = workers_scaling(tmp, args.shards, args.shard_jets, args.ray_repeats)
    result["seconds"] = time.perf_counter() - t0
    print(f"(benchmark took {result['seconds']:.0f} s)")
    append_result(result, quick=args.quick)


if __name__ == "__main__":
    main()
