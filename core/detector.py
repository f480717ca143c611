"""A particle-flow-like detector model, vectorised over all particles of a batch of events.

Close in spirit to Delphes' CMS card (de Favereau et al., arXiv:1307.6346), simplified:

* **tracks**: charged particles with |eta| < ``tracker_abs_eta_max`` and pT above
  ``track_pt_min_gev`` are found with probability ``track_efficiency``; their momentum is
  smeared with sigma(pT)/pT = hypot(c, s * pT). Electrons and charged hadrons alike.
* **muons**: muons inside the muon system (|eta| < ``muon_abs_eta_max``, pT above
  ``muon_pt_min_gev``) that have a track are identified with probability
  ``muon_efficiency``; an unidentified tracked muon stays a plain track.
* **towers**: every other visible particle inside |eta| < ``calo_abs_eta_max`` deposits its
  energy in a calorimeter cell: photons and electrons (untracked ones) in the ECAL grid,
  hadrons in the coarser HCAL grid. Each cell's summed energy is smeared with
  sigma(E)^2 = (a E)^2 + b^2 E + c^2 and kept above a threshold; a tower becomes a massless
  neutral constituent at the cell centre. Untracked muons leave nothing (minimum ionising).

Output constituents carry pT, eta, phi, E, (px, py, pz) and ``kind``:
``KIND_TRACK`` = 0, ``KIND_NEUTRAL`` = 1, ``KIND_MUON`` = 2.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

from jetscan.core.study import DetectorConfig

__all__ = ["KIND_TRACK", "KIND_NEUTRAL", "KIND_MUON", "KIND_PADDING", "reconstruct", "charges_from_table"]

KIND_TRACK, KIND_NEUTRAL, KIND_MUON, KIND_PADDING = 0, 1, 2, -1
_EM_ABS_IDS = np.array([11, 22])


def charges_from_table(pids: np.ndarray, table: dict[int, float]) -> np.ndarray:
    """Electric charge of each particle from a {pid: charge} table (one lookup per distinct id)."""
    uniq, inverse = np.unique(pids, return_inverse=True)
    return np.array([table[int(u)] for u in uniq], dtype=np.float64)[inverse]


def _pt_eta_phi(px, py, pz):
    pt = np.hypot(px, py)
    p = np.sqrt(pt * pt + pz * pz)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(pt > 0, np.arcsinh(pz / np.where(pt > 0, pt, 1.0)), np.sign(pz) * 1e3)
    return pt, eta, np.arctan2(py, px), p


def _towers(event, eta, phi, energy, cell, abc, threshold, rng):
    """Sum energies into (event, ieta, iphi) cells, smear and threshold each cell."""
    n_phi = int(round(2 * np.pi / cell))
    dphi = 2 * np.pi / n_phi
    ieta = np.floor(eta / cell).astype(np.int64)
    iphi = np.floor((phi + np.pi) / dphi).astype(np.int64) % n_phi
    span = 2 * int(np.ceil(10.0 / cell)) + 1  # |eta| < 10 covers any calorimeter
    key = (event.astype(np.int64) * span + (ieta + span // 2)) * n_phi + iphi
    cells, inverse = np.unique(key, return_inverse=True)
    e_sum = np.bincount(inverse, weights=energy, minlength=len(cells))
    a, b, c = abc
    sigma = np.sqrt((a * e_sum) ** 2 + b * b * e_sum + c * c)
    e_meas = e_sum + sigma * rng.standard_normal(len(cells))
    keep = e_meas > threshold
    cells, e_meas = cells[keep], e_meas[keep]
    iphi_c = cells % n_phi
    ieta_c = (cells // n_phi) % span - span // 2
    ev = cells // (n_phi * span)
    eta_c = (ieta_c + 0.5) * cell
    phi_c = (iphi_c + 0.5) * dphi - np.pi
    return ev, eta_c, phi_c, e_meas


def reconstruct(
    particles: dict, charges: np.ndarray, cfg: DetectorConfig, rng: np.random.Generator
) -> ak.Array:
    """Detector-level constituents of every event.

    ``particles``: flat arrays ``event, pid, px, py, pz, e`` and ``n_events`` (see
    :func:`jetscan.core.events.final_state_particles`); ``charges``: the charge of each.
    Returns ``events var * {px, py, pz, e, pt, eta, phi, kind}`` (GeV).
    """
    event, pid = particles["event"], particles["pid"]
    px, py, pz, e = particles["px"], particles["py"], particles["pz"], particles["e"]
    pt, eta, phi, p = _pt_eta_phi(px, py, pz)
    abs_eta, abs_id = np.abs(eta), np.abs(pid)
    charged = charges != 0

    # --- tracker
    tracked = charged & (abs_eta < cfg.tracker_abs_eta_max) & (pt > cfg.track_pt_min_gev)
    tracked &= rng.random(len(pt)) < cfg.track_efficiency
    is_muon = tracked & (abs_id == 13) & (abs_eta < cfg.muon_abs_eta_max) & (pt > cfg.muon_pt_min_gev)
    is_muon &= rng.random(len(pt)) < cfg.muon_efficiency
    t = np.flatnonzero(tracked)
    rel = np.hypot(cfg.track_pt_resolution_constant, cfg.track_pt_resolution_per_gev * pt[t])
    scale = np.clip(1.0 + rel * rng.standard_normal(len(t)), 0.05, None)
    mass2 = np.clip(e[t] ** 2 - p[t] ** 2, 0.0, None)
    t_px, t_py, t_pz = px[t] * scale, py[t] * scale, pz[t] * scale
    t_e = np.sqrt((p[t] * scale) ** 2 + mass2)
    t_kind = np.where(is_muon[t], KIND_MUON, KIND_TRACK)

    # --- calorimeters: everything visible not tracked, but no untracked muons
    in_calo = ~tracked & (abs_eta < cfg.calo_abs_eta_max) & (abs_id != 13)
    em = in_calo & np.isin(abs_id, _EM_ABS_IDS)
    had = in_calo & ~em
    towers = [
        _towers(event[m], eta[m], phi[m], e[m], cell, abc, thr, rng)
        for m, cell, abc, thr in (
            (em, cfg.ecal_cell, cfg.ecal_resolution_abc, cfg.ecal_threshold_gev),
            (had, cfg.hcal_cell, cfg.hcal_resolution_abc, cfg.hcal_threshold_gev),
        )
    ]
    c_ev = np.concatenate([tw[0] for tw in towers])
    c_eta = np.concatenate([tw[1] for tw in towers])
    c_phi = np.concatenate([tw[2] for tw in towers])
    c_e = np.concatenate([tw[3] for tw in towers])
    c_pt = c_e / np.cosh(c_eta)

    ev = np.concatenate([event[t], c_ev])
    order = np.argsort(ev, kind="stable")
    out = {
        "px": np.concatenate([t_px, c_pt * np.cos(c_phi)])[order],
        "py": np.concatenate([t_py, c_pt * np.sin(c_phi)])[order],
        "pz": np.concatenate([t_pz, c_pt * np.sinh(c_eta)])[order],
        "e": np.concatenate([t_e, c_e])[order],
        "kind": np.concatenate([t_kind, np.full(len(c_e), KIND_NEUTRAL)]).astype(np.int8)[order],
    }
    out["pt"], out["eta"], out["phi"], _ = _pt_eta_phi(out["px"], out["py"], out["pz"])
    counts = np.bincount(ev, minlength=particles["n_events"])
    return ak.unflatten(ak.zip(out), counts)
