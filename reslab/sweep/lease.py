"""A worker's hold on a queue item, and how others judge that it is gone, without comparing two machines' clocks.

A claim is a lease: the worker records host, pid and a heartbeat it rewrites every few seconds (`Heartbeat`). On
the worker's own node a dead pid says the lease is lost (`local_pid_gone`); elsewhere a heartbeat that has not
*changed* for the grace period, timed on the checker's own monotonic clock while it could read the storage, says
it (`LeaseJudge`). RDB storages add Optuna's heartbeat, which the database judges on its own clock.

Free of Optuna: a trial here is anything with `user_attrs` and `_trial_id` (Optuna's FrozenTrial in practice).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

HOST, PID, PID_START, BEAT = "reslab.host", "reslab.pid", "reslab.pid_start", "reslab.heartbeat"


def node_name() -> str:
    """The machine a lease names: $RESLAB_NODE (drills simulate several machines on one), else the hostname."""
    return os.environ.get("RESLAB_NODE") or socket.gethostname()


def wall_clock() -> float:
    """The time a heartbeat names: only ever compared with itself (see LeaseJudge). RESLAB_CLOCK_OFFSET_S shifts it,
    so the fault drills can run a node whose clock is off."""
    return time.time() + float(os.environ.get("RESLAB_CLOCK_OFFSET_S") or 0.0)


def pid_start(pid: int) -> float | None:
    """When process `pid` started (a reused pid starts later), or None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def lease_attrs() -> dict[str, Any]:
    """What a claim records about its holder: this node, this process (and when it started), a first beat."""
    pid = os.getpid()
    return {HOST: node_name(), PID: pid, PID_START: pid_start(pid), BEAT: wall_clock()}


#: What a claim defers: Ctrl-C, and the signal a scheduler stops a job with.
DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM wait until the block ends, then are delivered to their own handlers as usual. A
    claim is a storage write followed by the worker noting what it now holds: interrupted between the two, the item
    would stay RUNNING with a holder that never learned of it. Only the main thread can set a signal handler;
    elsewhere the block runs as is, and so does a signal that is ignored or left to its default action (which ends
    the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = [s for s in DEFERRED if callable(signal.getsignal(s))]
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for signum in pending:
        signal.raise_signal(signum)


def local_pid_gone(trial: Any) -> str | None:
    """Why a trial leased on *this* node has no worker any more (its pid is dead or reused), or None while it runs
    or when the lease is another node's: a fact of this machine, no clock involved."""
    attrs = trial.user_attrs
    if attrs.get(HOST) != node_name() or PID not in attrs:
        return None
    started = pid_start(int(attrs[PID]))
    if started is None or abs(started - float(attrs.get(PID_START, started))) > 1.0:
        return f"worker pid {attrs[PID]} on {attrs[HOST]} is gone"
    return None


class LeaseJudge:
    """Decides when a journal trial's lease is lost without trusting any machine's wall clock.

    A worker's heartbeat is a value it rewrites every few seconds; what counts is that the value *changes*, not what
    time it names (the worker's clock may be minutes off). The judge remembers, per trial, the beat value it last
    saw and when (on its own monotonic clock) it first saw it; the lease is lost once the value stayed the same for
    `grace_s` during which the judge itself could read the storage. A failed or slow read, or a long pause between
    reads (a judge that was busy, or a storage outage that also kept the workers from beating), restarts the
    window: when the storage comes back, every lease first gets `grace_s` to show a new beat.
    """

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self._seen: dict[int, tuple[Any, float]] = {}
        self._readable_since: float | None = None
        self._last_read: float | None = None

    @property
    def _max_gap(self) -> float:
        return self.grace_s / 2

    def read_started(self) -> float:
        return self.clock()

    def read_failed(self) -> None:
        self._readable_since = self._last_read = None

    def read_done(self, started: float) -> None:
        """A read of every trial that began at `started` succeeded: the storage is known readable since then."""
        now = self.clock()
        if now - started > self._max_gap or self._last_read is None or started - self._last_read > self._max_gap:
            self._readable_since = started if now - started <= self._max_gap else now
        self._last_read = now

    def lost(self, trial: Any) -> str | None:
        """Why `trial`'s lease is lost, or None while it holds (or while this judge cannot tell yet)."""
        now = self.clock()
        beat = trial.user_attrs.get(BEAT)
        seen = self._seen.get(trial._trial_id)
        if seen is None or seen[0] != beat:
            self._seen[trial._trial_id] = (beat, now)
            return None
        since = max(seen[1], self._readable_since if self._readable_since is not None else now)
        if now - since < self.grace_s:
            return None
        host = trial.user_attrs.get(HOST, "its worker")
        return f"no heartbeat from {host} for {now - since:.0f} s (judged on {node_name()})"

    def forget(self, keep: Iterable[int]) -> None:
        keep = set(keep)
        self._seen = {k: v for k, v in self._seen.items() if k in keep}


class Renewable(Protocol):
    def renew(self) -> None: ...


class Heartbeat:
    """Renews the lease it holds every `interval_s` in a daemon thread, and ends this worker process if the process
    that started it has died (so a killed sweep leaves no orphans; its items are then found lost). A beat for an
    item that has just finished, or that someone else failed as lost, is simply dropped: the worker learns of a
    lost lease at its commit."""

    def __init__(self, interval_s: float, watch_parent: bool = True) -> None:
        self.interval_s = interval_s
        self.lease: Renewable | None = None
        self._parent = os.getppid() if watch_parent else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reslab-heartbeat", daemon=True)
        self._thread.start()

    def hold(self, lease: Renewable | None) -> None:
        self.lease = lease
        self._beat()

    def _beat(self) -> None:
        lease = self.lease
        if lease is None:
            return
        # Finished or failed meanwhile, or the storage is briefly away: the next beat tries again.
        with contextlib.suppress(Exception):
            lease.renew()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._parent is not None and os.getppid() != self._parent:
                os._exit(3)  # the coordinator is gone: stop working for it
            self._beat()

    def stop(self) -> None:
        self._stop.set()
