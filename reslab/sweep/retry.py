"""Bounded retry of transient queue-storage errors.

Without help every coordinator and worker would die on the first error of a restarting PostgreSQL or a blinking
network disk, and a sweep of hours would end because of a ten-second restart. `with_retries(storage)` wraps a
storage so that each call retries *transient* errors (`reslab.sweep.storage_errors`) with capped exponential
backoff and jitter, for a bounded time (`budget_s`, 120 s by default, counted from the first failure of that
call). Bounded, because a server that is really gone must end the sweep with one clear line, `StorageUnavailable`:
which storage (its URL with the password hidden), for how long, and the last error. Answers (`KeyError`,
`UpdateFinishedTrialError`, ...) pass through at once, unchanged.

One line goes to stderr when calls start retrying and one when the storage answers again; nothing per attempt.

Writes that are not idempotent get special care, because an error can be *ambiguous*: a connection that drops
during COMMIT (or a journal append whose read-back fails) may have applied the write although the caller saw an
error, and a blind retry would apply it twice. The queue makes two such writes:

- `set_trial_state_values` (claim, commit, fail): a retry after our write did land is refused by the storage
  (`False` for a claim, i.e. WAITING -> RUNNING, whose trial is already RUNNING; `UpdateFinishedTrialError` for a
  trial already finished). On such a refusal after a failed attempt, the trial is read back: it is ours if it is
  in the target state, with our values, and its transition time (`datetime_start` for RUNNING, `datetime_complete`
  for a finished state, both written by the writing process's own clock, i.e. ours) lies within one of our failed
  attempts. Then the call returns True; otherwise the refusal stands (another process claimed or finished the
  trial). The residual risk is a rival process whose transition lands within one of our failed attempts, by its
  clock: we would then believe a claim ours that is not, and the item may run twice; the queue's commit point
  (RUNNING -> COMPLETE, refused once finished) still records one result. The opposite error, an orphan RUNNING
  trial nobody runs, cannot happen this way: our own committed write always lies within our own attempt.
- `create_new_trial` (enqueue, and the tuner's ask): every trial created through the wrapper carries a unique
  token in its system attributes (`CREATE_TOKEN`). After a failed attempt, the study's trials are searched for the
  token before trying again, so a retry never creates a second trial. (Optuna's RDBStorage also retries trial
  creation by itself a few times, inside one call; a duplicate created there is beyond the wrapper's reach.)

Every other call the queue makes (and Optuna makes for it) reads, or overwrites an attribute, a parameter, an
intermediate value or a heartbeat: retrying it is harmless, so it is forwarded through the same loop. The queue
always names its studies, so study creation needs no care: a `DuplicatedStudyError` after an ambiguous failure
reads as "the study exists, load it", which is what `reslab.sweep.queue` does with it.
"""

from __future__ import annotations

import abc
import copy
import datetime as dt
import math
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from reslab.redact import password_of
from reslab.sweep.storage_errors import StorageUnavailable, _url_of, describe_error, describe_storage, is_transient

T = TypeVar("T")

DEFAULT_BUDGET_S = 120.0
#: System attribute that makes a trial created through the wrapper findable after an ambiguous failure.
CREATE_TOKEN = "reslab.create_token"


def with_retries(storage: BaseStorage, budget_s: float = DEFAULT_BUDGET_S, **options: Any) -> BaseStorage:
    """`storage` behind a `RetryingStorage` (a `RetryingHeartbeatStorage` when `storage` has Optuna's heartbeat
    interface, as RDBStorage does), so Optuna's `fail_stale_trials` sees the same interface. `options`: see
    `RetryingStorage`."""
    cls = RetryingHeartbeatStorage if isinstance(storage, BaseHeartbeat) else RetryingStorage
    return cls(storage, budget_s, **options)


class RetryingStorage(BaseStorage):
    """An Optuna storage that forwards every call to `inner`, retrying transient errors (see the module docstring).

    budget_s: how long one call may keep retrying, from its first failure, before `StorageUnavailable`.
    base_delay_s, max_delay_s: the first pause between attempts and the cap of its doubling (each pause is jittered
        to 50-100 %, so that many workers do not hammer a restarting server in step).
    name: how messages name the storage (default: `describe_storage(inner)`, the URL without its password).
    log: where the two lines of an outage go (default: stderr). sleep, clock: injectable for tests."""

    def __init__(
        self,
        inner: BaseStorage,
        budget_s: float = DEFAULT_BUDGET_S,
        *,
        base_delay_s: float = 0.2,
        max_delay_s: float = 5.0,
        name: str | None = None,
        log: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_s < 0 or base_delay_s <= 0 or max_delay_s < base_delay_s:
            raise ValueError("need budget_s >= 0 and 0 < base_delay_s <= max_delay_s")
        self.inner = inner
        self.budget_s = float(budget_s)
        self.base_delay_s = float(base_delay_s)
        self.max_delay_s = float(max_delay_s)
        self.name = name or describe_storage(inner)
        self._password = password_of(_url_of(inner))
        self._log = log
        self._sleep = sleep
        self._clock = clock
        self._random = random.Random()
        self._outage_lock = threading.Lock()
        self._retrying_calls = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, budget_s={self.budget_s:g})"

    # -- the retry loop ---------------------------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        if self._log is not None:
            self._log(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def _retry(self, op: str, attempt: Callable[[bool], T]) -> T:
        """`attempt(retrying)` until it returns or raises a non-transient error; `retrying` says whether an earlier
        attempt of this call failed (so may or may not have been applied)."""
        first_failure: float | None = None
        failures = 0
        answered = False  # the storage gave an answer (a result, or a refusal such as KeyError)
        try:
            while True:
                try:
                    result = attempt(first_failure is not None)
                except Exception as exc:
                    if not is_transient(exc):
                        answered = True
                        raise
                    now = self._clock()
                    if first_failure is None:
                        first_failure = now
                        self._outage_began(op, exc)
                    failures += 1
                    waited = now - first_failure
                    if waited >= self.budget_s:
                        raise StorageUnavailable(self.name, waited, failures, exc, self._password) from exc
                    pause = min(self.max_delay_s, self.base_delay_s * 2 ** min(failures - 1, 30))
                    self._sleep(min(pause * self._random.uniform(0.5, 1.0), self.budget_s - waited))
                    continue
                answered = True
                return result
        finally:
            if first_failure is not None:
                self._outage_ended(self._clock() - first_failure, failures, announce=answered)

    def _outage_began(self, op: str, exc: BaseException) -> None:
        with self._outage_lock:
            self._retrying_calls += 1
            first = self._retrying_calls == 1
        if first:
            self._say(
                f"queue storage {self.name}: {describe_error(exc, self._password)}; "
                f"retrying ({op}) for up to {self.budget_s:g} s"
            )

    def _outage_ended(self, waited: float, failures: int, announce: bool) -> None:
        with self._outage_lock:
            self._retrying_calls -= 1
            last = self._retrying_calls == 0
        if last and announce:
            self._say(f"queue storage {self.name}: answering again after {waited:.1f} s ({failures} failed attempts)")

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.inner, op)
        return self._retry(op, lambda _retrying: method(*args, **kwargs))

    # -- the two writes a blind retry could apply twice --------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        token = uuid.uuid4().hex
        template = _tagged(template_trial, token)

        def attempt(retrying: bool) -> int:
            if retrying:  # did a failed attempt create it after all?
                for trial in reversed(self.inner.get_all_trials(study_id, deepcopy=False)):
                    if trial.system_attrs.get(CREATE_TOKEN) == token:
                        return trial._trial_id
            return self.inner.create_new_trial(study_id, template)

        return self._retry("create_new_trial", attempt)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        failed: list[tuple[dt.datetime, dt.datetime]] = []  # our failed attempts, by this machine's clock

        def attempt(retrying: bool) -> bool:
            started = dt.datetime.now()
            try:
                done = self.inner.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if failed and self._landed(trial_id, state, values, failed):
                    return True
                raise
            except Exception:
                failed.append((started, dt.datetime.now()))
                raise
            if not done and failed and self._landed(trial_id, state, values, failed):
                return True
            return done

        return self._retry("set_trial_state_values", attempt)

    def _landed(
        self,
        trial_id: int,
        state: TrialState,
        values: Sequence[float] | None,
        failed: list[tuple[dt.datetime, dt.datetime]],
    ) -> bool:
        """Whether one of our failed attempts did apply `state` (and `values`) to the trial (see the module
        docstring). A transient error while reading it back is retried by the caller's loop."""
        trial = self.inner.get_trial(trial_id)
        if trial.state != state or (values is not None and not _same_values(trial.values, values)):
            return False
        when = trial.datetime_start if state == TrialState.RUNNING else trial.datetime_complete
        if when is None:
            return False
        if when.tzinfo is not None:  # Optuna's storages keep naive local times, as datetime.now() gives
            when = when.astimezone().replace(tzinfo=None)
        slack = dt.timedelta(seconds=1) if when.microsecond == 0 else dt.timedelta(0)  # databases that keep seconds
        return any(start - slack <= when <= end + slack for start, end in failed)


class RetryingHeartbeatStorage(RetryingStorage, BaseHeartbeat):
    """A `RetryingStorage` around a storage with Optuna's heartbeat (RDBStorage): Optuna's `fail_stale_trials`
    checks `isinstance(storage, BaseHeartbeat)`, so the wrapper is one exactly when the wrapped storage is.
    Heartbeats and the stale-trial query are retried like any other call."""

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()  # type: ignore[attr-defined]


def _forward(op: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(op, *args, **kwargs)

    method.__name__ = op
    return method


def _forward_all(cls: type, base: type) -> None:
    """Every abstract method of `base` that `cls` does not define itself goes through the retry loop."""
    for op in sorted(base.__abstractmethods__ - set(vars(cls))):
        setattr(cls, op, _forward(op))
    abc.update_abstractmethods(cls)


_forward_all(RetryingStorage, BaseStorage)
_forward_all(RetryingHeartbeatStorage, BaseHeartbeat)


def _tagged(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """`template` (or, for None, the RUNNING trial a storage creates by default) with our creation token added."""
    if template is None:
        return FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=dt.datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={CREATE_TOKEN: token},
            intermediate_values={},
            trial_id=-1,
        )
    tagged = copy.copy(template)
    tagged.system_attrs = {**template.system_attrs, CREATE_TOKEN: token}
    return tagged


def _same_values(stored: Sequence[float] | None, ours: Sequence[float]) -> bool:
    if stored is None or len(stored) != len(ours):
        return False
    return all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(stored, ours, strict=True))
