"""The sweep's queue: one Optuna study whose trials are the work items (a cell, or a cell's tuning slot).

Why not Optuna's GridSampler: with several workers it re-runs grid points once all have started (FACTS.md), and a
FAILed grid trial never comes back. Here every item is enqueued as a WAITING trial and claimed by the atomic
WAITING -> RUNNING transition both the journal and the RDB storages provide, so each runs once:
- a claim is a lease: the worker records host, pid and a heartbeat; a RUNNING item whose worker is gone (pid dead
  on this host, or heartbeat older than the grace period) is failed as *lost* and enqueued again. On RDB storages
  Optuna's own heartbeat (`heartbeat_interval`, `grace_period`, `fail_stale_trials`) does the same across machines;
- two coordinators that enqueue the same item at once (many machines starting together) are resolved at claim
  time: the live trial with the lowest number runs the item, the other is PRUNED as a duplicate;
- an item that FAILed with a reason (an exception, NaN loss, an interrupt) is retried by the next `reslab sweep`,
  not within the same one; a *lost* item is retried at once (at most `MAX_LOST` times per coordinator run).
"""

from __future__ import annotations

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
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat_interval & co.

CELL, SLOT = "reslab.cell", "reslab.slot"
HOST, PID, PID_START, BEAT = "reslab.host", "reslab.pid", "reslab.pid_start", "reslab.heartbeat"
FAILURE, LOST, DUPLICATE_OF, RUN_ID = "reslab.failure", "reslab.lost", "reslab.duplicate_of", "reslab.mlflow_run_id"
RECOVERED = "reslab.recovered_from"
SWEEP_ID, PARENT_RUN = "reslab.sweep_id", "reslab.parent_run_id"
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


def open_storage(url: str, heartbeat_s: float = 5.0, grace_s: float = 60.0, create: bool = True) -> BaseStorage:
    """A journal file (one machine or a shared disk) or an RDB (PostgreSQL across machines, with Optuna's heartbeat).
    An unreachable database is one clear error."""
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
                raise QueueError(f"cannot open sweep storage {_redact(url)}: {cause}") from None
        raise QueueError(f"cannot create the tables of sweep storage {_redact(url)}: concurrent creators kept racing")
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


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
    """Where one item stands: done (COMPLETE), running, waiting, failed (with reason), or missing."""

    state: str
    trial: FrozenTrial | None = None

    @property
    def reason(self) -> str:
        if self.trial is None:
            return ""
        return str(self.trial.user_attrs.get(FAILURE) or self.trial.user_attrs.get(LOST) or "worker lost")


def status(items: Iterable[Item], grouped: dict[Item, list[FrozenTrial]]) -> dict[Item, ItemStatus]:
    out = {}
    for item in items:
        trials = grouped.get(item, [])
        by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
        if by_state[TrialState.COMPLETE]:
            out[item] = ItemStatus("done", by_state[TrialState.COMPLETE][0])
        elif by_state[TrialState.RUNNING]:
            out[item] = ItemStatus("running", by_state[TrialState.RUNNING][0])
        elif by_state[TrialState.WAITING]:
            out[item] = ItemStatus("waiting", by_state[TrialState.WAITING][0])
        elif by_state[TrialState.FAIL]:
            out[item] = ItemStatus("failed", by_state[TrialState.FAIL][-1])
        else:
            out[item] = ItemStatus("missing")
    return out


# -- leases ------------------------------------------------------------------------------------------------------------


def _pid_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def lease_lost(trial: FrozenTrial, grace_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone, or None while its lease holds."""
    attrs = trial.user_attrs
    if attrs.get(HOST) == node_name() and PID in attrs:
        started = _pid_start(int(attrs[PID]))
        if started is None or abs(started - float(attrs.get(PID_START, started))) > 1.0:
            return f"worker pid {attrs[PID]} on {attrs[HOST]} is gone"
        return None
    beat = attrs.get(BEAT)
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    now = time.time() if now is None else now
    if beat is not None and now - float(beat) > grace_s:
        return f"no heartbeat from {attrs.get(HOST, 'its worker')} for {now - float(beat):.0f} s"
    return None


class Heartbeat:
    """Renews a claimed trial's lease every `interval_s` in a daemon thread (Optuna's heartbeat on RDB, a user attr
    on the journal), and ends this worker process if the process that started it has died (so a killed sweep
    leaves no orphans; its trials are then found lost)."""

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
            if isinstance(self.storage, RDBStorage):
                self.storage.record_heartbeat(trial_id)
            self.storage.set_trial_user_attr(trial_id, BEAT, time.time())
        except Exception:
            pass  # the trial may have just finished; the next beat is for the next trial

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._parent is not None and os.getppid() != self._parent:
                os._exit(3)  # the coordinator is gone: stop working for it
            self._beat()

    def stop(self) -> None:
        self._stop.set()


# -- the queue --------------------------------------------------------------------------------------------------------


class SweepQueue:
    """The study of one sweep, seen as a queue of items."""

    def __init__(self, storage: BaseStorage, name: str, create: bool = True) -> None:
        self.storage = storage
        self.name = name
        self.study = open_study(storage, name, create)
        self.study_id = storage.get_study_id_from_name(name)

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
    def reconcile(
        self,
        items: list[Item],
        *,
        retry_failed: bool,
        grace_s: float,
        on_lost: Callable[[FrozenTrial, str], None] | None = None,
        lost_counts: dict[Item, int] | None = None,
        recover: Callable[[FrozenTrial], tuple[float, dict[str, Any]] | None] | None = None,
    ) -> dict[Item, ItemStatus]:
        """Fail lost RUNNING trials, then enqueue every item that has no live trial: missing items always, lost
        ones (up to MAX_LOST times per `lost_counts`), failed ones when `retry_failed`. Before an item is run
        again, `recover` may return (value, attrs) of a result its last trial did produce (a worker killed after
        its run finished, before it told the queue): the item is then completed with it, not trained twice.
        Returns the statuses."""
        running = {t._trial_id: t for t in self.trials((TrialState.RUNNING,))}
        if isinstance(self.storage, RDBStorage):
            optuna.storages.fail_stale_trials(self.study)  # Optuna's heartbeat, across machines
            for t in self.trials((TrialState.FAIL,)):
                if t._trial_id in running and on_lost is not None:
                    on_lost(t, "no heartbeat within the grace period")
                running.pop(t._trial_id, None)
        for t in running.values():
            why = lease_lost(t, grace_s)
            if why is None:
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, LOST, why)
                self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except Exception:
                continue  # failed by someone else first
            if on_lost is not None:
                on_lost(t, why)
        grouped = group_by_item(self.trials())
        lost_counts = lost_counts if lost_counts is not None else {}
        for item in items:
            trials = grouped.get(item, [])
            if any(t.state in LIVE for t in trials):
                continue
            if trials:
                if FAILURE not in trials[-1].user_attrs:  # lost, not failed
                    if lost_counts.get(item, 0) >= MAX_LOST:
                        continue
                    lost_counts[item] = lost_counts.get(item, 0) + 1
                elif not retry_failed:
                    continue
                found = recover(trials[-1]) if recover is not None else None
                if found is not None:
                    value, attrs = found
                    attrs = {**attrs, CELL: item[0], SLOT: item[1], RECOVERED: trials[-1].number}
                    self.study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
                    continue
            self.study.enqueue_trial({}, user_attrs={CELL: item[0], SLOT: item[1]})
        return self.status(items)

    # -- the worker's side ---------------------------------------------------------------------------------------
    def claim(self) -> FrozenTrial | None:
        """Take the oldest WAITING item for this process, or None if there is none."""
        for t in sorted(self.trials((TrialState.WAITING,)), key=lambda t: t.number):
            item = item_of(t)
            if item is None:
                continue
            try:
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                    continue
            except Exception:
                continue  # finished or taken in the meantime
            older = [p for p in self.trials(LIVE) if item_of(p) == item and p.number < t.number]
            if older:  # enqueued twice by two coordinators: the oldest live trial runs the item
                self.storage.set_trial_user_attr(t._trial_id, DUPLICATE_OF, older[0].number)
                self.storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
                continue
            pid = os.getpid()
            lease = {HOST: node_name(), PID: pid, PID_START: _pid_start(pid), BEAT: time.time()}
            for key, value in lease.items():
                self.storage.set_trial_user_attr(t._trial_id, key, value)
            return self.storage.get_trial(t._trial_id)
        return None

    def set_attrs(self, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial._trial_id, key, value)

    def complete(self, trial: FrozenTrial, value: float, attrs: dict[str, Any]) -> None:
        self.set_attrs(trial, attrs)
        self.study.tell(trial.number, value)

    def fail(self, trial: FrozenTrial, reason: str, attrs: dict[str, Any] | None = None) -> None:
        """FAIL with a reason: the next `reslab sweep` retries it, this one does not."""
        self.set_attrs(trial, {**(attrs or {}), FAILURE: reason[:2000]})
        self.study.tell(trial.number, state=TrialState.FAIL)
