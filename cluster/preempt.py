"""Preemption and walltime: a signal asks a worker to stop at the next safe point.

Slurm warns a job before its time limit or a preemption (``#SBATCH --signal=B:USR2@300``);
the batch script (``slurm/train.sbatch``) traps the signal and passes USR2 on to its srun'd
workers, which were told by ``JETSCAN_STOP_SIGNALS=USR2`` (set by the script) to catch it.
:func:`from_env` installs the handlers and returns a :class:`StopFlag`: calling it says whether a
stop was asked. The training loop asks after each epoch's checkpoint (the only point from
which a resumed run reaches the weights of an uninterrupted one) and returns early; the
command then exits with :data:`PREEMPTED_EXIT`, and the script requeues the job
(``scontrol requeue``), which resumes from that checkpoint.
"""

from __future__ import annotations

import os
import signal

from jetscan.core.errors import RunnerError

__all__ = ["ENV", "PREEMPTED_EXIT", "StopFlag", "from_env"]

ENV = "JETSCAN_STOP_SIGNALS"
#: the exit status of a worker that stopped on request with a fresh checkpoint (EX_TEMPFAIL)
PREEMPTED_EXIT = 75


class StopFlag:
    """Set by a signal handler; ``flag()`` is True once one of ``signals`` arrived."""

    def __init__(self, signals: tuple[int, ...] = ()):
        self.signals = signals
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - the signal module's signature
        self.received = signum

    def __call__(self) -> bool:
        return self.received is not None


def _signal(name: str) -> int:
    name = name.strip().upper()
    try:
        return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))
    except AttributeError:
        raise RunnerError(f"{ENV}: {name!r} is not a signal name (e.g. USR2, TERM)") from None


def from_env(environ: dict | None = None) -> StopFlag | None:
    """A :class:`StopFlag` catching the signals named in ``JETSCAN_STOP_SIGNALS`` (comma
    separated, e.g. ``USR2,TERM``); None when the variable is unset (signals keep their default)."""
    env = os.environ if environ is None else environ
    names = [n for n in env.get(ENV, "").split(",") if n.strip()]
    if not names:
        return None
    return StopFlag(tuple(_signal(n) for n in names))
