"""Physics tests of core/substructure.py against slow by-hand references.

In the spirit of energyflow's "byhand" tests: every number from the compiled module
(jetscan.core._fastsub, fastjet-contrib C++) is checked against a plain pure-Python loop
(math module only, its own naive O(n^3) kT / C/A clustering), and against the former
implementation on scikit-hep fastjet's awkward multi-event API (kept here, as
``_fj_softdrop_masses`` / ``_fj_nsubjettiness``, as an independent reference), plus
fastjet-contrib's own njettiness binding. Synthetic jets only ("tiny_jets": seeded
constituents, no Pythia).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import reduce

import awkward as ak
import numpy as np
import pytest

import jetscan.core.substructure as substructure
from jetscan.core.substructure import (
    nsubjettiness,
    softdrop_masses,
    substructure_csr,
    tau_ratios,
)

fastjet = pytest.importorskip("fastjet")  # the Python binding: only for the references


# ---------------------------------------------------------------- synthetic jets
def _particles(pt, y, phi):
    """Massless particles (GeV) as records px, py, pz, e."""
    return [
        {"px": p * math.cos(f), "py": p * math.sin(f), "pz": p * math.sinh(r),
         "e": p * math.cosh(r)}
        for p, r, f in zip(pt, y, phi)
    ]


def _prong(rng, pt, y0, phi0, n, spread):
    """n particles sharing pt (Dirichlet fractions) around (y0, phi0), Gaussian spread."""
    fractions = rng.dirichlet(np.ones(n))
    y, phi = y0 + rng.normal(0, spread, n), phi0 + rng.normal(0, spread, n)
    return _particles(pt * fractions, y, phi)


@pytest.fixture
def tiny_jets():
    """Seeded synthetic jets by kind; each call of a builder draws a new jet."""
    rng = np.random.default_rng(20240611)
    y0, phi0 = 0.5, 3.0  # near the phi = pi seam, so wrapping is exercised

    def one_prong():  # hard narrow core plus wide soft radiation
        return _prong(rng, 400, y0, phi0, 25, 0.03) + _prong(rng, 100, y0, phi0, 25, 0.25)

    def two_prong():  # balanced, dR = 0.4
        return (_prong(rng, 250, y0 - 0.2, phi0, 20, 0.02)
                + _prong(rng, 250, y0 + 0.2, phi0, 20, 0.02))

    def three_prong():  # three balanced prongs on a circle of radius 0.23 (dR ~ 0.4)
        return sum(
            (_prong(rng, 170, y0 + 0.23 * math.cos(a), phi0 + 0.23 * math.sin(a), 15, 0.02)
             for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)),
            [],
        )

    def qcd_like(n):  # broad random jet, steeply falling pt spectrum
        pt = rng.pareto(1.5, n) + 0.5
        return _particles(pt, y0 + rng.normal(0, 0.3, n), phi0 + rng.normal(0, 0.3, n))

    return {"one_prong": one_prong, "two_prong": two_prong, "three_prong": three_prong,
            "qcd_like": qcd_like}


def _jets(list_of_jets):
    return ak.Array(list_of_jets)


# ---------------------------------------------------------------- by-hand references
def _rap(px, py, pz, e):
    """Rapidity exactly as fastjet::PseudoJet computes it."""
    kt2 = px * px + py * py
    if kt2 == 0 and e == abs(pz):
        return math.copysign(1e5 + abs(pz), pz)
    m2 = max((e + pz) * (e - pz) - kt2, 0.0)
    rap = 0.5 * math.log((kt2 + m2) / (e + abs(pz)) ** 2)
    return -rap if pz > 0 else rap


def _dr2(a, b):
    dphi = math.atan2(a[1], a[0]) - math.atan2(b[1], b[0])
    while dphi > math.pi:
        dphi -= 2 * math.pi
    while dphi < -math.pi:
        dphi += 2 * math.pi
    return (_rap(*a) - _rap(*b)) ** 2 + dphi**2


def _pt(a):
    return math.hypot(a[0], a[1])


def _mass(a):
    return math.sqrt(max(a[3] ** 2 - a[0] ** 2 - a[1] ** 2 - a[2] ** 2, 0.0))


def _cluster_by_hand(parts, p, n_stop=1):
    """Naive generalised-kt (p=1: kT, p=0: C/A), E scheme, R -> infinity (no beam merges).

    Returns the surviving nodes when n_stop remain; a node is (four-momentum, children).
    """
    nodes = [((q["px"], q["py"], q["pz"], q["e"]), None) for q in parts]
    while len(nodes) > n_stop:
        best = None
        for i in range(len(nodes)):
            for j in range(i + 1, len(nodes)):
                a, b = nodes[i][0], nodes[j][0]
                d = min(_pt(a) ** (2 * p), _pt(b) ** (2 * p)) * _dr2(a, b)
                if best is None or d < best[0]:
                    best = (d, i, j)
        _, i, j = best
        merged = (tuple(x + y for x, y in zip(nodes[i][0], nodes[j][0])), (nodes[i], nodes[j]))
        nodes = [nd for k, nd in enumerate(nodes) if k not in (i, j)] + [merged]
    return nodes


def _tau_by_hand(parts, n, r0, beta):
    if len(parts) < n:
        return 0.0
    axes = [nd[0] for nd in _cluster_by_hand(parts, p=1, n_stop=n)]
    num = den = 0.0
    for q in parts:
        v = (q["px"], q["py"], q["pz"], q["e"])
        num += _pt(v) * min(math.sqrt(_dr2(v, ax)) for ax in axes) ** beta
        den += _pt(v) * r0**beta
    return num / den


def _softdrop_by_hand(parts, r0, beta, z_cut):
    if not parts:
        return 0.0
    node = _cluster_by_hand(parts, p=0)[0]
    while node[1] is not None:
        (a, _), (b, _) = node[1]
        z = min(_pt(a), _pt(b)) / (_pt(a) + _pt(b))
        if z > z_cut * (math.sqrt(_dr2(a, b)) / r0) ** beta:
            break
        node = node[1][0] if _pt(a) > _pt(b) else node[1][1]
    return _mass(node[0])


def _total_mass(parts):
    return _mass(tuple(sum(q[k] for q in parts) for k in ("px", "py", "pz", "e")))


# ---------------------------------------------------------------- fastjet awkward-API references
# The pre-extension implementation of core/substructure.py: soft drop through fastjet's
# exclusive_jets_softdrop_grooming, N-subjettiness as flat numpy on exclusive-kT axes from
# one multi-event ClusterSequence. Slow (~2 ms per 80-constituent jet), independent.
_RECLUSTER_R = 1000.0  # fastjet's JetDefinition::max_allowable_R
_MAX_RAP = 1.0e5  # fastjet's MaxRap, the rapidity given to a particle along the beam


@contextmanager
def _quiet_exclusive():
    """Silence fastjet's exclusive-jets warning (and restore warnings.formatwarning)."""
    fmt = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="dcut and exclusive jets", category=UserWarning)
        try:
            yield
        finally:
            warnings.formatwarning = fmt


def _fj_flat(constituents):
    jets = ak.Array(constituents)
    counts = ak.to_numpy(ak.num(jets, axis=1)).astype(np.int64)
    flat = ak.flatten(jets, axis=1)
    if len(flat) == 0:
        return (*(np.zeros(0) for _ in range(4)), counts)
    e_name = "e" if "e" in ak.fields(flat) else "E"
    cols = (np.asarray(ak.to_numpy(flat[f]), dtype=np.float64) for f in ("px", "py", "pz", e_name))
    return (*cols, counts)


def _fj_cluster(px, py, pz, e, counts, algorithm):
    flat = ak.zip({"px": px, "py": py, "pz": pz, "E": e}, with_name="Momentum4D")
    events = ak.unflatten(flat, counts)
    return fastjet.ClusterSequence(events, fastjet.JetDefinition(algorithm, _RECLUSTER_R))


def _fj_rap_phi(px, py, pz, e):
    kt2 = px * px + py * py
    m2 = (e + pz) * (e - pz) - kt2
    e_plus_abs_pz = e + np.abs(pz)
    with np.errstate(divide="ignore", invalid="ignore"):
        rap = 0.5 * np.log((kt2 + np.maximum(m2, 0.0)) / (e_plus_abs_pz * e_plus_abs_pz))
    rap = np.where(pz > 0, -rap, rap)
    on_beam = (kt2 == 0) & (e == np.abs(pz))
    rap = np.where(on_beam, np.copysign(_MAX_RAP + np.abs(pz), pz), rap)
    return np.nan_to_num(rap, nan=0.0), np.arctan2(py, px)


def _fj_softdrop_masses(constituents, r0=0.8, beta=0.0, z_cut=0.1):
    px, py, pz, e, counts = _fj_flat(constituents)
    masses = np.zeros(len(counts), dtype=np.float64)
    filled = counts > 0
    if not filled.any():
        return masses
    cs = _fj_cluster(px, py, pz, e, counts[filled], fastjet.cambridge_algorithm)
    groomed = cs.exclusive_jets_softdrop_grooming(
        njets=1, beta=float(beta), symmetry_cut=float(z_cut), R0=float(r0)
    )
    m = np.asarray(groomed["msoftdrop"], dtype=np.float64)
    masses[filled] = np.maximum(np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    return masses


def _fj_nsubjettiness(constituents, n_max=3, r0=0.8, beta=1.0):
    px, py, pz, e, counts = _fj_flat(constituents)
    n_jets = len(counts)
    taus = np.zeros((n_jets, n_max), dtype=np.float64)
    if not (counts > 0).any():
        return taus
    jet_of = np.repeat(np.arange(n_jets), counts)
    pt = np.hypot(px, py)
    rap, phi = _fj_rap_phi(px, py, pz, e)
    norm = np.bincount(jet_of, weights=pt, minlength=n_jets) * r0**beta
    cs = _fj_cluster(px, py, pz, e, counts, fastjet.kt_algorithm)
    for n in range(1, n_max + 1):
        enough = counts >= n
        if not enough.any():
            break
        with _quiet_exclusive():
            axes = cs.exclusive_jets_up_to(n)
        n_axes = ak.to_numpy(ak.num(axes, axis=1))
        a_flat = ak.flatten(axes, axis=1)
        a_rap, a_phi = _fj_rap_phi(
            *(np.asarray(ak.to_numpy(a_flat[f]), dtype=np.float64) for f in ("px", "py", "pz", "E"))
        )
        idx = np.minimum(np.arange(n)[:, None] + (np.cumsum(n_axes) - n_axes), len(a_rap) - 1)
        take = slice(None) if enough.all() else enough[jet_of]
        j = jet_of[take]
        d_rap = rap[take] - np.take(a_rap[idx], j, axis=1)
        d_phi = np.abs(phi[take] - np.take(a_phi[idx], j, axis=1))
        d_phi = np.minimum(d_phi, 2.0 * np.pi - d_phi)
        d2_min = reduce(np.minimum, d_rap * d_rap + d_phi * d_phi)
        num = np.bincount(j, weights=pt[take] * d2_min ** (0.5 * beta), minlength=n_jets)
        np.divide(num, norm, out=taus[:, n - 1], where=enough & (norm > 0))
    return taus


def _csr(list_of_jets):
    """(offsets, px, py, pz, e) of a list of jets (lists of particle dicts)."""
    counts = [len(j) for j in list_of_jets]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = [q for j in list_of_jets for q in j]
    cols = (np.array([q[k] for q in flat], dtype=np.float64) for k in ("px", "py", "pz", "e"))
    return (offsets, *cols)


# ---------------------------------------------------------------- N-subjettiness
def test_prong_counting_ratios(tiny_jets):
    one = [tiny_jets["one_prong"]() for _ in range(6)]
    two = [tiny_jets["two_prong"]() for _ in range(6)]
    three = [tiny_jets["three_prong"]() for _ in range(6)]
    tau21, tau32 = tau_ratios(nsubjettiness(_jets(one + two + three), n_max=3))
    t21_one, t21_two = tau21[:6], tau21[6:12]
    t32_two, t32_three = tau32[6:12], tau32[12:]
    assert np.all(t21_two < 0.3)
    assert np.all(t21_one > 0.5) and t21_one.min() > t21_two.max()
    assert np.all(t32_three < 0.3)
    assert t32_three.max() < t32_two.min()


@pytest.mark.parametrize(("r0", "beta"), [(0.8, 1.0), (1.0, 2.0), (0.4, 0.5)])
def test_tau_matches_by_hand_loop(tiny_jets, r0, beta):
    rng = np.random.default_rng(11)
    jets = [tiny_jets["qcd_like"](int(n)) for n in rng.integers(4, 30, size=5)]
    jets.append(tiny_jets["two_prong"]())
    got = nsubjettiness(_jets(jets), n_max=4, r0=r0, beta=beta)
    want = np.array([[_tau_by_hand(j, n, r0, beta) for n in range(1, 5)] for j in jets])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_tau_matches_fastjet_contrib_nsubjettiness(tiny_jets):
    fastjet = pytest.importorskip("fastjet")
    jets = _jets([tiny_jets["qcd_like"](40) for _ in range(20)])
    got = nsubjettiness(jets, n_max=3, r0=0.8, beta=1.0)
    events = ak.zip({"px": jets.px, "py": jets.py, "pz": jets.pz, "E": jets.e},
                    with_name="Momentum4D")
    cs = fastjet.ClusterSequence(events, fastjet.JetDefinition(fastjet.kt_algorithm, 1.0))
    want = cs.njettiness(
        measure_definition="NormalizedMeasure", axes_definition="KT_Axes", njets=[1, 2, 3],
        beta=1.0, R0=0.8,
    )
    np.testing.assert_allclose(got, np.asarray(want.to_list()), rtol=1e-10)


def test_too_few_constituents_give_zero_not_nan(tiny_jets):
    pool = tiny_jets["qcd_like"](3)
    jets = _jets([[], pool[:1], pool[:2], pool[:3], tiny_jets["qcd_like"](10)])
    taus = nsubjettiness(jets, n_max=4)
    counts = np.array([0, 1, 2, 3, 10])
    assert np.isfinite(taus).all()
    for n in range(1, 5):
        np.testing.assert_array_equal(taus[counts <= n, n - 1], 0.0)  # N axes on <= N particles
    assert np.all(taus[counts > 1, 0] > 0) and np.all(taus[4] > 0)
    masses = softdrop_masses(jets)
    assert np.isfinite(masses).all() and masses[0] == 0.0 and masses[1] == 0.0
    assert nsubjettiness(_jets([[], []])).shape == (2, 3)
    assert softdrop_masses(_jets([[], []])).tolist() == [0.0, 0.0]


def test_tau_ratios_safe_division():
    taus = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.5, 0.25, 0.05]])
    tau21, tau32 = tau_ratios(taus)
    np.testing.assert_allclose(tau21, [0.0, 0.0, 0.5])
    np.testing.assert_allclose(tau32, [0.0, 0.0, 0.2])
    with pytest.raises(ValueError, match="n_max=3"):
        tau_ratios(taus[:, :2])


# ---------------------------------------------------------------- soft drop
def test_soft_wide_particle_is_groomed_away():
    rng = np.random.default_rng(5)
    # hard core: two balanced narrow sub-prongs 0.1 apart, so the core passes mMDT itself
    core = _prong(rng, 250, 0.45, 3.0, 15, 0.01) + _prong(rng, 250, 0.55, 3.0, 15, 0.01)
    soft = _particles([10.0], [0.5 + 0.6], [3.0 + 0.4])  # z ~ 0.02 < 0.1 at dR ~ 0.72
    jet = core + soft
    core_mass, full_mass = _total_mass(core), _total_mass(jet)
    assert full_mass > 2 * core_mass
    groomed, core_alone = softdrop_masses(_jets([jet, core]), r0=0.8, beta=0.0, z_cut=0.1)
    np.testing.assert_allclose(groomed, core_mass, rtol=1e-9)
    np.testing.assert_allclose(core_alone, core_mass, rtol=1e-9)
    (ungroomed,) = softdrop_masses(_jets([jet]), z_cut=0.0)  # z_cut = 0 grooms nothing
    np.testing.assert_allclose(ungroomed, full_mass, rtol=1e-9)


def test_balanced_two_prong_keeps_its_mass(tiny_jets):
    jets = [tiny_jets["two_prong"]() for _ in range(4)]
    got = softdrop_masses(_jets(jets), r0=0.8, beta=0.0, z_cut=0.1)
    np.testing.assert_allclose(got, [_total_mass(j) for j in jets], rtol=1e-9)
    assert np.all(got > 80.0)  # m ~ sqrt(z(1-z)) pt dR = 100 GeV, far above the prong masses


@pytest.mark.parametrize(
    ("beta", "z_cut", "r0"), [(0.0, 0.1, 0.8), (1.0, 0.2, 0.8), (2.0, 0.05, 1.0)]
)
def test_softdrop_matches_by_hand_declustering(tiny_jets, beta, z_cut, r0):
    rng = np.random.default_rng(3)
    jets = [tiny_jets["qcd_like"](int(n)) for n in rng.integers(1, 25, size=6)]
    jets += [tiny_jets["one_prong"](), tiny_jets["three_prong"]()]
    got = softdrop_masses(_jets(jets), r0=r0, beta=beta, z_cut=z_cut)
    want = [_softdrop_by_hand(j, r0, beta, z_cut) for j in jets]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- batching
def test_results_do_not_depend_on_batch_position(tiny_jets):
    jets = [
        tiny_jets["two_prong"](), [], tiny_jets["qcd_like"](2), tiny_jets["one_prong"](),
        tiny_jets["qcd_like"](1), tiny_jets["three_prong"](), tiny_jets["qcd_like"](17),
    ]
    batch_taus = nsubjettiness(_jets(jets), n_max=3)  # n_max=3 is also the default
    batch_sd = softdrop_masses(_jets(jets))
    for i, jet in enumerate(jets):
        alone = _jets([jet])
        np.testing.assert_allclose(batch_taus[i], nsubjettiness(alone)[0], rtol=1e-12, atol=0)
        np.testing.assert_allclose(batch_sd[i], softdrop_masses(alone)[0], rtol=1e-12, atol=0)
    perm = np.random.default_rng(0).permutation(len(jets))
    shuffled = _jets([jets[k] for k in perm])
    np.testing.assert_allclose(nsubjettiness(shuffled), batch_taus[perm], rtol=1e-12, atol=0)
    np.testing.assert_allclose(softdrop_masses(shuffled), batch_sd[perm], rtol=1e-12, atol=0)


def test_accepts_capital_e_field(tiny_jets):
    jets = _jets([tiny_jets["two_prong"]()])
    renamed = ak.zip({"px": jets.px, "py": jets.py, "pz": jets.pz, "E": jets.e})
    np.testing.assert_array_equal(nsubjettiness(renamed), nsubjettiness(jets))
    np.testing.assert_array_equal(softdrop_masses(renamed), softdrop_masses(jets))


# ---------------------------------------------------------------- compiled module vs references
def _mixed_jets(tiny_jets, rng, sizes):
    jets = [tiny_jets["qcd_like"](int(n)) if n else [] for n in sizes]
    jets += [tiny_jets["one_prong"](), tiny_jets["two_prong"](), tiny_jets["three_prong"]()]
    return jets


@pytest.mark.parametrize(
    ("r0", "sd_beta", "sd_zcut", "tau_beta"),
    [(0.8, 0.0, 0.1, 1.0), (0.8, 1.0, 0.2, 2.0), (1.0, 2.0, 0.05, 0.5), (0.4, 0.0, 0.0, 1.0)],
)
def test_csr_matches_fastjet_awkward_reference(tiny_jets, r0, sd_beta, sd_zcut, tau_beta):
    rng = np.random.default_rng(17)
    sizes = [0, 1, 2, 3, 4, 0, 5] + list(rng.integers(6, 120, size=25))
    jets = _mixed_jets(tiny_jets, rng, sizes)
    sd, taus = substructure_csr(
        *_csr(jets), r0=r0, sd_beta=sd_beta, sd_zcut=sd_zcut, n_tau=4, tau_beta=tau_beta
    )
    assert sd.shape == (len(jets),) and taus.shape == (len(jets), 4)
    assert sd.dtype == taus.dtype == np.float64
    want_sd = _fj_softdrop_masses(_jets(jets), r0=r0, beta=sd_beta, z_cut=sd_zcut)
    want_taus = _fj_nsubjettiness(_jets(jets), n_max=4, r0=r0, beta=tau_beta)
    np.testing.assert_allclose(sd, want_sd, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(taus, want_taus, rtol=1e-9, atol=1e-14)
    # the awkward-input wrappers are the same computation
    np.testing.assert_array_equal(softdrop_masses(_jets(jets), r0, sd_beta, sd_zcut), sd)
    np.testing.assert_array_equal(nsubjettiness(_jets(jets), 4, r0, tau_beta), taus)



@pytest.mark.parametrize(("r0", "tau_beta"), [(0.8, 1.0), (0.8, 2.0), (1.0, 0.5), (0.4, 1.5)])
def test_csr_taus_match_contrib_nsubjettiness_objects(tiny_jets, r0, tau_beta):
    """The one-kT-clustering tau sum equals contrib::Nsubjettiness(N, KT_Axes(),
    NormalizedMeasure(tau_beta, r0)) called per N, through the same libfastjet."""
    rng = np.random.default_rng(37)
    jets = _mixed_jets(tiny_jets, rng, [0, 1, 2, 3, 4, 5] + list(rng.integers(6, 100, size=20)))
    args = _csr(jets)
    _, taus = substructure_csr(*args, r0=r0, n_tau=5, tau_beta=tau_beta)
    want = substructure._fastsub.nsubjettiness_contrib(*args, 5, tau_beta, r0)
    np.testing.assert_allclose(taus, want, rtol=1e-9, atol=1e-14)
    counts = np.diff(args[0])
    assert np.all((taus > 0) == (counts[:, None] > np.arange(1, 6)))  # 0 iff <= N particles

def test_csr_matches_by_hand_loops(tiny_jets):
    rng = np.random.default_rng(23)
    jets = [tiny_jets["qcd_like"](int(n)) for n in rng.integers(1, 20, size=5)]
    jets.append(tiny_jets["two_prong"]())
    sd, taus = substructure_csr(*_csr(jets), r0=0.8, sd_beta=1.0, sd_zcut=0.15, n_tau=3,
                                tau_beta=1.5)
    # atol: a jet groomed down to one massless particle has m = sqrt(rounding) ~ 1e-8
    np.testing.assert_allclose(
        sd, [_softdrop_by_hand(j, 0.8, 1.0, 0.15) for j in jets], rtol=1e-9, atol=1e-6
    )
    want = [[_tau_by_hand(j, n, 0.8, 1.5) for n in (1, 2, 3)] for j in jets]
    np.testing.assert_allclose(taus, want, rtol=1e-10, atol=1e-14)


def test_csr_views_dtypes_and_n_tau_zero(tiny_jets):
    rng = np.random.default_rng(29)
    jets = _mixed_jets(tiny_jets, rng, [0, 7, 30, 1, 50])
    offsets, px, py, pz, e = _csr(jets)
    sd, taus = substructure_csr(offsets, px, py, pz, e)
    # a window of the offsets over the full constituent arrays (offsets[0] != 0)
    sd_w, taus_w = substructure_csr(offsets[2:6], px, py, pz, e)
    np.testing.assert_array_equal(sd_w, sd[2:5])
    np.testing.assert_array_equal(taus_w, taus[2:5])
    # int32 offsets, non-contiguous float64 columns are converted, same numbers
    stacked = np.stack([px, py, pz, e], axis=1)
    sd_c, taus_c = substructure_csr(offsets.astype(np.int32), *stacked.T)
    np.testing.assert_array_equal(sd_c, sd)
    np.testing.assert_array_equal(taus_c, taus)
    sd0, taus0 = substructure_csr(offsets, px, py, pz, e, n_tau=0)
    np.testing.assert_array_equal(sd0, sd)
    assert taus0.shape == (len(jets), 0)
    sd_none, taus_none = substructure_csr(np.zeros(1, np.int64), *(np.zeros(0),) * 4)
    assert sd_none.shape == (0,) and taus_none.shape == (0, 3)


def test_csr_rejects_bad_input(tiny_jets):
    offsets, px, py, pz, e = _csr([tiny_jets["qcd_like"](5), tiny_jets["qcd_like"](4)])
    with pytest.raises(ValueError, match="non-decreasing"):
        substructure_csr(np.array([0, 6, 5]), px, py, pz, e)
    with pytest.raises(ValueError, match="non-decreasing"):
        substructure_csr(np.array([0, 5, 10]), px, py, pz, e)
    with pytest.raises(ValueError, match="one length"):
        substructure_csr(offsets, px, py, pz, e[:-1])
    with pytest.raises(ValueError, match="n_jets \\+ 1"):
        substructure_csr(np.zeros(0, np.int64), px, py, pz, e)
    with pytest.raises(ValueError, match="soft drop"):
        substructure_csr(offsets, px, py, pz, e, sd_zcut=1.0)
    with pytest.raises(ValueError, match="n_tau >= 1"):
        substructure_csr(offsets, px, py, pz, e, tau_beta=0.0)
    with pytest.raises(ValueError, match="n_max >= 1"):
        nsubjettiness(_jets([tiny_jets["qcd_like"](5)]), n_max=0)
    # the compiled function checks its arguments too
    with pytest.raises(ValueError, match="non-decreasing"):
        substructure._fastsub.substructure(np.array([0, 9, 20]), px, py, pz, e, 0.8, 0.0, 0.1,
                                           3, 1.0)


def test_missing_extension_says_how_to_rebuild(monkeypatch):
    real_import = substructure.importlib.import_module

    def fail(name, *args):
        if name == "jetscan.core._fastsub":
            raise ImportError("undefined symbol: _ZN7fastjet9PseudoJetC1Edddd")
        return real_import(name, *args)

    monkeypatch.setattr(substructure.importlib, "import_module", fail)
    with pytest.raises(ImportError, match=r"pip install --no-build-isolation -e \."):
        substructure._load_fastsub()

def test_concurrent_calls_release_the_gil_and_agree(tiny_jets):
    """Threads on disjoint offset windows give the serial numbers (GIL released inside)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(41)
    jets = _mixed_jets(tiny_jets, rng, list(rng.integers(0, 90, size=60)))
    offsets, *cols = _csr(jets)
    sd, taus = substructure_csr(offsets, *cols)
    bounds = np.linspace(0, len(jets), 5).astype(int)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(
            lambda k: substructure_csr(offsets[bounds[k]:bounds[k + 1] + 1], *cols), range(4)
        ))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), sd)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), taus)
