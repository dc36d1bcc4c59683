"""A child process that must not outlive the process that started it.

A sweep's multi-device cell trains in a process of its own, and DDP starts further ranks from that one. If its
worker is killed (kill -9, the OOM killer, a machine's coordinator gone), the queue soon gives the cell to another
worker; a cell process that kept training would then produce a second result for it. On Linux the kernel ends the
child the moment its parent dies (prctl PR_SET_PDEATHSIG); elsewhere a thread watches the parent pid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None, poll_s: float = 1.0) -> None:
    """Be killed (SIGKILL) when the parent process dies. `expected_parent` closes the race of a parent that died
    before this was called: then this process ends at once."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        except OSError:
            _watch(parent, poll_s)
    else:
        _watch(parent, poll_s)
    if (expected_parent is not None and parent != expected_parent) or os.getppid() != parent:
        os._exit(137)  # the parent died before the lifeline was in place


def _watch(parent: int, poll_s: float) -> None:
    def watch() -> None:
        while True:
            threading.Event().wait(poll_s)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, name="reslab-lifeline", daemon=True).start()
