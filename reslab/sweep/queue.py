"""The sweep's queue: one Optuna study whose trials are the work items (a cell, or a cell's tuning slot).

Why not Optuna's GridSampler: with several workers it re-runs grid points once all have started (measured: in 6 of
6 runs with 2 workers), and a FAILed grid trial never comes back. Here every item is enqueued as a WAITING trial and
claimed by the atomic WAITING -> RUNNING transition both the journal and the RDB storages provide, so each runs once:
- a claim is a lease: the worker records host, pid and a heartbeat; a RUNNING item whose worker is gone is failed as
  *lost* and enqueued again. No lease is judged by comparing clocks of two machines: on this host a dead pid says
  it; on RDB storages Optuna's own heartbeat (`heartbeat_interval`, `grace_period`, `fail_stale_trials`) compares
  the database's clock with itself; on the journal a heartbeat that has not *changed* for the grace period, timed
  on the checker's own monotonic clock while it could read the storage, says it (`LeaseJudge`, which also judges
  an RDB claim whose worker died before it wrote its lease: Optuna never calls a trial without a heartbeat stale);
- the commit point of an item is its trial's RUNNING -> COMPLETE transition, which both storages refuse
  (`UpdateFinishedTrialError`) once another process has failed the trial as lost: a worker whose lease ended while
  it was paused or cut off learns it there and records nothing (its MLflow run ends KILLED, tagged superseded), so
  an item never gets two results. MLflow runs are marked FINISHED only after that transition succeeded;
- two coordinators that enqueue the same item at once (many machines starting together) are resolved at claim
  time: the live trial with the lowest number (or one already COMPLETE) runs the item, the other is PRUNED;
- an item that FAILed with a reason (an exception, an interrupt) is retried by the next `reslab sweep`,
  not within the same one; a *lost* item is retried at once (at most `MAX_LOST` times per coordinator run).

The coordinator and the workers see none of this: they hold a `CellQueue` built from the sweep's config, which takes
and returns cells and speaks a few verbs (`claim` a `Lease`, `renew` it, `commit` or `fail` it, `status`; and on
the coordinator's side `settle` lost and missing items, check the recipe). Optuna, the storage's retries, the
journal's repair and the leases' bookkeeping stay in this module and the ones it imports.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from reslab.redact import redact, redact_uri
from reslab.sweep.lease import (
    BEAT,
    HOST,
    PID,
    Heartbeat,
    LeaseJudge,
    ctrl_c_deferred,
    lease_attrs,
    local_pid_gone,
    wall_clock,
)
from reslab.sweep.lease import PID_START as PID_START  # read by tests and drills through this module
from reslab.sweep.lease import node_name as node_name
from reslab.sweep.lease import pid_start as pid_start
from reslab.sweep.retry import with_retries
from reslab.sweep.storage_errors import StorageUnavailable

if TYPE_CHECKING:
    from reslab.sweep.config import SweepConfig
    from reslab.sweep.grid import Cell

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat_interval & co.

#: The names the coordinator and the workers may use (a test holds them to it).
__all__ = [
    "CellQueue", "Item", "ItemStatus", "Lease", "QueueError", "StorageUnavailable", "is_rdb", "items_of", "run_name",
]  # fmt: skip

CELL, SLOT = "reslab.cell", "reslab.slot"
FAILURE, LOST, DUPLICATE_OF, RUN_ID = "reslab.failure", "reslab.lost", "reslab.duplicate_of", "reslab.mlflow_run_id"
STALE = "reslab.stale"
SWEEP_ID, PARENT_RUN = "reslab.sweep_id", "reslab.parent_run_id"
PRUNED, RECIPE = "reslab.pruned", "reslab.recipe"
MAX_LOST = 3
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


class QueueError(RuntimeError):
    """The queue's storage cannot be used: the message says which and what to do."""


Item = tuple[str, int]  # (cell key, slot): a cell, or one slot of a cell's tuning budget


def items_of(config: SweepConfig) -> tuple[dict[str, Cell], list[Item]]:
    """The sweep's cells by key, and its items: one per cell, or `trials_per_cell` per cell when it tunes."""
    cells = {c.key: c for c in config.cells()}
    slots = config.tune.trials_per_cell if config.tune else 1
    return cells, [(key, s) for key in cells for s in range(slots)]


def run_name(config: SweepConfig, cell: Cell, slot: int) -> str:
    """An item's run name: the cell's, with the tuning slot when the sweep tunes (each cell then has several)."""
    return cell.run_name(slot if config.tune is not None else None)


def is_rdb(url: str) -> bool:
    """Whether the queue's URL names a database server (else it is a journal file)."""
    return "://" in url


# -- the interface: cells in, cells out ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemStatus:
    """Where one item stands: done (COMPLETE), running, waiting, failed (with reason), or missing; how many trials
    have run it (retries after lost leases or failures included); the result attributes of the trial that says so
    (its value, metrics, size, wall time) and, while it runs, who holds it since when."""

    state: str
    attempts: int = 0
    reason: str = ""
    value: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    holder: str = ""
    started: float | None = None  # the holder's start time as recorded (a timestamp)

    @classmethod
    def of(cls, state: str, trial: FrozenTrial | None, attempts: int) -> ItemStatus:
        if trial is None:
            return cls(state, attempts)
        attrs = dict(trial.user_attrs)
        reason = str(attrs.get(FAILURE) or attrs.get(LOST) or "worker lost")
        holder = f"{attrs.get(HOST, '?')} pid {attrs.get(PID, '?')}"
        start = trial.datetime_start.timestamp() if trial.datetime_start is not None else None
        return cls(state, attempts, reason, trial.value, attrs, holder, start)

    @property
    def pruned(self) -> str | None:
        """Why the tuner pruned the item's run, if it did (the item is done all the same)."""
        return self.attrs.get(PRUNED)

    def lease(self, now: float | None = None) -> str:
        """'host pid 123, 42 s' for a running item (the age by its start time as recorded), else ''."""
        if self.state != "running":
            return ""
        if self.started is None:
            return self.holder
        age = (now if now is not None else time.time()) - self.started
        return f"{self.holder}, {max(age, 0):.0f} s"


class Lease:
    """One claimed item, held by this process until it commits, fails or loses it. Room is left for a later claim
    of several cells at once: that would hand out one lease per item."""

    def __init__(self, queue: CellQueue, trial: FrozenTrial, attempt: int) -> None:
        self._queue = queue
        self._storage = queue._storage
        self._trial_id = trial._trial_id
        self.number = trial.number
        self.key, self.slot = trial.user_attrs[CELL], int(trial.user_attrs.get(SLOT, 0))
        self.cell = queue.cells[self.key]
        self.name = queue.name_of((self.key, self.slot))
        self.attempt = attempt

    @property
    def trial_id(self) -> int:
        """The handle a process of this cell's own (a multi-device cell) reattaches with (`CellQueue.reattach`)."""
        return self._trial_id

    def renew(self) -> None:
        """A heartbeat: Optuna's on an RDB, a changing user attribute on the journal (see `LeaseJudge`)."""
        if hasattr(self._storage, "record_heartbeat"):
            self._storage.record_heartbeat(self._trial_id)
        self._storage.set_trial_user_attr(self._trial_id, BEAT, wall_clock())

    def record_run(self, run_id: str) -> bool:
        """Name the item's MLflow run; False if the lease was lost meanwhile."""
        return write_trial(self._storage, self._trial_id, {RUN_ID: run_id})

    def commit(self, value: float, attrs: dict[str, Any], *, pruned: str | None = None) -> bool:
        """The item's result (see `commit`); False if this lease was lost before it could be recorded. `pruned`:
        why the tuner stopped the run early (its last value is the result)."""
        extra = {PRUNED: pruned} if pruned is not None else {}
        return commit(self._storage, self._trial_id, value, {**attrs, **extra})

    def fail(self, reason: str, attrs: dict[str, Any] | None = None) -> bool:
        """FAIL with a reason: the next `reslab sweep` retries it, this one does not. False if it had already
        finished (failed as lost by another process)."""
        return fail(self._storage, self._trial_id, reason, attrs)

    def lose(self, why: str) -> bool:
        """Give the item back as lost (its process was killed): it runs again at once, and its MLflow run is marked
        FAILED. False if it had finished meanwhile."""
        trial = self._storage.get_trial(self._trial_id)
        if not self._queue._queue.fail_lost(trial, why):
            return False
        self._queue._lost(self._storage.get_trial(self._trial_id), why)
        return True


class CellQueue:
    """A sweep's queue of cells: what the coordinator enqueues and settles, what its workers claim and commit.

    `create`: make the study (the coordinator); a worker attaches to the one its coordinator made. `on_lost(run_id,
    why)` is told of every item found lost here, with the MLflow run it had started (or None)."""

    def __init__(
        self,
        config: SweepConfig,
        *,
        url: str | None = None,
        create: bool = True,
        on_lost: Callable[[str | None, str], None] | None = None,
        _storage: BaseStorage | None = None,
    ) -> None:
        self.config = config
        self.cells, self.items = items_of(config)
        self.url = url or config.storage_url
        sweep = config.sweep
        self._storage = _storage or open_storage(self.url, sweep.heartbeat_s, sweep.grace_s,
                                                 retry_s=sweep.storage_retry_s)  # fmt: skip
        self._create = create
        self._on_lost = on_lost
        self._lost_counts: dict[Item, int] = {}

    @cached_property
    def _queue(self) -> SweepQueue:
        """The study, opened (or created) on first use: a coordinator opens the storage first, so that an
        unreachable database is one error before anything else (a tracking store, a study) is created."""
        return SweepQueue(self._storage, self.config.name, create=self._create)

    @classmethod
    def existing(cls, config: SweepConfig, url: str | None = None) -> CellQueue | None:
        """The sweep's queue if it exists, else None; nothing is created (a dry run only looks)."""
        url = url or config.storage_url
        if not is_rdb(url) and not Path(url).exists():
            return None
        storage = open_storage(url, create=False, retry_s=config.sweep.storage_retry_s)
        if not study_exists(storage, config.name):
            return None
        return cls(config, url=url, create=False, _storage=storage)

    def name_of(self, item: Item) -> str:
        """The item's run name: the cell's, with the tuning slot when the sweep tunes."""
        return run_name(self.config, self.cells[item[0]], item[1])

    def status(self) -> dict[Item, ItemStatus]:
        return self._queue.status(self.items)

    # -- the coordinator's side ----------------------------------------------------------------------------------
    def sweep_id(self) -> str:
        """The identity of this incarnation of the queue, which the sweep's MLflow parent run carries."""
        return self._queue.sweep_id()

    @property
    def parent_run(self) -> str | None:
        """The sweep's MLflow parent run, as recorded on an earlier start."""
        return self._queue.study.user_attrs.get(PARENT_RUN)

    def set_parent_run(self, run_id: str) -> None:
        self._queue.study.set_user_attr(PARENT_RUN, run_id)

    def recorded_recipe(self, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """The recipe this queue's results come from; `recipe` is recorded (and None returned) if there is none."""
        old = self._queue.study.user_attrs.get(RECIPE)
        if old is None:
            self._queue.study.set_user_attr(RECIPE, recipe)
        return old

    def prune_stale(self) -> list[str]:
        """The keys of cells the queue holds that the grid no longer has (it shrank): their waiting trials are
        pruned as stale, so no worker runs them."""
        known = {t.user_attrs[CELL] for t in self._queue.trials() if CELL in t.user_attrs}
        self._queue.prune_stale(self.items)
        return sorted(known - set(self.cells))

    def settle(self, *, retry_failed: bool, lost_reasons: dict[int, str] | None = None) -> dict[Item, ItemStatus]:
        """Fail lost items (`on_lost` hears of each), enqueue every item without a live trial (failed ones only with
        `retry_failed`; lost ones up to MAX_LOST times per queue object), and return every item's status.
        `lost_reasons`: why a given worker pid's items are lost, when known better than a judge can say."""
        return self._queue.reconcile(self.items, retry_failed=retry_failed, grace_s=self.config.sweep.grace_s,
                                     on_lost=self._lost, lost_counts=self._lost_counts,
                                     lost_reasons=lost_reasons)  # fmt: skip

    def worker_exited(self, pid: int, reasons: dict[int, str]) -> None:
        """A worker process on this node has died: its items are lost now, with the reason `reasons` gives for
        its pid, and go back to the queue (no need to wait for a judge)."""
        if any(int(t.user_attrs.get(PID, -1)) == pid for t in self._queue.trials((TrialState.RUNNING,))):
            self.settle(retry_failed=False, lost_reasons=reasons)

    def outcomes(self) -> dict[int, tuple[str, str | None]]:
        """Per trial number (the `reslab.trial` tag of a run): 'running', 'done' or 'ended', and its MLflow run."""
        return self._queue.outcomes()

    def _lost(self, trial: FrozenTrial, why: str) -> None:
        if self._on_lost is not None:
            self._on_lost(trial.user_attrs.get(RUN_ID), why)

    # -- the worker's side ---------------------------------------------------------------------------------------
    def claim(self) -> Lease | None:
        """Take the oldest waiting item for this process, or None if there is none."""
        trial = self._queue.claim(self.items)
        return Lease(self, trial, self._queue.attempt(trial)) if trial is not None else None

    def heartbeat(self, watch_parent: bool = True) -> Heartbeat:
        """A thread that renews the lease it is given to hold (see `Heartbeat`)."""
        return Heartbeat(self.config.sweep.heartbeat_s, watch_parent)

    def interrupted(self) -> None:
        """Ctrl-C: the item this process last took (an interrupt may come mid-claim), if it still runs, is failed
        as interrupted, so the next `reslab sweep` reruns it at once."""
        held = self._queue.holding
        if held is not None:
            trial = self._storage.get_trial(held)
            if trial.state == TrialState.RUNNING:
                fail(self._storage, held, "interrupted")

    def give_back(self, why: str) -> bool:
        """SIGTERM: the item this process last took, if it still runs, is failed as lost with `why`, so any worker
        of the sweep claims it again at once (as a killed worker's item, without waiting for a judge). True if
        there was one."""
        held = self._queue.holding
        if held is None:
            return False
        trial = self._storage.get_trial(held)
        if trial.state != TrialState.RUNNING or not self._queue.fail_lost(trial, why):
            return False
        self._lost(self._storage.get_trial(held), why)
        return True

    def reattach(self, trial_id: int) -> Lease:
        """The lease a worker holds, in a process of the cell's own (a multi-device cell)."""
        trial = self._storage.get_trial(trial_id)
        return Lease(self, trial, self._queue.attempt(trial))

    def tuning_study(self, cell: Cell) -> optuna.Study:
        """The study beside the queue in which a cell's tuner samples (`reslab.sweep.tuner`)."""
        return open_study(self._storage, f"{self.config.name}.tune.{cell.key}")


# -- the storage ------------------------------------------------------------------------------------------------------


def item_of(trial: FrozenTrial) -> Item | None:
    cell = trial.user_attrs.get(CELL)
    return (cell, int(trial.user_attrs.get(SLOT, 0))) if cell else None


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


def is_rdb_storage(storage: BaseStorage) -> bool:
    """Whether the storage (or the one a retrying wrapper holds) is an RDB, whose heartbeat Optuna judges."""
    inner = getattr(storage, "inner", storage)
    return isinstance(inner, RDBStorage)


def group_by_item(trials: Iterable[FrozenTrial]) -> dict[Item, list[FrozenTrial]]:
    out: dict[Item, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        item = item_of(t)
        if item is not None:
            out[item].append(t)
    for group in out.values():
        group.sort(key=lambda t: t.number)
    return out


def counts_as_attempt(trial: FrozenTrial) -> bool:
    """Trials that ran (or may run) the item: not a duplicate enqueue pruned at claim, not a stale grid item."""
    return DUPLICATE_OF not in trial.user_attrs and STALE not in trial.user_attrs


def status(items: Iterable[Item], grouped: dict[Item, list[FrozenTrial]]) -> dict[Item, ItemStatus]:
    out = {}
    for item in items:
        trials = [t for t in grouped.get(item, []) if counts_as_attempt(t)]
        by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
        started = sum(1 for t in trials if t.state != TrialState.WAITING)
        if by_state[TrialState.COMPLETE]:
            out[item] = ItemStatus.of("done", by_state[TrialState.COMPLETE][0], started)
        elif by_state[TrialState.RUNNING]:
            out[item] = ItemStatus.of("running", by_state[TrialState.RUNNING][0], started)
        elif by_state[TrialState.WAITING]:
            out[item] = ItemStatus.of("waiting", by_state[TrialState.WAITING][0], started)
        elif by_state[TrialState.FAIL]:
            out[item] = ItemStatus.of("failed", by_state[TrialState.FAIL][-1], started)
        else:
            out[item] = ItemStatus.of("missing", None, started)
    return out


def write_trial(
    storage: BaseStorage,
    trial_id: int,
    attrs: dict[str, Any],
    state: TrialState | None = None,
    values: list[float] | None = None,
) -> bool:
    """Attributes, then (if given) a state, written to a trial this process holds. False, nothing raised, when the
    storage refuses because the trial has already finished: another process failed it as lost, so this process's
    lease ended and what it meant to write is not the item's. Also False when a WAITING -> RUNNING claim finds the
    trial taken."""
    try:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        if state is not None:
            return bool(storage.set_trial_state_values(trial_id, state, values))
    except UpdateFinishedTrialError:
        return False
    return True


def commit(storage: BaseStorage, trial_id: int, value: float, attrs: dict[str, Any]) -> bool:
    """The commit point of an item: its attributes, then RUNNING -> COMPLETE. False when the storage refuses
    because another process already failed the trial as lost (this worker's lease ended: its result is not the
    item's)."""
    return write_trial(storage, trial_id, attrs, TrialState.COMPLETE, [value])


def fail(storage: BaseStorage, trial_id: int, reason: str, attrs: dict[str, Any] | None = None) -> bool:
    """FAIL with a reason (redacted, cut to 2,000 characters); False if the trial had already finished."""
    return write_trial(storage, trial_id, {**(attrs or {}), FAILURE: redact(reason)[:2000]}, TrialState.FAIL)


class SweepQueue:
    """The study of one sweep, seen as a queue of items: the Optuna side of `CellQueue`."""

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

    def outcomes(self) -> dict[int, tuple[str, str | None]]:
        """Per trial number: 'running', 'done' (COMPLETE) or 'ended' (anything else), and its MLflow run id."""
        names = {TrialState.RUNNING: "running", TrialState.COMPLETE: "done"}
        return {t.number: (names.get(t.state, "ended"), t.user_attrs.get(RUN_ID)) for t in self.trials()}

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
        rdb = is_rdb_storage(self.storage)
        for t in running:
            why = local_pid_gone(t)
            if why is None and (not rdb or PID not in t.user_attrs):
                why = judge.lost(t)  # on an RDB: a claim whose worker died before it wrote its lease
            if why is not None:
                lost.append((t, why))
        return lost

    def fail_lost(self, trial: FrozenTrial, why: str) -> bool:
        """Fail a RUNNING trial as lost; False if it finished first (its worker committed, or another judge won)."""
        return write_trial(self.storage, trial._trial_id, {LOST: why}, TrialState.FAIL)

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
            if item is not None and item not in known and self._end(t, STALE, "not in the sweep's grid any more"):
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
                with ctrl_c_deferred():
                    if not write_trial(self.storage, t._trial_id, {}, TrialState.RUNNING):
                        continue  # finished or taken in the meantime
                    self.holding = t._trial_id
            except KeyError:
                continue
            if known is not None and item not in known:
                self._end(t, STALE, "not in the sweep's grid any more")
                continue
            others = [p for p in self.trials(LIVE) if item_of(p) == item and p._trial_id != t._trial_id]
            rival = [p for p in others if p.state == TrialState.COMPLETE or p.number < t.number]
            if rival:  # enqueued twice by two coordinators (or done meanwhile): one trial runs the item
                self._end(t, DUPLICATE_OF, min(p.number for p in rival))
                continue
            if hasattr(self.storage, "record_heartbeat"):  # Optuna judges it from here; before that, `find_lost`
                self.storage.record_heartbeat(t._trial_id)
            if not write_trial(self.storage, t._trial_id, lease_attrs()):
                continue
            return self.storage.get_trial(t._trial_id)
        return None

    def _end(self, trial: FrozenTrial, key: str, value: Any) -> bool:
        """PRUNE a trial that must not run, saying why; False if it had finished meanwhile."""
        return write_trial(self.storage, trial._trial_id, {key: value}, TrialState.PRUNED)

    def attempt(self, trial: FrozenTrial) -> int:
        """Which attempt at its item `trial` is: 1 for the first trial that ran it, 2 after one lost or failed..."""
        item = item_of(trial)
        earlier = [t for t in self.trials() if item_of(t) == item and t.number < trial.number and counts_as_attempt(t)]
        return len(earlier) + 1

    def set_attrs(self, trial: FrozenTrial, attrs: dict[str, Any]) -> bool:
        """Attributes of a trial this worker holds; False if it finished meanwhile (the lease was lost)."""
        return write_trial(self.storage, trial._trial_id, attrs)

    def complete(self, trial: FrozenTrial, value: float, attrs: dict[str, Any]) -> bool:
        """Commit the item's result (see `commit`); False if this worker's lease was lost before it could."""
        return commit(self.storage, trial._trial_id, value, attrs)

    def fail(self, trial: FrozenTrial, reason: str, attrs: dict[str, Any] | None = None) -> bool:
        """FAIL with a reason: the next `reslab sweep` retries it, this one does not. False if the trial had
        already finished (failed as lost by another process)."""
        return fail(self.storage, trial._trial_id, reason, attrs)
