"""Bounded retry of transient queue-storage errors.

A sweep's queue lives in an Optuna storage: a journal file on one machine, or PostgreSQL across machines. Storages
hiccup: PostgreSQL restarts and drops every connection ("server closed the connection unexpectedly", "the
database system is starting up", connection refused), a SQLite file is locked, a journal file on a network disk
answers EAGAIN/EIO/ESTALE for a moment. Without help every coordinator and worker would die on the first such
error and a sweep of hours would end because of a ten-second restart. `with_retries(storage)` wraps a storage so
that each call retries such *transient* errors with capped exponential backoff and jitter, for a bounded time
(`budget_s`, 120 s by default, counted from the first failure of that call). Bounded, because a server that is
really gone must end the sweep with one clear line, `StorageUnavailable`: which storage (its URL with the password
hidden), for how long, and the last error. Everything else (`UpdateFinishedTrialError`, `KeyError` for an unknown
study or trial, `DuplicatedStudyError`, `ValueError`, programming errors) is an answer, not an outage: it passes
through at once, unchanged.

One line goes to stderr when calls start retrying and one when the storage answers again; nothing per attempt.

Writes that are not idempotent get special care, because an error can be *ambiguous*: a connection that drops
during COMMIT (or a journal append whose read-back fails) may have applied the write although the caller saw an
error, and a blind retry would apply it twice.

- `set_trial_state_values`: a retry after our write did land is refused by the storage (`False` for a claim, i.e.
  WAITING -> RUNNING, whose trial is already RUNNING; `UpdateFinishedTrialError` for a trial already finished). On
  such a refusal after a failed attempt, the trial is read back: it is ours if it is in the target state, with our
  values, and its transition time (`datetime_start` for RUNNING, `datetime_complete` for a finished state, both
  written by the writing process's own clock, i.e. ours) lies within one of our failed attempts. Then the call
  returns True; otherwise the refusal stands (another process claimed or finished the trial). The residual risk is
  a rival process whose transition lands within one of our failed attempts, by its clock: we would then believe a
  claim ours that is not, and the item may run twice; the queue's commit point (RUNNING -> COMPLETE, refused once
  finished) still records one result. The opposite error, an orphan RUNNING trial nobody runs, cannot happen this
  way: our own committed write always lies within our own attempt.
- `create_new_trial`: every trial created through the wrapper carries a unique token in its system attributes
  (`CREATE_TOKEN`). After a failed attempt, the study's trials are searched for the token before trying again, so
  a retry never creates a second trial. (Optuna's RDBStorage also retries trial creation by itself a few times,
  inside one call; a duplicate created there is beyond the wrapper's reach.)
- `create_new_study`: an unnamed study gets its unique name here (as Optuna would name it), so a retry that meets
  `DuplicatedStudyError` for that name knows the study is ours and returns its id. For a *named* study the error
  is passed through: it cannot tell our earlier attempt from a concurrent creator, and callers already treat it as
  "the study exists, load it" (Optuna's `load_if_exists`, reslab's `open_study`), whereas a false "created it"
  would make two coordinators each believe they made the study.
- `delete_study`: a retry that meets `KeyError` after a failed attempt means the study is gone, as asked.
- Attribute, parameter and intermediate-value writes, and heartbeats, overwrite: retrying them is harmless.
"""

from __future__ import annotations

import copy
import datetime as dt
import errno
import math
import random
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, TypeVar

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from reslab.redact import MASK, password_of, redact, redact_uri

T = TypeVar("T")

DEFAULT_BUDGET_S = 120.0
#: System attribute that makes a trial created through the wrapper findable after an ambiguous failure.
CREATE_TOKEN = "reslab.create_token"


class StorageUnavailable(RuntimeError):
    """The queue's storage kept failing with transient errors for the whole retry budget."""

    def __init__(
        self, storage: str, waited_s: float, attempts: int, last_error: BaseException, password: str | None = None
    ) -> None:
        self.storage, self.waited_s, self.attempts = storage, waited_s, attempts
        self.last_error: BaseException | None = last_error
        super().__init__(
            f"queue storage {storage} was unavailable for {waited_s:.{0 if waited_s >= 10 else 1}f} s "
            f"({attempts} attempts); "
            f"last error: {describe_error(last_error, password)}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes; the last error stays behind
        return _rebuild_unavailable, (str(self), self.storage, self.waited_s, self.attempts)


def _rebuild_unavailable(message: str, storage: str, waited_s: float, attempts: int) -> StorageUnavailable:
    exc = StorageUnavailable.__new__(StorageUnavailable)
    RuntimeError.__init__(exc, message)
    exc.storage, exc.waited_s, exc.attempts, exc.last_error = storage, waited_s, attempts, None
    return exc


# -- classification -----------------------------------------------------------------------------------------------

try:
    import sqlalchemy.exc as _sa_exc
except ImportError:  # pragma: no cover - optuna's RDBStorage needs it, so it is there whenever an RDB is
    _sa_exc = None  # type: ignore[assignment]
try:
    import psycopg as _psycopg
except ImportError:  # pragma: no cover - only PostgreSQL needs it
    _psycopg = None  # type: ignore[assignment]

# Answers, not outages: the storage worked and said no (or the caller is wrong). They stop the search for a
# transient cause, so that e.g. a KeyError raised while handling a dropped connection is still a KeyError.
_ANSWERS: tuple[type[BaseException], ...] = (
    LookupError,  # KeyError: no such study / trial / parameter
    ValueError,  # bad arguments, no completed trials, an unparsable journal line
    TypeError,
    AttributeError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    UpdateFinishedTrialError,  # the trial is finished: the truth about a lost lease, never retried
    DuplicatedStudyError,
)
if _sa_exc is not None:  # constraint, SQL and data errors: the statement is wrong, not the connection
    _ANSWERS += (_sa_exc.IntegrityError, _sa_exc.ProgrammingError, _sa_exc.DataError, _sa_exc.NoSuchTableError)
if _psycopg is not None:
    _ANSWERS += (_psycopg.IntegrityError, _psycopg.ProgrammingError, _psycopg.DataError, _psycopg.NotSupportedError)

# OSError numbers of a moment's trouble: a busy or stale network file (NFS answers EAGAIN, EIO, ESTALE, ENOLCK
# while a server fails over), an interrupted call, a socket that was refused, reset or timed out. Not ENOENT,
# EACCES, ENOSPC, EROFS: those need a person, and waiting only hides them.
_TRANSIENT_ERRNOS = {
    getattr(errno, name)
    for name in (
        "EAGAIN", "EWOULDBLOCK", "EINTR", "EIO", "ESTALE", "EBUSY", "ETIMEDOUT", "ENOLCK", "EDEADLK", "ENOBUFS",
        "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH",
        "ENETDOWN", "ENETRESET",
    )
    if hasattr(errno, name)
}  # fmt: skip

# PostgreSQL SQLSTATEs (or their two-letter classes) worth another try: connection exceptions (08), insufficient
# resources such as too many connections (53), admin/crash shutdown and "cannot connect now" while the server
# starts or stops (57P01-57P03), a cancelled statement (57014, e.g. a lock or statement timeout), serialization
# failures and deadlocks (40001, 40P01: the transaction is rolled back and meant to be retried), a lock not
# available (55P03), an I/O error on the server (58000, 58030).
_TRANSIENT_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "57014", "40001", "40P01", "55P03", "58000", "58030")

# Phrases of the same outages as drivers word them (PostgreSQL via psycopg, SQLite, MySQL), for errors that carry
# no SQLSTATE: most connection failures are reported by the client library, not by a server.
_TRANSIENT_PHRASES = (
    "server closed the connection unexpectedly",
    "connection refused",
    "could not connect to server",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "terminating connection due to administrator command",
    "terminating connection because of crash of another server process",
    "terminating connection due to unexpected postmaster exit",
    "connection reset",
    "connection timed out",
    "timeout expired",
    "broken pipe",
    "no route to host",
    "network is unreachable",
    "could not translate host name",
    "temporary failure in name resolution",
    "ssl syscall error",
    "ssl connection has been closed unexpectedly",
    "eof detected",
    "consuming input failed",
    "could not receive data from server",
    "could not send data to server",
    "lost synchronization with server",
    "the connection is closed",
    "connection already closed",
    "connection is lost",
    "can't reconnect until invalid transaction is rolled back",
    "too many clients already",
    "remaining connection slots are reserved",
    "database is locked",  # SQLite: another writer holds the file
    "database table is locked",
    "database schema has changed",
    "disk i/o error",  # SQLite on a network disk that blinked
    "lost connection to mysql server",
    "mysql server has gone away",
    "can't connect to mysql server",
    "deadlock",
    "lock wait timeout",
    "could not serialize access",
)

# The same error types carry permanent failures too: a wrong password or database name does not heal by waiting.
_PERMANENT_PHRASES = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
    "access denied",
    "no such table",
    "no such column",
    "readonly database",
    "read-only",
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a moment's outage of the storage, worth retrying (see `transient_cause`)."""
    return transient_cause(exc) is not None


def transient_cause(exc: BaseException) -> BaseException | None:
    """The link of `exc`'s chain that makes it transient, or None.

    The chain is `exc`, its `__cause__` and `__context__` (Optuna's RDBStorage re-raises SQLAlchemy's errors as
    `StorageInternalError` from them; a journal lock that fails while handling an OSError raises from within it),
    and SQLAlchemy's `.orig` (the driver's own error). `exc` itself being an answer (`_ANSWERS`: KeyError,
    UpdateFinishedTrialError, ...) settles it at once: an answer is never retried, whatever it was raised from."""
    if isinstance(exc, (*_ANSWERS, StorageUnavailable)):
        return None
    for link in _links(exc):
        if isinstance(link, StorageUnavailable):
            return None  # a nested wrapper already gave up: do not wait a second budget
        if _is_transient_link(link):
            return link
    return None


def _links(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the errors it came from, nearest first; an answer below `exc` ends its branch."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        link = todo.pop(0)
        if id(link) in seen or (link is not exc and isinstance(link, _ANSWERS)):
            continue
        seen.add(id(link))
        yield link
        todo.extend(x for x in (link.__cause__, link.__context__, getattr(link, "orig", None)) if x is not None)


def _message(exc: BaseException) -> str:
    """The error's own words: SQLAlchemy appends the statement and its parameters (which may quote any user text,
    such as a failure reason that says "permission denied"), so they are cut off."""
    return str(exc).split("[SQL:", 1)[0].split("(Background on this error", 1)[0].lower()


def _is_transient_link(exc: BaseException) -> bool:
    message = _message(exc)
    if any(p in message for p in _PERMANENT_PHRASES):
        return False
    # SQLAlchemy saw the connection die under it (it then discards the connection: a new one may work).
    if _sa_exc is not None:
        if isinstance(exc, _sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        # The pool's own troubles: a disconnect found at checkout, or no connection free in time.
        if isinstance(exc, (_sa_exc.DisconnectionError, _sa_exc.TimeoutError)):
            return True
    # A PostgreSQL error with a SQLSTATE says what it is (psycopg 3: .sqlstate; psycopg2: .pgcode).
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate.startswith(_TRANSIENT_SQLSTATES)
    # psycopg's OperationalError without a SQLSTATE comes from the client side: the connection failed or broke.
    if _psycopg is not None and isinstance(exc, _psycopg.OperationalError):
        return True
    # SQLite says busy, locked, I/O error or protocol (a lock race) by primary result code.
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    if code is not None and code & 0xFF in (5, 6, 10, 15):  # SQLITE_BUSY, _LOCKED, _IOERR, _PROTOCOL
        return True
    # A file or socket that failed for a moment.
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(exc, TimeoutError):  # socket timeouts and the like, with or without an errno
        return True
    # Otherwise only database and OS errors are read for the phrases: any other type that happens to mention
    # "deadlock" or "broken pipe" is not an outage of the storage.
    db_error = (sqlite3.Error, OSError)
    if _sa_exc is not None:
        db_error += (_sa_exc.DBAPIError, _sa_exc.InvalidRequestError)
    if _psycopg is not None:
        db_error += (_psycopg.Error,)
    return isinstance(exc, db_error) and any(p in message for p in _TRANSIENT_PHRASES)


# -- naming the storage without its password ------------------------------------------------------------------------


def _url_of(storage: Any) -> str | None:
    """The URL an RDB storage (or Optuna's cache around one) connects to, or a journal's Redis URL."""
    for candidate in (storage, getattr(storage, "_backend", None)):
        url = getattr(candidate, "url", None) or getattr(candidate, "_url", None)
        if isinstance(url, str):
            return url
    return None


def describe_storage(storage: BaseStorage) -> str:
    """How messages name `storage`: its URL without the password, a journal's file path, or its type."""
    if isinstance(storage, RetryingStorage):
        return storage.name
    url = _url_of(storage)
    if url is not None:
        return redact_uri(url)
    path = getattr(getattr(storage, "_backend", None), "_file_path", None)
    if isinstance(path, str):
        return f"journal {path}"
    if isinstance(storage, optuna.storages.InMemoryStorage):
        return "in-memory"
    return type(storage).__name__


def describe_error(exc: BaseException, password: str | None = None) -> str:
    """One line: the deepest transient link of `exc` (the driver's or the OS's own words, not Optuna's generic
    wrapper nor SQLAlchemy's follow-up errors), its type and first line, with any password masked."""
    transient = [link for link in _links(exc) if _is_transient_link(link)] if is_transient(exc) else []
    link = transient[-1] if transient else exc
    words = str(link).split("[SQL:", 1)[0].split("(Background on this error", 1)[0]
    lines = [line.strip() for line in words.splitlines() if line.strip()]
    package = type(link).__module__.split(".")[0]
    kind = type(link).__name__ if package in ("builtins", "__main__") else f"{package}.{type(link).__name__}"
    text = f"{kind}: {lines[0]}" if lines else kind
    if password:
        text = text.replace(password, MASK)
    text = redact(text)
    return text if len(text) <= 300 else text[:297] + "..."


# -- the wrapper ------------------------------------------------------------------------------------------------------


def with_retries(storage: BaseStorage, budget_s: float = DEFAULT_BUDGET_S, **options: Any) -> BaseStorage:
    """`storage` behind a `RetryingStorage` (a `RetryingHeartbeatStorage` when `storage` has Optuna's heartbeat
    interface, as RDBStorage does), so Optuna's `fail_stale_trials` and heartbeat threads see the same interface.
    A storage that is already wrapped is re-wrapped around its inner storage. `options`: see `RetryingStorage`."""
    if isinstance(storage, RetryingStorage):
        storage = storage.inner
    return RetryingStorage(storage, budget_s, **options)


class RetryingStorage(BaseStorage):
    """An Optuna storage that forwards every call to `inner`, retrying transient errors (see the module docstring).

    budget_s: how long one call may keep retrying, from its first failure, before `StorageUnavailable`.
    base_delay_s, max_delay_s: the first pause between attempts and the cap of its doubling (each pause is jittered
        to 50-100 %, so that many workers do not hammer a restarting server in step).
    name: how messages name the storage (default: `describe_storage(inner)`, the URL without its password).
    log: where the two lines of an outage go (default: stderr). sleep, clock: injectable for tests.

    Constructing one around a storage with Optuna's heartbeat interface gives a `RetryingHeartbeatStorage`.
    Attributes that are not part of Optuna's storage interface (an RDBStorage's `url`, `heartbeat_interval`...) are
    read from `inner`, without retries."""

    def __new__(cls, inner: BaseStorage | None = None, *args: Any, **kwargs: Any) -> RetryingStorage:
        if cls is RetryingStorage and isinstance(inner, BaseHeartbeat):
            cls = RetryingHeartbeatStorage
        return super().__new__(cls)

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
        if isinstance(inner, RetryingStorage):
            inner = inner.inner
        if not isinstance(inner, BaseStorage):
            raise TypeError(f"RetryingStorage wraps an Optuna BaseStorage, not {type(inner).__name__}")
        if isinstance(self, BaseHeartbeat) and not isinstance(inner, BaseHeartbeat):
            raise TypeError(f"{type(inner).__name__} has no heartbeat: wrap it with with_retries()")
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
        self._init_outage()

    def _init_outage(self) -> None:
        self._outage_lock = threading.Lock()
        self._retrying_calls = 0

    def unwrap(self) -> BaseStorage:
        """The wrapped storage."""
        return self.inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, budget_s={self.budget_s:g})"

    # Pickling and deep copies (Optuna itself does neither to a storage, but multiprocessing and users may): the
    # wrapped storage decides for itself (RDBStorage and JournalStorage reconnect); the outage state starts afresh.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_outage_lock"], state["_retrying_calls"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_outage()

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the wrapper lacks. Never for dunders, nor before `inner` is set (unpickling).
        if name.startswith("__") or "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.inner, name)

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

    # -- studies ----------------------------------------------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        # An unnamed study is named here, as Optuna names it, so that a retry can recognise it as ours.
        name = study_name or f"{DEFAULT_STUDY_NAME_PREFIX}{uuid.uuid4()}"

        def attempt(retrying: bool) -> int:
            try:
                return self.inner.create_new_study(directions, name)
            except DuplicatedStudyError:
                if retrying and study_name is None:
                    return self.inner.get_study_id_from_name(name)
                raise

        return self._retry("create_new_study", attempt)

    def delete_study(self, study_id: int) -> None:
        def attempt(retrying: bool) -> None:
            try:
                self.inner.delete_study(study_id)
            except KeyError:
                if not retrying:
                    raise  # else: our failed attempt deleted it

        self._retry("delete_study", attempt)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_user_attr", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("set_study_system_attr", study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call("get_study_id_from_name", study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call("get_study_name_from_id", study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call("get_study_directions", study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_user_attrs", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call("get_study_system_attrs", study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call("get_all_studies")

    # -- trials -----------------------------------------------------------------------------------------------------
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

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        self._call("set_trial_param", trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._call("get_trial_id_from_study_id_trial_number", study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._call("get_trial_number_from_id", trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._call("get_trial_param", trial_id, param_name)

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

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._call("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_user_attr", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("set_trial_system_attr", trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call("get_trial", trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._call("get_all_trials", study_id, deepcopy=deepcopy, states=states)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._call("get_n_trials", study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call("get_best_trial", study_id)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._call("get_trial_params", trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call("get_trial_user_attrs", trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._call("get_trial_system_attrs", trial_id)

    def remove_session(self) -> None:
        self._call("remove_session")

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._call("check_trial_is_updatable", trial_id, trial_state)


class RetryingHeartbeatStorage(RetryingStorage, BaseHeartbeat):
    """A `RetryingStorage` around a storage with Optuna's heartbeat (RDBStorage): Optuna's `fail_stale_trials`
    and heartbeat threads check `isinstance(storage, BaseHeartbeat)`, so the wrapper is one exactly when the
    wrapped storage is. Heartbeats and the stale-trial query are retried like any other call."""

    def record_heartbeat(self, trial_id: int) -> None:
        self._call("record_heartbeat", trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._call("_get_stale_trial_ids", study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()  # type: ignore[attr-defined]

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        inner: Any = self.inner
        if hasattr(inner, "get_heartbeat_stale_trial_callback"):
            return inner.get_heartbeat_stale_trial_callback()
        return inner.get_failed_trial_callback()  # Optuna before 4.9

    def get_failed_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.get_heartbeat_stale_trial_callback()


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
