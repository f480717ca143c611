"""Fat jets: FastJet anti-kT clustering over many events per call, fiducial selection,
truth matching and fixed-size constituent arrays.

Clustering goes through the scikit-hep ``fastjet`` package's awkward ("multi-event") API:
one ``ClusterSequence`` for a whole batch of events. Everything after it works on flat
numpy arrays: a batch of jets is a dict of per-jet arrays plus its constituents in CSR
form (``offsets``, one flat array per field), so no step pays awkward's per-call
broadcasting cost and none loops over jets or particles in Python.

FastJet: M. Cacciari, G. P. Salam, G. Soyez, "FastJet user manual", Eur. Phys. J. C72 (2012)
1896, arXiv:1111.6097; anti-kT: JHEP 04 (2008) 063, arXiv:0802.1189. FastJet's banner, which
asks for that citation, is printed by the C++ library on the first clustering of every
process (every Ray worker); :func:`quiet_fastjet_banner` keeps it out of the user's logs.

Truth matching follows Macaluso & Shih (arXiv:1803.00107) and Kasieczka et al.
(arXiv:1902.09914): a signal jet is *matched* when a resonance of its process lies within
dR < ``match_dr`` of the jet axis and every hard decay parton of that resonance lies within
dR < ``match_dr`` of the jet axis too (the decay is merged into the jet).
"""

from __future__ import annotations

import awkward as ak
import fastjet
import numpy as np

from jetscan.core.detector import KIND_PADDING
from jetscan.core.study import JetConfig

__all__ = [
    "JET_KEYS",
    "quiet_fastjet_banner",
    "CONSTITUENT_KEYS",
    "cluster_fat_jets",
    "match_jets",
    "may_match",
    "take_jets",
    "concatenate_jets",
    "padded_constituents",
    "delta_r",
]

_ALGORITHMS = {"antikt": fastjet.antikt_algorithm}
JET_KEYS = ("event", "pt", "eta", "phi", "mass", "e", "px", "py", "pz")
CONSTITUENT_KEYS = ("pt", "eta", "phi", "e", "px", "py", "pz", "kind")


def delta_r(eta1, phi1, eta2, phi2):
    """Distance in (eta, phi) with phi wrapped into [-pi, pi)."""
    dphi = (phi1 - phi2 + np.pi) % (2 * np.pi) - np.pi
    return np.sqrt((eta1 - eta2) ** 2 + dphi**2)


def _segment_arange(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts c."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


def quiet_fastjet_banner() -> None:
    """Mark FastJet's banner as printed in this process without printing it.

    ``ClusterSequence::print_banner`` prints once per process and prints nothing when the
    banner stream is null, so pointing the stream at null and calling it once silences the
    banner for every later clustering. The awkward API, the SWIG bindings and
    ``jetscan.core._fastsub`` share one ``libfastjet``, hence one flag. Idempotent and cheap.
    """
    cs = fastjet._swig.ClusterSequence
    if cs.fastjet_banner_stream() is not None:
        cs.set_fastjet_banner_stream(None)
        cs.print_banner()


def cluster_fat_jets(constituents: ak.Array, jet: JetConfig) -> dict[str, np.ndarray]:
    """Cluster each event; keep jets inside the pT window and |eta| cut.

    ``constituents``: ``events var * {px, py, pz, e, pt, eta, phi, kind}``.
    Returns a flat jet batch: per-jet arrays ``JET_KEYS`` (``event`` = index in the batch),
    jets pT-ordered within each event, ``offsets`` (n_jets + 1) and ``c_<field>`` flat
    constituent arrays, pT-ordered (hardest first) within each jet.
    """
    quiet_fastjet_banner()
    lo, hi = jet.pt_window_gev
    vecs = ak.zip(
        {"px": constituents.px, "py": constituents.py, "pz": constituents.pz, "E": constituents.e},
        with_name="Momentum4D",
    )
    sequence = fastjet.ClusterSequence(vecs, fastjet.JetDefinition(_ALGORITHMS[jet.algorithm], jet.r))
    jets = sequence.inclusive_jets(min_pt=lo)
    index = sequence.constituent_index(min_pt=lo)

    n_per_event = ak.num(jets, axis=1).to_numpy()
    event = np.repeat(np.arange(len(n_per_event)), n_per_event)
    px, py, pz, e = (ak.flatten(jets[f]).to_numpy() for f in ("px", "py", "pz", "E"))
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.where(pt > 0, pt, 1.0))
    phi = np.arctan2(py, px)
    mass = np.sqrt(np.maximum(e**2 - (pt**2 + pz**2), 0.0))

    n_const = ak.flatten(ak.num(index, axis=2)).to_numpy()
    event_starts = np.cumsum(ak.num(constituents, axis=1).to_numpy()) - ak.num(constituents, axis=1).to_numpy()
    flat_index = ak.flatten(index, axis=None).to_numpy() + np.repeat(event_starts[event], n_const)
    jet_of = np.repeat(np.arange(len(pt)), n_const)

    keep = (pt >= lo) & (pt < hi) & (np.abs(eta) < jet.abs_eta_max)
    order = np.lexsort((-pt, event))  # by event, then pT descending
    order = order[keep[order]]
    batch = {"event": event, "pt": pt, "eta": eta, "phi": phi, "mass": mass, "e": e, "px": px, "py": py, "pz": pz}
    flat = {f: ak.flatten(constituents[f]).to_numpy() for f in CONSTITUENT_KEYS}
    c_pt = flat["pt"][flat_index]
    c_order = np.lexsort((-c_pt, jet_of))  # constituents grouped by jet, hardest first
    all_jets = {
        **batch,
        "offsets": np.concatenate([[0], np.cumsum(n_const)]),
        **{f"c_{f}": flat[f][flat_index[c_order]] for f in CONSTITUENT_KEYS},
    }
    return take_jets(all_jets, order)


def take_jets(jets: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """A new jet batch holding jets ``index`` (an int or bool array), constituents included."""
    index = np.flatnonzero(index) if index.dtype == bool else np.asarray(index, dtype=np.int64)
    offsets = jets["offsets"]
    counts = (offsets[1:] - offsets[:-1])[index]
    gather = np.repeat(offsets[:-1][index], counts) + _segment_arange(counts)
    out = {k: v[index] for k, v in jets.items() if k != "offsets" and not k.startswith("c_")}
    out["offsets"] = np.concatenate([[0], np.cumsum(counts)])
    out.update({k: v[gather] for k, v in jets.items() if k.startswith("c_")})
    return out


def concatenate_jets(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One jet batch from several (``event`` indices keep their per-batch meaning)."""
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0] if k != "offsets"}
    counts = np.concatenate([np.diff(b["offsets"]) for b in batches])
    out["offsets"] = np.concatenate([[0], np.cumsum(counts)])
    return out


def match_jets(jets: dict[str, np.ndarray], truth: dict[str, np.ndarray], match_dr: float = 0.6) -> np.ndarray:
    """Whether each jet is truth-matched to a resonance whose decay is merged into it.

    ``truth``: flat resonances (``event, pt, eta, phi``, ``prod_offsets``, ``prod_eta``,
    ``prod_phi``) from :func:`jetscan.core.events.resonance_truth`.
    """
    n_events = int(max(jets["event"].max(initial=-1), truth["event"].max(initial=-1))) + 1
    res_counts = np.bincount(truth["event"], minlength=n_events)
    res_starts = np.cumsum(res_counts) - res_counts
    # every (jet, resonance of the same event) pair
    per_jet = res_counts[jets["event"]]
    pair_jet = np.repeat(np.arange(len(jets["pt"])), per_jet)
    pair_res = np.repeat(res_starts[jets["event"]], per_jet) + _segment_arange(per_jet)
    near = delta_r(jets["eta"][pair_jet], jets["phi"][pair_jet], truth["eta"][pair_res], truth["phi"][pair_res]) < match_dr
    # every (pair, decay parton of its resonance)
    prod_counts = np.diff(truth["prod_offsets"])[pair_res]
    pp_pair = np.repeat(np.arange(len(pair_res)), prod_counts)
    pp_prod = np.repeat(truth["prod_offsets"][:-1][pair_res], prod_counts) + _segment_arange(prod_counts)
    outside = delta_r(
        jets["eta"][pair_jet[pp_pair]], jets["phi"][pair_jet[pp_pair]], truth["prod_eta"][pp_prod], truth["prod_phi"][pp_prod]
    ) >= match_dr
    merged = np.bincount(pp_pair[outside], minlength=len(pair_res)) == 0
    return np.bincount(pair_jet[near & merged], minlength=len(jets["pt"])) > 0


def may_match(truth: dict[str, np.ndarray], n_events: int, pt_min_gev: float, match_dr: float = 0.6) -> np.ndarray:
    """Events that can hold a matched jet at all: a cheap truth-level prefilter.

    A matched jet needs a resonance and all its decay partons within ``match_dr`` of the
    jet axis, so (triangle inequality) every parton lies within ``2 * match_dr`` of the
    resonance; and a resonance below half the jet pT threshold cannot carry such a jet.
    Events failing this skip the detector and clustering. Returns a boolean mask per event.
    """
    counts = np.diff(truth["prod_offsets"])
    res_of = np.repeat(np.arange(len(counts)), counts)
    far = delta_r(truth["eta"][res_of], truth["phi"][res_of], truth["prod_eta"], truth["prod_phi"]) >= 2 * match_dr
    compact = np.bincount(res_of[far], minlength=len(counts)) == 0
    ok = compact & (truth["pt"] > 0.5 * pt_min_gev)
    return np.bincount(truth["event"][ok], minlength=n_events) > 0


def padded_constituents(jets: dict[str, np.ndarray], max_constituents: int) -> dict[str, np.ndarray]:
    """Jets' constituents as fixed-size arrays (n_jets, max_constituents), zero padded.

    Float fields become float32; ``kind`` is int8 with padding ``KIND_PADDING`` (-1).
    """
    counts = np.diff(jets["offsets"])
    n = len(counts)
    pos = _segment_arange(counts)
    row = np.repeat(np.arange(n), counts)
    keep = pos < max_constituents
    out = {}
    for name in ("pt", "eta", "phi", "e"):
        arr = np.zeros((n, max_constituents), np.float32)
        arr[row[keep], pos[keep]] = jets[f"c_{name}"][keep]
        out[name] = arr
    kind = np.full((n, max_constituents), KIND_PADDING, np.int8)
    kind[row[keep], pos[keep]] = jets["c_kind"][keep]
    out["kind"] = kind
    return out
