"""How a reslab process is stopped from outside, beside Ctrl-C: SIGTERM.

A batch scheduler sends SIGTERM at a job's time limit or on preemption (SLURM, then SIGKILL after its KillWait), and
so does Kubernetes on eviction. Raised like Ctrl-C (`Terminated` is a KeyboardInterrupt), so every path that records
an interrupted run runs; unlike Ctrl-C, a sweep's cell is then given back at once for any other worker to claim,
not left for the next `reslab sweep`.
"""

from __future__ import annotations

import signal

#: The exit status after SIGTERM, as a shell reports a process that SIGTERM ended (128 + 15).
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (see the module docstring)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def raise_terminated(signum: int, _frame: object) -> None:
    """The SIGTERM handler of a process that gives its work back (`Terminated`)."""
    raise Terminated(signum)


def termination(exc: BaseException) -> Terminated | None:
    """The SIGTERM behind `exc`, if it is one: Lightning turns an interrupt inside `fit` into SystemExit(1) (the
    interrupt is its context), and raises its own SIGTERMException when only its handler saw the signal."""
    for e in (exc, exc.__context__):
        if isinstance(e, Terminated):
            return e
        if type(e).__name__ == "SIGTERMException":  # lightning.pytorch.utilities.exceptions, not imported here
            return Terminated()
    return None
