"""The sweep's queue: one Optuna study whose trials are the work items (a cell, or a cell's tuning slot).

Why not Optuna's GridSampler: with several workers it re-runs grid points once all have started (measured: in 6 of
6 runs with 2 workers), and a FAILed grid trial never comes back. Here every item is enqueued as a WAITING trial and
claimed by the atomic WAITING -> RUNNING transition both the journal and the RDB storages provide, so each runs once:
- a claim is a lease: the worker records host, pid and a heartbeat; a RUNNING item whose worker is gone is failed as
  *lost* and enqueued again. No lease is judged by comparing clocks of two machines: on this host a dead pid says
  it; on RDB storages Optuna's own heartbeat (`heartbeat_interval`, `grace_period`, `fail_stale_trials`) compares
  the database's clock with itself; on the journal a heartbeat that has not *changed* for the grace period, timed
  on the checker's own monotonic clock while it could read the storage, says it (`LeaseJudge`);
- the commit point of an item is its trial's RUNNING -> COMPLETE transition, which both storages refuse
  (`UpdateFinishedTrialError`) once another process has failed the trial as lost: a worker whose lease ended while
  it was paused or cut off learns it there and records nothing (its MLflow run ends KILLED, tagged superseded), so
  an item never gets two results. MLflow runs are marked FINISHED only after that transition succeeded;
- two coordinators that enqueue the same item at once (many machines starting together) are resolved at claim
  time: the live trial with the lowest number (or one already COMPLETE) runs the item, the other is PRUNED;
- an item that FAILed with a reason (an exception, an interrupt) is retried by the next `reslab sweep`,
  not within the same one; a *lost* item is retried at once (at most `MAX_LOST` times per coordinator run).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from reslab.redact import redact, redact_uri
from reslab.sweep.retry import with_retries

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat_interval & co.

CELL, SLOT = "reslab.cell", "reslab.slot"
HOST, PID, PID_START, BEAT = "reslab.host", "reslab.pid", "reslab.pid_start", "reslab.heartbeat"
FAILURE, LOST, DUPLICATE_OF, RUN_ID = "reslab.failure", "reslab.lost", "reslab.duplicate_of", "reslab.mlflow_run_id"
STALE = "reslab.stale"
SWEEP_ID, PARENT_RUN = "reslab.sweep_id", "reslab.parent_run_id"
PRUNED, RECIPE = "reslab.pruned", "reslab.recipe"
MAX_LOST = 3
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


class QueueError(RuntimeError):
    """The queue's storage cannot be used: the message says which and what to do."""


Item = tuple[str, int]  # (cell key, slot)


def item_of(trial: FrozenTrial) -> Item | None:
    cell = trial.user_attrs.get(CELL)
    return (cell, int(trial.user_attrs.get(SLOT, 0))) if cell else None


def is_rdb(url: str) -> bool:
    return "://" in url


def node_name() -> str:
    """The machine a lease names: $RESLAB_NODE (drills simulate several machines on one), else the hostname."""
    return os.environ.get("RESLAB_NODE") or socket.gethostname()


def open_storage(
    url: str, heartbeat_s: float = 5.0, grace_s: float = 60.0, create: bool = True, retry_s: float = 120.0
) -> BaseStorage:
    """A journal file (one machine or a shared disk) or an RDB (PostgreSQL across machines, with Optuna's heartbeat),
    whose transient errors are retried for `retry_s` (see `reslab.sweep.retry`). A database that is unreachable
    when it is opened is one clear error at once."""
    return with_retries(_open_storage(url, heartbeat_s, grace_s, create), budget_s=retry_s)


def _open_storage(url: str, heartbeat_s: float, grace_s: float, create: bool) -> BaseStorage:
    if is_rdb(url):
        for attempt in range(3):
            try:
                return RDBStorage(
                    url,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=max(1, round(heartbeat_s)),
                    grace_period=max(2, round(grace_s)),
                    skip_table_creation=not create,
                )
            except Exception as exc:  # sqlalchemy's OperationalError and friends
                cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                if "already exists" in cause or "duplicate" in cause.lower():  # machines creating tables at once
                    time.sleep(0.5 + attempt)
                    continue
                raise QueueError(f"cannot open sweep storage {redact_uri(url)}: {redact(cause)}") from None
        raise QueueError(f"cannot create the tables of sweep storage {redact_uri(url)}: concurrent creators raced")
    from optuna.storages.journal import JournalFileOpenLock

    from reslab.sweep.journal import RepairingJournalBackend

    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(RepairingJournalBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def study_exists(storage: BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def open_study(storage: BaseStorage, name: str, create: bool = True) -> optuna.Study:
    """The study `name`, created by whoever comes first (a concurrent creator's study is loaded instead). Its
    creator gives it a random SWEEP_ID: the identity of this incarnation of the queue, which MLflow parents carry."""
    if study_exists(storage, name) or not create:
        return optuna.load_study(study_name=name, storage=storage)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr(SWEEP_ID, uuid.uuid4().hex)
    return study


def group_by_item(trials: Iterable[FrozenTrial]) -> dict[Item, list[FrozenTrial]]:
    out: dict[Item, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        item = item_of(t)
        if item is not None:
            out[item].append(t)
    for group in out.values():
        group.sort(key=lambda t: t.number)
    return out


@dataclass
class ItemStatus:
    """Where one item stands: done (COMPLETE), running, waiting, failed (with reason), or missing; and how many
    trials have run it (retries after lost leases or failures included)."""

    state: str
    trial: FrozenTrial | None = None
    attempts: int = 0

    @property
    def reason(self) -> str:
        if self.trial is None:
            return ""
        return str(self.trial.user_attrs.get(FAILURE) or self.trial.user_attrs.get(LOST) or "worker lost")

    def lease(self, now: float | None = None) -> str:
        """'host pid 123, 42 s' for a running item (the age by its start time as recorded), else ''."""
        if self.state != "running" or self.trial is None:
            return ""
        attrs = self.trial.user_attrs
        owner = f"{attrs.get(HOST, '?')} pid {attrs.get(PID, '?')}"
        start = self.trial.datetime_start
        if start is None:
            return owner
        age = (now if now is not None else time.time()) - start.timestamp()
        return f"{owner}, {max(age, 0):.0f} s"


def status(items: Iterable[Item], grouped: dict[Item, list[FrozenTrial]]) -> dict[Item, ItemStatus]:
    out = {}
    for item in items:
        trials = [t for t in grouped.get(item, []) if counts_as_attempt(t)]
        by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
        started = sum(1 for t in trials if t.state != TrialState.WAITING)
        if by_state[TrialState.COMPLETE]:
            out[item] = ItemStatus("done", by_state[TrialState.COMPLETE][0], started)
        elif by_state[TrialState.RUNNING]:
            out[item] = ItemStatus("running", by_state[TrialState.RUNNING][0], started)
        elif by_state[TrialState.WAITING]:
            out[item] = ItemStatus("waiting", by_state[TrialState.WAITING][0], started)
        elif by_state[TrialState.FAIL]:
            out[item] = ItemStatus("failed", by_state[TrialState.FAIL][-1], started)
        else:
            out[item] = ItemStatus("missing", None, started)
    return out


# -- leases ------------------------------------------------------------------------------------------------------------


def _pid_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def local_pid_gone(trial: FrozenTrial) -> str | None:
    """Why a trial leased on *this* node has no worker any more (its pid is dead or reused), or None while it runs
    or when the lease is another node's: a fact of this machine, no clock involved."""
    attrs = trial.user_attrs
    if attrs.get(HOST) != node_name() or PID not in attrs:
        return None
    started = _pid_start(int(attrs[PID]))
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

    def lost(self, trial: FrozenTrial) -> str | None:
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


def wall_clock() -> float:
    """The time a heartbeat names: only ever compared with itself (see LeaseJudge). RESLAB_CLOCK_OFFSET_S shifts it,
    so the fault drills can run a node whose clock is off."""
    return time.time() + float(os.environ.get("RESLAB_CLOCK_OFFSET_S") or 0.0)


class Heartbeat:
    """Renews a claimed trial's lease every `interval_s` in a daemon thread (Optuna's heartbeat on RDB, a user attr
    on the journal), and ends this worker process if the process that started it has died (so a killed sweep
    leaves no orphans; its trials are then found lost). A beat for a trial that has just finished, or that someone
    else failed as lost, is simply dropped: the worker learns of a lost lease at its commit."""

    def __init__(self, storage: BaseStorage, interval_s: float, watch_parent: bool = True) -> None:
        self.storage = storage
        self.interval_s = interval_s
        self.trial_id: int | None = None
        self._parent = os.getppid() if watch_parent else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reslab-heartbeat", daemon=True)
        self._thread.start()

    def hold(self, trial_id: int | None) -> None:
        self.trial_id = trial_id
        if trial_id is not None:
            self._beat()

    def _beat(self) -> None:
        trial_id = self.trial_id
        if trial_id is None:
            return
        try:
            if hasattr(self.storage, "record_heartbeat"):
                self.storage.record_heartbeat(trial_id)
            self.storage.set_trial_user_attr(trial_id, BEAT, wall_clock())
        except Exception:
            pass  # finished or failed meanwhile, or the storage is briefly away: the next beat tries again

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._parent is not None and os.getppid() != self._parent:
                os._exit(3)  # the coordinator is gone: stop working for it
            self._beat()

    def stop(self) -> None:
        self._stop.set()


# -- the queue --------------------------------------------------------------------------------------------------------


def counts_as_attempt(trial: FrozenTrial) -> bool:
    """Trials that ran (or may run) the item: not a duplicate enqueue pruned at claim, not a stale grid item."""
    return DUPLICATE_OF not in trial.user_attrs and STALE not in trial.user_attrs


def commit(storage: BaseStorage, trial_id: int, value: float, attrs: dict[str, Any]) -> bool:
    """The commit point of an item: its attributes, then RUNNING -> COMPLETE. False when the storage refuses
    because another process already failed the trial as lost (this worker's lease ended: its result is not the
    item's). Used by workers and by multi-device cell processes alike."""
    try:
        for key, value_ in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value_)
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [value])
    except UpdateFinishedTrialError:
        return False
    return True


def set_attrs_if_running(storage: BaseStorage, trial_id: int, attrs: dict[str, Any]) -> bool:
    """Write attributes to a trial this worker holds; False (nothing raised) if the trial has already finished."""
    try:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
    except UpdateFinishedTrialError:
        return False
    return True


class SweepQueue:
    """The study of one sweep, seen as a queue of items."""

    def __init__(self, storage: BaseStorage, name: str, create: bool = True) -> None:
        self.storage = storage
        self.name = name
        self.study = open_study(storage, name, create)
        self.study_id = storage.get_study_id_from_name(name)
        self.leases: LeaseJudge | None = None
        self.holding: int | None = None  # the trial this process last took (an interrupt may come mid-claim)

    def sweep_id(self, wait_s: float = 10.0) -> str:
        """This queue's SWEEP_ID. A coordinator that lost the race to create the study waits for the winner to
        write it; a study from before SWEEP_IDs existed gets one now."""
        deadline = time.time() + wait_s
        while True:
            found = self.storage.get_study_user_attrs(self.study_id).get(SWEEP_ID)
            if found:
                return str(found)
            if time.time() > deadline:
                self.study.set_user_attr(SWEEP_ID, uuid.uuid4().hex)
                deadline = time.time() + wait_s  # read back whichever id was written last
            time.sleep(0.2)

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def status(self, items: Iterable[Item]) -> dict[Item, ItemStatus]:
        return status(items, group_by_item(self.trials()))

    # -- the coordinator's side ----------------------------------------------------------------------------------
    def _judge(self, grace_s: float) -> LeaseJudge:
        if self.leases is None:
            self.leases = LeaseJudge(grace_s)
        self.leases.grace_s = grace_s
        return self.leases

    def find_lost(self, grace_s: float) -> list[tuple[FrozenTrial, str]]:
        """RUNNING trials whose worker is gone, with why; they are not failed here."""
        judge = self._judge(grace_s)
        started = judge.read_started()
        try:
            running = self.trials((TrialState.RUNNING,))
        except Exception:
            judge.read_failed()
            raise
        judge.read_done(started)
        judge.forget(t._trial_id for t in running)
        lost = []
        for t in running:
            why = local_pid_gone(t)
            if why is None and not is_rdb_storage(self.storage):
                why = judge.lost(t)
            if why is not None:
                lost.append((t, why))
        return lost

    def fail_lost(self, trial: FrozenTrial, why: str) -> bool:
        """Fail a RUNNING trial as lost; False if it finished first (its worker committed, or another judge won)."""
        try:
            self.storage.set_trial_user_attr(trial._trial_id, LOST, why)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False
        return True

    def reconcile(
        self,
        items: list[Item],
        *,
        retry_failed: bool,
        grace_s: float,
        on_lost: Callable[[FrozenTrial, str], None] | None = None,
        lost_counts: dict[Item, int] | None = None,
        lost_reasons: dict[int, str] | None = None,
    ) -> dict[Item, ItemStatus]:
        """Fail lost RUNNING trials, then enqueue every item that has no live trial: missing items always, lost
        ones (up to MAX_LOST times per `lost_counts`), failed ones when `retry_failed`. `lost_reasons` may name
        why a given worker pid's trials are lost better than a judge can (the coordinator saw it die of a
        signal). Returns the statuses."""
        if is_rdb_storage(self.storage):
            before = {t._trial_id for t in self.trials((TrialState.RUNNING,))}
            optuna.storages.fail_stale_trials(self.study)  # Optuna's heartbeat, judged on the database's clock
            for t in self.trials((TrialState.FAIL,)):
                if t._trial_id in before and on_lost is not None:
                    on_lost(t, "no heartbeat within the grace period")
        for t, why in self.find_lost(grace_s):
            why = (lost_reasons or {}).get(int(t.user_attrs.get(PID, -1)), why)
            if self.fail_lost(t, why) and on_lost is not None:
                on_lost(t, why)
        grouped = group_by_item(self.trials())
        lost_counts = lost_counts if lost_counts is not None else {}
        for item in items:
            trials = [t for t in grouped.get(item, []) if counts_as_attempt(t)]
            if any(t.state in LIVE for t in trials):
                continue
            if trials:
                if FAILURE not in trials[-1].user_attrs:  # lost, not failed
                    if lost_counts.get(item, 0) >= MAX_LOST:
                        continue
                    lost_counts[item] = lost_counts.get(item, 0) + 1
                elif not retry_failed:
                    continue
            self.study.enqueue_trial({}, user_attrs={CELL: item[0], SLOT: item[1]})
        return self.status(items)

    def prune_stale(self, items: Iterable[Item]) -> list[Item]:
        """WAITING trials of items that are not in `items` any more (the grid shrank since they were enqueued):
        PRUNED as stale, so no worker runs them. Returns the items pruned."""
        known, pruned = set(items), []
        for t in self.trials((TrialState.WAITING,)):
            item = item_of(t)
            if item is None or item in known:
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, STALE, "not in the sweep's grid any more")
                self.storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
            except UpdateFinishedTrialError:
                continue
            pruned.append(item)
        return pruned

    # -- the worker's side ---------------------------------------------------------------------------------------
    def claim(self, items: Iterable[Item] | None = None) -> FrozenTrial | None:
        """Take the oldest WAITING item for this process, or None if there is none. Items not in `items` (a grid
        that shrank while old trials still waited) are pruned as stale instead of run."""
        known = set(items) if items is not None else None
        for t in sorted(self.trials((TrialState.WAITING,)), key=lambda t: t.number):
            item = item_of(t)
            if item is None:
                continue
            try:
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    continue
            except (UpdateFinishedTrialError, KeyError):
                continue  # finished or taken in the meantime
            self.holding = t._trial_id
            if known is not None and item not in known:
                self._end_claimed(t, STALE, "not in the sweep's grid any more")
                continue
            others = [p for p in self.trials(LIVE) if item_of(p) == item and p._trial_id != t._trial_id]
            rival = [p for p in others if p.state == TrialState.COMPLETE or p.number < t.number]
            if rival:  # enqueued twice by two coordinators (or done meanwhile): one trial runs the item
                self._end_claimed(t, DUPLICATE_OF, min(p.number for p in rival))
                continue
            pid = os.getpid()
            lease = {HOST: node_name(), PID: pid, PID_START: _pid_start(pid), BEAT: wall_clock()}
            if not set_attrs_if_running(self.storage, t._trial_id, lease):
                continue
            return self.storage.get_trial(t._trial_id)
        return None

    def _end_claimed(self, trial: FrozenTrial, key: str, value: Any) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):
            self.storage.set_trial_user_attr(trial._trial_id, key, value)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED)

    def attempt(self, trial: FrozenTrial) -> int:
        """Which attempt at its item `trial` is: 1 for the first trial that ran it, 2 after one lost or failed..."""
        item = item_of(trial)
        earlier = [t for t in self.trials() if item_of(t) == item and t.number < trial.number and counts_as_attempt(t)]
        return len(earlier) + 1

    def set_attrs(self, trial: FrozenTrial, attrs: dict[str, Any]) -> bool:
        """Attributes of a trial this worker holds; False if it finished meanwhile (the lease was lost)."""
        return set_attrs_if_running(self.storage, trial._trial_id, attrs)

    def complete(self, trial: FrozenTrial, value: float, attrs: dict[str, Any]) -> bool:
        """Commit the item's result (see `commit`); False if this worker's lease was lost before it could."""
        return commit(self.storage, trial._trial_id, value, attrs)

    def fail(self, trial: FrozenTrial, reason: str, attrs: dict[str, Any] | None = None) -> bool:
        """FAIL with a reason: the next `reslab sweep` retries it, this one does not. False if the trial had
        already finished (failed as lost by another process)."""
        try:
            for key, value in {**(attrs or {}), FAILURE: redact(reason)[:2000]}.items():
                self.storage.set_trial_user_attr(trial._trial_id, key, value)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False
        return True


def is_rdb_storage(storage: BaseStorage) -> bool:
    """Whether the storage (or the one a retrying wrapper holds) is an RDB, whose heartbeat Optuna judges."""
    inner = getattr(storage, "inner", storage)
    return isinstance(inner, RDBStorage)
