"""Pythia8 process presets: every named process with its settings in one place.

A preset turns (collider energy, pTHat range, shower model, MPI switch, seed) into the list
of ``Pythia.readString`` lines, and says which partonic resonance a signal jet must be
truth-matched to. No Pythia object is created here: :mod:`jetscan.jobs.generate` does that.

Presets (seed papers in ``shared/reference/seed-physics.md``):

``qcd_dijet``
    HardQCD 2 -> 2, the background of every seed paper.
``top_hadronic``
    t tbar, both W -> q q' forced (Kasieczka et al.; Macaluso & Shih; Heimel et al.).
``gluino_rpv``
    gluino pairs, m = 400 GeV, RPV decay to three quarks (Farina, Nakai & Shih, arXiv:1808.08992).
``scalar_4c``
    g g -> phi g with phi (175 GeV) -> a a, a (4 GeV) -> c cbar (Heimel et al. sec. 3.1).
    phi is Pythia's H2 (35) and a its A3 (36).
``dark_shower``
    Hidden Valley: pair-produced SM-coloured dark-sector quark (Pythia's Dv, 4900001, 200 GeV)
    decaying to d + qv; the SU(3)_v shower (alpha_v = 0.1) hadronises into dark mesons of
    10 GeV (``dark_shower``) or 100 GeV (``dark_shower_100``) that decay back to quarks
    (Heimel et al. sec. 3.2). The mesons are made to decay to d dbar: Pythia 8.3 lists their
    channels (b bbar, c cbar, leptons, ...) but switches every one off, so its defaults would
    leave them stable and invisible. Another choice of decays can be given per sample
    (``pythia_settings``); with Pythia's listed branching ratios switched on, the heimel-dark
    image AE's AUC on the 10 GeV mesons moves from 0.873 to 0.885 (core/reference.py).
``wprime_xy``
    LHC Olympics 2020 R&D signal: W' (3.5 TeV) -> X (500 GeV) Y (100 GeV), X, Y -> q q.
    X is Pythia's H+ (37), Y its H2 (35), so that W'+ -> X+ Y0 conserves charge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ProcessPreset", "PROCESSES", "SHOWER_SETTINGS", "pythia_settings", "pythia_seed"]

PYTHIA_SEED_MAX = 900_000_000  # Pythia's Random:seed accepts 0 .. 900 000 000

# Quiet output: jetscan reports progress itself.
_QUIET = (
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowInfo = 0",
    "Next:numberShowProcess = 0",
    "Init:showChangedSettings = off",
    "Init:showChangedParticleData = off",
    "Init:showProcesses = off",
)

SHOWER_SETTINGS: dict[str, tuple[str, ...]] = {
    "simple": ("PartonShowers:model = 1",),
    "vincia": ("PartonShowers:model = 2",),
}


@dataclass(frozen=True)
class ProcessPreset:
    """A named Pythia process.

    ``match_ids``: PDG ids (absolute) of the resonances a signal jet is matched to; the
    hard decay quarks of each are the status -23 partons descending from it. Empty for
    backgrounds.
    """

    name: str
    settings: tuple[str, ...]
    is_signal: bool
    match_ids: tuple[int, ...] = ()
    description: str = ""
    pthat_scale: float = field(default=0.9, repr=False)  # default pTHatMin = scale * jet pT low edge
    pthat_max_scale: float | None = field(default=None, repr=False)  # default pTHatMax = scale * upper edge
    slha: str | None = field(default=None, repr=False)  # SLHA spectrum text, written to a file by the job


# Minimal SLHA spectrum for the RPV gluino (Farina, Nakai & Shih): a 400 GeV gluino, every
# other sparticle decoupled at 3 TeV, and the UDD decay gluino -> u d s (and conjugate).
_GLUINO_RPV_SLHA = """\
BLOCK MODSEL
    1   0   # general MSSM
    4   0   # RPV enters through the DECAY table only
BLOCK SMINPUTS
    1   1.27934000E+02
    3   1.18000000E-01
    4   9.11876000E+01
    5   4.18000000E+00
    6   1.73000000E+02
    7   1.77700000E+00
BLOCK MINPAR
    3   1.00000000E+01
BLOCK MASS
   1000001  3.0E+03
   2000001  3.0E+03
   1000002  3.0E+03
   2000002  3.0E+03
   1000003  3.0E+03
   2000003  3.0E+03
   1000004  3.0E+03
   2000004  3.0E+03
   1000005  3.0E+03
   2000005  3.0E+03
   1000006  3.0E+03
   2000006  3.0E+03
   1000011  3.0E+03
   2000011  3.0E+03
   1000012  3.0E+03
   1000013  3.0E+03
   2000013  3.0E+03
   1000014  3.0E+03
   1000015  3.0E+03
   2000015  3.0E+03
   1000016  3.0E+03
   1000021  4.0E+02
   1000022  3.0E+03
   1000023  3.0E+03
   1000025  -3.0E+03
   1000035  3.0E+03
   1000024  3.0E+03
   1000037  3.0E+03
        25  1.25E+02
        35  3.0E+03
        36  3.0E+03
        37  3.0E+03
DECAY   1000021   1.0E-02
     5.0E-01   3    1    2    3
     5.0E-01   3   -1   -2   -3
"""

PROCESSES: dict[str, ProcessPreset] = {
    p.name: p
    for p in [
        ProcessPreset(
            "qcd_dijet",
            ("HardQCD:all = on",),
            is_signal=False,
            description="QCD 2 -> 2 dijets",
            pthat_max_scale=1.5,
        ),
        ProcessPreset(
            "top_hadronic",
            (
                "Top:gg2ttbar = on",
                "Top:qqbar2ttbar = on",
                "24:onMode = off",
                "24:onIfAny = 1 2 3 4 5",
            ),
            is_signal=True,
            match_ids=(6,),
            description="t tbar with both W -> q q'",
        ),
        ProcessPreset(
            "gluino_rpv",
            (
                "SLHA:verbose = 0",
                "SUSY:gg2gluinogluino = on",
                "SUSY:qqbar2gluinogluino = on",
                "RHadrons:allow = off",
            ),
            is_signal=True,
            match_ids=(1000021,),
            description="400 GeV gluino pairs, RPV gluino -> u d s",
            slha=_GLUINO_RPV_SLHA,
        ),
        ProcessPreset(
            "scalar_4c",
            (
                "Higgs:useBSM = on",
                "HiggsBSM:gg2H2g(l:t) = on",
                "HiggsBSM:qg2H2q(l:t) = on",
                "35:m0 = 175.",
                "35:mWidth = 0.1",
                "35:onMode = off",
                "35:onIfMatch = 36 36",
                "36:m0 = 4.",
                "36:mWidth = 0.001",
                "36:onMode = off",
                "36:onIfMatch = 4 -4",
            ),
            is_signal=True,
            match_ids=(35,),
            description="phi (175 GeV) + jet, phi -> a a, a (4 GeV) -> c cbar",
        ),
        ProcessPreset(
            "dark_shower",
            (
                "HiddenValley:gg2DvDvbar = on",
                "HiddenValley:qqbar2DvDvbar = on",
                "4900001:m0 = 200.",
                "HiddenValley:Ngauge = 3",
                "HiddenValley:FSR = on",
                "HiddenValley:fragment = on",
                "HiddenValley:alphaOrder = 0",
                "HiddenValley:alphaFSR = 0.1",
                "HiddenValley:nFlav = 1",
                "HiddenValley:probVector = 0.75",
                "4900101:m0 = 5.",
                "4900111:m0 = 10.",
                "4900113:m0 = 10.",
                "4900111:onMode = off",
                "4900111:oneChannel = 1 1.0 91 1 -1",
                "4900113:onMode = off",
                "4900113:oneChannel = 1 1.0 91 1 -1",
            ),
            is_signal=True,
            match_ids=(4900001,),
            description="Hidden Valley dark shower, Dv (200 GeV) -> d qv, dark mesons 10 GeV",
        ),
        ProcessPreset(
            "dark_shower_100",
            (
                "HiddenValley:gg2DvDvbar = on",
                "HiddenValley:qqbar2DvDvbar = on",
                "4900001:m0 = 200.",
                "HiddenValley:Ngauge = 3",
                "HiddenValley:FSR = on",
                "HiddenValley:fragment = on",
                "HiddenValley:alphaOrder = 0",
                "HiddenValley:alphaFSR = 0.1",
                "HiddenValley:nFlav = 1",
                "HiddenValley:probVector = 0.75",
                "4900101:m0 = 50.",
                "4900111:m0 = 100.",
                "4900113:m0 = 100.",
                "4900111:onMode = off",
                "4900111:oneChannel = 1 1.0 91 1 -1",
                "4900113:onMode = off",
                "4900113:oneChannel = 1 1.0 91 1 -1",
            ),
            is_signal=True,
            match_ids=(4900001,),
            description="Hidden Valley dark shower, Dv (200 GeV) -> d qv, dark mesons 100 GeV",
        ),
        ProcessPreset(
            "wprime_xy",
            (
                "Higgs:useBSM = on",
                "NewGaugeBoson:ffbar2Wprime = on",
                "34:m0 = 3500.",
                "34:onMode = off",
                "34:oneChannel = 1 1.0 100 37 35",
                "37:m0 = 500.",
                "37:mWidth = 0.1",
                "37:onMode = off",
                "37:oneChannel = 1 1.0 100 2 -1",
                "35:m0 = 100.",
                "35:mWidth = 0.1",
                "35:onMode = off",
                "35:oneChannel = 1 1.0 100 1 -1",
            ),
            is_signal=True,
            match_ids=(37, 35),
            description="W' (3.5 TeV) -> X (500 GeV) Y (100 GeV), X, Y -> q q (LHC Olympics 2020)",
            pthat_scale=0.0,
        ),
    ]
}


def pythia_settings(
    process: str,
    *,
    sqrt_s_gev: float,
    pthat_min_gev: float,
    pthat_max_gev: float | None,
    seed: int,
    shower: str = "simple",
    mpi: bool = False,
    hadronization: bool = True,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """All ``readString`` lines for one Pythia instance, in the order they are applied."""
    preset = PROCESSES[process]
    lines = [
        *_QUIET,
        f"Beams:eCM = {sqrt_s_gev:.6g}",
        *preset.settings,
        f"PhaseSpace:pTHatMin = {pthat_min_gev:.6g}",
        f"PhaseSpace:pTHatMax = {pthat_max_gev:.6g}" if pthat_max_gev else "PhaseSpace:pTHatMax = -1.",
        f"PartonLevel:MPI = {'on' if mpi else 'off'}",
        f"HadronLevel:Hadronize = {'on' if hadronization else 'off'}",
        *SHOWER_SETTINGS[shower],
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        *extra,
    ]
    return lines


def pythia_seed(master_seed: int, sample: str, shard_index: int) -> int:
    """The Pythia seed of one shard, derived from (master seed, sample, shard index) alone,
    so a shard's events do not depend on which worker makes it or in which order."""
    import zlib

    import numpy as np

    ss = np.random.SeedSequence([master_seed % 2**63, zlib.crc32(sample.encode()), shard_index])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % PYTHIA_SEED_MAX) + 1
