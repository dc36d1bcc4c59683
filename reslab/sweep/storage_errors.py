"""Which errors of a queue storage are a moment's outage (worth retrying) and which are answers, and how one line
names the storage and its error without a password.

A sweep's queue lives in an Optuna storage: a journal file on one machine, or PostgreSQL across machines. Storages
hiccup: PostgreSQL restarts and drops every connection ("server closed the connection unexpectedly", "the
database system is starting up", connection refused), a SQLite file is locked, a journal file on a network disk
answers EAGAIN/EIO/ESTALE for a moment. `is_transient` tells such an outage from an answer
(`UpdateFinishedTrialError`, `KeyError` for an unknown study or trial, `ValueError`, programming errors): an
answer is the storage working and saying no, and is never retried. `reslab.sweep.retry` retries the outages.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage

from reslab.redact import MASK, redact, redact_uri


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
