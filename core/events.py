"""From a batch of Pythia events (``Pythia.nextBatch``) to flat particle and truth arrays.

``Pythia.nextBatch(n)`` returns n events as one awkward array whose ``prt`` field holds
every event-record entry (``id``, ``status``, ``mother1``, ``p.px/py/pz/e``, ...). Picking
final-state particles from it is array work (~0.1 ms/event), not per-particle Python calls.

Truth for signal jets: a resonance of the preset's ``match_ids`` (its *last* copy in the
record, the one that decays) and its hard decay partons (status -23 entries whose nearest
ancestor with a matching id is that resonance). Pythia decays resonances on late carbon
copies (status -44, -52, -62), so ancestry is climbed through the whole mother chain.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

__all__ = [
    "INVISIBLE_ABS_IDS",
    "final_state_particles",
    "resonance_truth",
    "select_events",
]

# Neutrinos, the lightest neutralino, the gravitino; Hidden-Valley states (49xxxxx) that
# reach the final state leave no signal either.
INVISIBLE_ABS_IDS = np.array([12, 14, 16, 1000022, 1000039])
_HV_RANGE = (4_900_000, 5_000_000)


def final_state_particles(prt: ak.Array) -> dict[str, np.ndarray]:
    """Visible final-state particles (status > 0, not invisible) of every event, flattened.

    Keys: ``event`` (index in the batch), ``pid``, ``px``, ``py``, ``pz``, ``e`` (GeV), and
    ``n_events``.
    """
    counts = ak.num(prt, axis=1).to_numpy()
    status = ak.flatten(prt.status).to_numpy()
    pid = ak.flatten(prt.id).to_numpy()
    abs_id = np.abs(pid)
    visible = (status > 0) & ~np.isin(abs_id, INVISIBLE_ABS_IDS)
    visible &= ~((abs_id >= _HV_RANGE[0]) & (abs_id < _HV_RANGE[1]))
    p = prt.p
    event = np.repeat(np.arange(len(counts)), counts)
    out = dict(
        event=event[visible],
        pid=pid[visible],
        px=ak.flatten(p.px).to_numpy()[visible],
        py=ak.flatten(p.py).to_numpy()[visible],
        pz=ak.flatten(p.pz).to_numpy()[visible],
        e=ak.flatten(p.e).to_numpy()[visible],
    )
    out["n_events"] = len(counts)
    return out


def _eta_phi(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.where(pt > 0, pz / np.where(pt > 0, pt, 1.0), np.sign(pz) * 1e3))
    return np.clip(eta, -1e3, 1e3), np.arctan2(py, px)


def resonance_truth(prt: ak.Array, match_ids: tuple[int, ...], *, max_depth: int = 64) -> dict[str, np.ndarray]:
    """Resonances with ``|id|`` in ``match_ids`` that decayed into status -23 partons.

    Returns flat arrays: per resonance (the last copy of each, the one that decays)
    ``event, pid, pt, eta, phi`` and its decay partons in CSR form ``prod_offsets``,
    ``prod_eta``, ``prod_phi``.
    """
    n_events = len(prt)
    counts = ak.num(prt, axis=1).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    status = ak.flatten(prt.status).to_numpy()
    abs_id = np.abs(ak.flatten(prt.id).to_numpy())
    event_of = np.repeat(np.arange(n_events), counts)
    mother = ak.flatten(prt.mother1).to_numpy().astype(np.int64) + offsets[event_of]
    is_match = np.isin(abs_id, np.asarray(match_ids))

    # climb each hard decay parton's mother chain to its nearest matching ancestor
    decay = np.flatnonzero((status == -23) & ~is_match)
    cur = mother[decay]
    found = is_match[cur]
    for _ in range(max_depth):
        todo = ~found
        if not todo.any():
            break
        nxt = mother[cur[todo]]
        # the chain ends at the beam particles (mother index 0 of the event)
        stuck = nxt == cur[todo]
        cur[todo] = nxt
        found[todo] = is_match[nxt]
        if stuck.all():
            break
    decay, anc = decay[found], cur[found]

    px = ak.flatten(prt.p.px).to_numpy()
    py = ak.flatten(prt.p.py).to_numpy()
    pz = ak.flatten(prt.p.pz).to_numpy()
    res_idx, prod_counts = np.unique(anc, return_counts=True)  # sorted, so grouped by event
    prod = decay[np.argsort(anc, kind="stable")]
    r_eta, r_phi = _eta_phi(px[res_idx], py[res_idx], pz[res_idx])
    p_eta, p_phi = _eta_phi(px[prod], py[prod], pz[prod])
    return {
        "event": event_of[res_idx],
        "pid": abs_id[res_idx],
        "pt": np.hypot(px[res_idx], py[res_idx]),
        "eta": r_eta,
        "phi": r_phi,
        "prod_offsets": np.concatenate([[0], np.cumsum(prod_counts)]),
        "prod_eta": p_eta,
        "prod_phi": p_phi,
    }


def select_events(truth: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """Truth of the events kept by a boolean mask, with event indices renumbered."""
    new_index = np.cumsum(keep) - 1
    res = keep[truth["event"]]
    counts = np.diff(truth["prod_offsets"])
    prod = np.repeat(res, counts)
    return {
        "event": new_index[truth["event"][res]],
        "pid": truth["pid"][res],
        "pt": truth["pt"][res],
        "eta": truth["eta"][res],
        "phi": truth["phi"][res],
        "prod_offsets": np.concatenate([[0], np.cumsum(counts[res])]),
        "prod_eta": truth["prod_eta"][prod],
        "prod_phi": truth["prod_phi"][prod],
    }
