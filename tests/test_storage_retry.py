"""The queue storage's bounded retry (reslab.sweep.retry): transient errors are retried and announced once, a storage
that stays away ends in one clear StorageUnavailable without its password, answers pass through at once, ambiguous
writes are not applied twice, and real Optuna studies (journal, in-memory, SQLite with heartbeats) work on top.
The drill at the end restarts a real PostgreSQL server under a loop of queue operations."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy.exc as sa_exc
from optuna.exceptions import DuplicatedStudyError, StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import TrialState

from reslab.sweep.retry import CREATE_TOKEN, RetryingHeartbeatStorage, RetryingStorage, with_retries
from reslab.sweep.storage_errors import StorageUnavailable, is_transient

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

MIN = [StudyDirection.MINIMIZE]
RetryStale = (
    getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
)
SECRET = "s3cret-pw"
URL = f"postgresql+psycopg://reslab:{SECRET}@db.example:5432/sweeps"
REDACTED = "postgresql+psycopg://reslab:***@db.example:5432/sweeps"


# -- a storage that fails on demand -------------------------------------------------------------------------------


@dataclass
class Fault:
    exc: BaseException
    applied: bool = False  # the call reaches the real storage first (an ambiguous failure: it did happen)
    meanwhile: Callable[[], None] | None = None  # what another process does before the error surfaces


class _Flaky:
    """Forwards every storage call to a real storage, raising the faults queued for a method first."""

    def __init__(self, inner: BaseStorage, url: str | None = None) -> None:
        self.inner = inner
        self.url = url  # how the wrapper names it (as it names an RDBStorage by its URL)
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.calls: Counter[str] = Counter()

    def fail(self, method: str, *faults: BaseException | Fault) -> None:
        self.faults[method].extend(f if isinstance(f, Fault) else Fault(f) for f in faults)

    def _forward(self, name: str, *args, **kwargs):
        self.calls[name] += 1
        fault = self.faults[name].pop(0) if self.faults[name] else None
        if fault is not None and not fault.applied:
            if fault.meanwhile:
                fault.meanwhile()
            raise fault.exc
        result = getattr(self.inner, name)(*args, **kwargs)
        if fault is not None:
            if fault.meanwhile:
                fault.meanwhile()
            raise fault.exc
        return result


STORAGE_METHODS = sorted(n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n)))
HEARTBEAT_METHODS = ["record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
                     "get_heartbeat_stale_trial_callback", "get_failed_trial_callback"]  # fmt: skip


def _forwarder(name: str):
    def method(self, *args, **kwargs):
        return self._forward(name, *args, **kwargs)

    return method


Flaky = type("Flaky", (_Flaky, BaseStorage), {n: _forwarder(n) for n in STORAGE_METHODS})
FlakyHeartbeat = type(
    "FlakyHeartbeat",
    (_Flaky, BaseStorage, BaseHeartbeat),
    {n: _forwarder(n) for n in STORAGE_METHODS + HEARTBEAT_METHODS},
)


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: list[Callable[[], None]] = []  # what happens while the code under test waits, once each

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.sleeps.append(s)
        self.now += s
        while self.on_sleep:
            self.on_sleep.pop(0)()


def wrap(inner: BaseStorage, **kw) -> RetryingStorage:
    clock = kw.pop("clock", None) or FakeClock()
    return with_retries(inner, **{"clock": clock, "sleep": clock.sleep, **kw})  # type: ignore[return-value]


def lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


# -- errors as drivers raise them ---------------------------------------------------------------------------------


def pg_dropped() -> Exception:
    """What Optuna's RDBStorage raises when PostgreSQL drops the connection: its wrapper, from SQLAlchemy's."""
    orig = psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")
    sa = sa_exc.OperationalError("SELECT 1", {}, orig)
    try:
        try:
            raise sa
        except sa_exc.SQLAlchemyError as e:
            raise StorageInternalError("An exception is raised during the commit.") from e
    except StorageInternalError as e:
        return e


def pg_refused() -> Exception:
    return psycopg.OperationalError(
        f'connection failed: connection to server at "db.example" (10.0.0.1), port 5432 failed: Connection refused '
        f"(dsn postgresql://reslab:{SECRET}@db.example/sweeps)"
    )


def lock_stolen_during(err: OSError) -> Exception:
    """Optuna's journal lock: acquire() fails with an OSError and its release() then raises RuntimeError."""
    try:
        try:
            raise err
        except OSError:
            raise RuntimeError("Error: did not possess lock") from None
    except RuntimeError as e:
        e.__context__ = err
        return e


def key_error_during_outage() -> Exception:
    try:
        try:
            raise pg_dropped()
        except StorageInternalError:
            raise KeyError("no such study") from None
    except KeyError as e:
        e.__context__ = pg_dropped()
        return e


TRANSIENT = {
    "pg dropped (StorageInternalError from sqlalchemy)": pg_dropped(),
    "pg refused": pg_refused(),
    "pg admin shutdown 57P01": psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    "pg starting up 57P03": psycopg.errors.lookup("57P03")("the database system is starting up"),
    "pg serialization 40001": psycopg.errors.lookup("40001")("could not serialize access"),
    "sqlalchemy invalidated": sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
    "sqlite locked": sqlite3.OperationalError("database is locked"),
    "sqlalchemy sqlite locked": sa_exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")),
    "EAGAIN": BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
    "EIO": OSError(errno.EIO, "Input/output error"),
    "ESTALE": OSError(errno.ESTALE, "Stale file handle"),
    "ENOLCK": OSError(errno.ENOLCK, "No locks available"),
    "journal lock over ESTALE": lock_stolen_during(OSError(errno.ESTALE, "Stale file handle")),
    "timeout": TimeoutError("timed out"),
    "params mention a permanent phrase": sa_exc.OperationalError(
        "UPDATE", {"value": "permission denied"}, psycopg.OperationalError("server closed the connection unexpectedly")
    ),
}
PERMANENT = {
    "UpdateFinishedTrialError": UpdateFinishedTrialError("Trial#0 has already finished"),
    "DuplicatedStudyError": DuplicatedStudyError("exists"),
    "KeyError": KeyError("no such study"),
    "KeyError raised during an outage": key_error_during_outage(),
    "ValueError": ValueError("bad"),
    "TypeError": TypeError("bug"),
    "RuntimeError": RuntimeError("Error: did not possess lock"),
    "StorageInternalError (bad data)": StorageInternalError("value too long"),
    "sqlite no such table": sqlite3.OperationalError("no such table: trials"),
    "pg wrong password": psycopg.OperationalError(
        'connection failed: connection to server at "db" port 5432 failed: FATAL:  password authentication failed'
    ),
    "pg unique violation": sa_exc.IntegrityError("INSERT", {}, psycopg.errors.lookup("23505")("duplicate key")),
    "pg syntax": psycopg.errors.lookup("42601")("syntax error"),
    "ENOENT": FileNotFoundError(errno.ENOENT, "No such file or directory"),
    "EACCES": PermissionError(errno.EACCES, "Permission denied"),
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
    "params mention a transient phrase": sa_exc.OperationalError(
        "UPDATE", {"value": "database is locked"}, sqlite3.OperationalError("no such column: x")
    ),
    "StorageUnavailable": StorageUnavailable("x", 1.0, 2, OSError(errno.EIO, "io")),
}


@pytest.mark.parametrize("exc", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_errors(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT.values(), ids=PERMANENT.keys())
def test_permanent_errors(exc: Exception) -> None:
    assert not is_transient(exc)


# -- retrying -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [TRANSIENT[k] for k in ("pg dropped (StorageInternalError from sqlalchemy)",
                                                        "sqlite locked", "journal lock over ESTALE")])  # fmt: skip
def test_retries_transient_errors_then_returns_the_result(exc: Exception, capsys: pytest.CaptureFixture) -> None:
    flaky = Flaky(InMemoryStorage(), url=URL)
    study_id = flaky.inner.create_new_study(MIN, "s")
    storage = wrap(flaky)
    flaky.fail("get_study_id_from_name", exc, exc, exc)
    assert storage.get_study_id_from_name("s") == study_id
    assert flaky.calls["get_study_id_from_name"] == 4
    err = capsys.readouterr().err
    assert len(lines(err, "retrying")) == 1, err
    assert len(lines(err, "answering again")) == 1, err
    assert len(err.strip().splitlines()) == 2, err
    assert REDACTED in err and SECRET not in err
    assert "retrying (get_study_id_from_name) for up to 120 s" in err


def test_transient_forever_ends_in_one_clear_error(capsys: pytest.CaptureFixture) -> None:
    flaky = Flaky(InMemoryStorage(), url=URL)
    clock = FakeClock()
    storage = wrap(flaky, clock=clock)
    flaky.fail("get_all_studies", *[pg_refused() for _ in range(1000)])
    with pytest.raises(StorageUnavailable) as info:
        storage.get_all_studies()
    waited = clock.now - 1000.0
    assert 120.0 <= waited <= 120.0 + 1e-6  # the last attempt comes at the end of the budget, not after it
    assert max(clock.sleeps) <= 5.0 and min(clock.sleeps) >= 0.0
    assert 0.1 <= clock.sleeps[0] <= 0.2 and max(clock.sleeps) >= 2.5  # starts small, backs off to the cap
    message = str(info.value)
    assert REDACTED in message and "unavailable for 120 s" in message
    assert "Connection refused" in message and SECRET not in message
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert info.value.attempts == flaky.calls["get_all_studies"]
    err = capsys.readouterr().err
    assert len(lines(err, "retrying")) == 1 and not lines(err, "answering again") and SECRET not in err


def test_budget_in_real_time() -> None:
    flaky = Flaky(InMemoryStorage())
    storage = with_retries(flaky, budget_s=0.3, base_delay_s=0.01, max_delay_s=0.05, log=lambda _: None)
    flaky.fail("get_all_studies", *[OSError(errno.EIO, "Input/output error") for _ in range(10_000)])
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"unavailable for 0\.\d s .*Input/output error"):
        storage.get_all_studies()
    assert 0.3 <= time.monotonic() - t0 < 2.0


def test_answers_pass_through_at_once(capsys: pytest.CaptureFixture) -> None:
    flaky = Flaky(InMemoryStorage())
    storage = wrap(flaky)
    study_id = storage.create_new_study(MIN, "s")
    trial_id = storage.create_new_trial(study_id)
    assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    flaky.calls.clear()
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [2.0])
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, "k", 1)
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("unknown")
    with pytest.raises(DuplicatedStudyError):
        storage.create_new_study(MIN, "s")
    assert flaky.calls == Counter(set_trial_state_values=1, set_trial_user_attr=1, get_study_id_from_name=1,
                                  create_new_study=1)  # fmt: skip
    for exc in (ValueError("bad"), TypeError("bug"), PERMANENT["pg wrong password"]):
        flaky.fail("get_all_studies", exc)
        with pytest.raises(type(exc)) as info:
            storage.get_all_studies()
        assert info.value is exc  # unchanged
    assert flaky.calls["get_all_studies"] == 3
    assert capsys.readouterr().err == ""


def test_a_refusal_after_an_outage_passes_through_and_ends_the_outage(capsys: pytest.CaptureFixture) -> None:
    flaky = Flaky(InMemoryStorage())
    storage = wrap(flaky)
    flaky.fail("get_study_id_from_name", pg_dropped(), KeyError("no such study"))
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("unknown")
    err = capsys.readouterr().err
    assert len(lines(err, "retrying")) == 1 and len(lines(err, "answering again")) == 1


def test_concurrent_calls_announce_one_outage(capsys: pytest.CaptureFixture) -> None:
    """Several threads (a worker and its heartbeat) hitting the same outage: two lines, not two per thread."""
    inner = InMemoryStorage()
    inner.create_new_study(MIN, "s")
    outage = threading.Event()
    outage.set()

    class Down(Flaky):
        def _forward(self, name, *args, **kwargs):
            if outage.is_set():
                raise OSError(errno.ESTALE, "Stale file handle")
            return super()._forward(name, *args, **kwargs)

    storage = with_retries(Down(inner), base_delay_s=0.005, max_delay_s=0.01)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(storage.get_study_id_from_name("s"))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    outage.clear()
    for t in threads:
        t.join(5)
    assert results == [0, 0, 0, 0]
    err = capsys.readouterr().err
    assert len(lines(err, "retrying")) == 1 and len(lines(err, "answering again")) == 1, err


# -- ambiguous writes ---------------------------------------------------------------------------------------------


def make_storage(kind: str, tmp_path: Path) -> BaseStorage:
    if kind == "inmemory":
        return InMemoryStorage()
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    return RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=1)


KINDS = ["inmemory", "journal", "sqlite"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_completion_that_landed_before_the_error_is_success(kind: str, tmp_path: Path) -> None:
    flaky = Flaky(make_storage(kind, tmp_path))
    storage = wrap(flaky, log=lambda _: None)
    study_id = storage.create_new_study(MIN, "s")
    trial_id = storage.create_new_trial(study_id)
    flaky.fail("set_trial_state_values", Fault(pg_dropped(), applied=True))
    assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5]) is True
    trial = storage.get_trial(trial_id)
    assert trial.state == TrialState.COMPLETE and trial.values == [0.5]


@pytest.mark.parametrize("kind", KINDS)
def test_a_claim_that_landed_before_the_error_is_ours(kind: str, tmp_path: Path) -> None:
    flaky = Flaky(make_storage(kind, tmp_path))
    storage = wrap(flaky, log=lambda _: None)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    (waiting,) = storage.get_all_trials(study._study_id, states=(TrialState.WAITING,))
    flaky.fail("set_trial_state_values", Fault(OSError(errno.EIO, "Input/output error"), applied=True))
    assert storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING) is True
    assert storage.get_trial(waiting._trial_id).state == TrialState.RUNNING
    assert flaky.calls["set_trial_state_values"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_claim_taken_by_a_rival_during_the_outage_is_not_ours(kind: str, tmp_path: Path) -> None:
    flaky = Flaky(make_storage(kind, tmp_path))
    clock = FakeClock()
    storage = wrap(flaky, clock=clock, log=lambda _: None)
    study_id = storage.create_new_study(MIN, "s")
    trial_id = storage.create_new_trial(study_id, optuna.trial.create_trial(state=TrialState.WAITING))
    # While we wait for the server to come back, a rival claims the trial (its attempt came after ours failed).
    clock.on_sleep.append(lambda: flaky.inner.set_trial_state_values(trial_id, TrialState.RUNNING))
    flaky.fail("set_trial_state_values", Fault(pg_dropped()))
    assert storage.set_trial_state_values(trial_id, TrialState.RUNNING) is False
    assert flaky.calls["set_trial_state_values"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_trial_failed_as_lost_during_the_outage_refuses_our_completion(kind: str, tmp_path: Path) -> None:
    flaky = Flaky(make_storage(kind, tmp_path))
    clock = FakeClock()
    storage = wrap(flaky, clock=clock, log=lambda _: None)
    study_id = storage.create_new_study(MIN, "s")
    trial_id = storage.create_new_trial(study_id)
    clock.on_sleep.append(lambda: flaky.inner.set_trial_state_values(trial_id, TrialState.FAIL))
    flaky.fail("set_trial_state_values", Fault(pg_dropped()))
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    assert storage.get_trial(trial_id).state == TrialState.FAIL


def test_a_completion_by_someone_else_with_other_values_is_refused() -> None:
    flaky = Flaky(InMemoryStorage())
    storage = wrap(flaky, log=lambda _: None)
    study_id = storage.create_new_study(MIN, "s")
    trial_id = storage.create_new_trial(study_id)
    other = Fault(
        pg_dropped(), meanwhile=lambda: flaky.inner.set_trial_state_values(trial_id, TrialState.COMPLETE, [9])
    )
    flaky.fail("set_trial_state_values", other)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("template", [None, "enqueued"])
def test_a_trial_created_before_the_error_is_not_created_twice(kind: str, template, tmp_path: Path) -> None:
    flaky = Flaky(make_storage(kind, tmp_path))
    storage = wrap(flaky, log=lambda _: None)
    study_id = storage.create_new_study(MIN, "s")
    storage.create_new_trial(study_id)
    tmpl = optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"cell": "a"}) if template else None
    # The first attempt fails before it lands, the second after: the third finds the second's trial.
    flaky.fail("create_new_trial", Fault(OSError(errno.EIO, "io")), Fault(pg_dropped(), applied=True))
    trial_id = storage.create_new_trial(study_id, tmpl)
    trials = storage.get_all_trials(study_id)
    assert len(trials) == 2 and trials[-1]._trial_id == trial_id
    assert trials[-1].state == (TrialState.WAITING if template else TrialState.RUNNING)
    assert CREATE_TOKEN in trials[-1].system_attrs
    if template:
        assert trials[-1].user_attrs == {"cell": "a"} and tmpl is not None and CREATE_TOKEN not in tmpl.system_attrs
    assert flaky.calls["create_new_trial"] == 1 + 2  # the setup's, then our two failed attempts: none after


def test_a_trial_whose_creation_did_not_land_is_created_once() -> None:
    flaky = Flaky(InMemoryStorage())
    storage = wrap(flaky, log=lambda _: None)
    study_id = storage.create_new_study(MIN, "s")
    flaky.fail("create_new_trial", pg_dropped())
    storage.create_new_trial(study_id)
    assert len(storage.get_all_trials(study_id)) == 1


# -- the storage interface ----------------------------------------------------------------------------------------


def test_forwards_every_storage_method() -> None:
    """Each method Optuna's BaseStorage (and BaseHeartbeat) leaves abstract is the wrapper's own, so every call
    the queue makes, and Optuna makes for it, goes through the retry loop (Optuna's other methods are built on
    these), and a method Optuna adds later shows up here."""
    assert not RetryingStorage.__abstractmethods__ and not RetryingHeartbeatStorage.__abstractmethods__
    assert BaseStorage.__abstractmethods__ <= set(RetryingStorage.__dict__)
    assert BaseHeartbeat.__abstractmethods__ <= set(RetryingHeartbeatStorage.__dict__)


def test_every_method_is_retried() -> None:
    inner = InMemoryStorage()
    study_id = inner.create_new_study(MIN, "s")
    trial_id = inner.create_new_trial(study_id)
    dist = optuna.distributions.FloatDistribution(0, 1)
    inner.set_trial_param(trial_id, "x", 0.5, dist)
    done = inner.create_new_trial(study_id)
    inner.set_trial_state_values(done, TrialState.COMPLETE, [1.0])
    calls = {
        "get_study_id_from_name": ("s",), "get_study_name_from_id": (study_id,),
        "get_study_directions": (study_id,), "get_study_user_attrs": (study_id,),
        "get_study_system_attrs": (study_id,), "get_all_studies": (), "set_study_user_attr": (study_id, "k", 1),
        "set_study_system_attr": (study_id, "k", 1), "set_trial_param": (trial_id, "x", 0.5, dist),
        "set_trial_intermediate_value": (trial_id, 1, 0.1),
        "set_trial_user_attr": (trial_id, "k", 1), "set_trial_system_attr": (trial_id, "k", 1),
        "get_trial": (trial_id,), "get_all_trials": (study_id,),
    }  # fmt: skip
    assert set(calls) | {"create_new_study", "create_new_trial", "delete_study", "set_trial_state_values"} == set(
        BaseStorage.__abstractmethods__
    )
    for name, args in calls.items():
        flaky = Flaky(inner)
        storage = wrap(flaky, log=lambda _: None)
        flaky.fail(name, OSError(errno.EAGAIN, "again"))
        expected = getattr(inner, name)(*args)
        assert getattr(storage, name)(*args) == expected, name
        assert flaky.calls[name] == 2, name


def test_heartbeat_interface_only_when_the_inner_storage_has_it(tmp_path: Path) -> None:
    journal = with_retries(make_storage("journal", tmp_path))
    assert type(journal) is RetryingStorage and not isinstance(journal, BaseHeartbeat)
    assert not hasattr(journal, "record_heartbeat")  # the queue's lease renewal checks this
    rdb = make_storage("sqlite", tmp_path)
    wrapped = with_retries(rdb)
    assert isinstance(wrapped, RetryingHeartbeatStorage) and isinstance(wrapped, BaseHeartbeat)
    assert wrapped.inner is rdb and wrapped.get_heartbeat_interval() == 1
    assert optuna.storages._heartbeat.is_heartbeat_enabled(wrapped)


def test_heartbeats_are_retried() -> None:
    inner = RDBStorage("sqlite://", heartbeat_interval=1)
    flaky = FlakyHeartbeat(inner)
    storage = wrap(flaky, log=lambda _: None)
    study_id = storage.create_new_study(MIN, "s")
    trial_id = storage.create_new_trial(study_id)
    flaky.fail("record_heartbeat", pg_dropped())
    flaky.fail("_get_stale_trial_ids", pg_dropped())
    storage.record_heartbeat(trial_id)
    assert storage._get_stale_trial_ids(study_id) == []
    assert flaky.calls["record_heartbeat"] == 2 and flaky.calls["_get_stale_trial_ids"] == 2


# -- real studies on top ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_study_end_to_end(kind: str, tmp_path: Path) -> None:
    storage = with_retries(make_storage(kind, tmp_path))
    study = optuna.create_study(study_name="e2e", storage=storage)
    study.enqueue_trial({"x": 0.25}, user_attrs={"cell": "a"})
    trial = study.ask()
    assert trial.suggest_float("x", 0, 1) == 0.25
    study.tell(trial, 0.0625)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    loaded = optuna.load_study(study_name="e2e", storage=storage)
    trials = loaded.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[0].user_attrs == {"cell": "a"} and trials[0].value == 0.0625
    assert storage.get_all_trials(study._study_id, states=(TrialState.COMPLETE,)) == trials
    assert loaded.best_value <= 0.0625


def test_fail_stale_trials_through_the_wrapper(tmp_path: Path) -> None:
    """Optuna's heartbeat judge (isinstance BaseHeartbeat) and its stale-trial callback, on a wrapped SQLite RDB."""
    from optuna.storages._rdb import models

    rdb = RDBStorage(
        f"sqlite:///{tmp_path / 'hb.db'}",
        heartbeat_interval=1,
        grace_period=1,
        heartbeat_stale_trial_callback=RetryStale(max_retry=1),
    )
    storage = with_retries(rdb)
    study = optuna.create_study(study_name="hb", storage=storage)
    study.enqueue_trial({"x": 0.5})
    stale = study.ask()
    fresh = study.ask()
    for trial in (stale, fresh):
        storage.record_heartbeat(trial._trial_id)
    with rdb.scoped_session() as session:  # the stale worker's last beat was an hour ago
        beat = models.TrialHeartbeatModel.where_trial_id(stale._trial_id, session)
        beat.heartbeat = beat.heartbeat - timedelta(hours=1)
        session.commit()
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[stale.number] == TrialState.FAIL and states[fresh.number] == TrialState.RUNNING
    retried = [t for t in study.get_trials() if t.number not in (stale.number, fresh.number)]
    assert [t.state for t in retried] == [TrialState.WAITING]  # the callback re-enqueued it through the wrapper
    assert retried[0].system_attrs["failed_trial"] == stale.number


def test_optimize_with_heartbeat_threads_on_the_wrapper(tmp_path: Path) -> None:
    storage = with_retries(make_storage("sqlite", tmp_path))
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2


def test_names_the_storage_without_its_password(tmp_path: Path) -> None:
    assert with_retries(Flaky(InMemoryStorage(), url=URL)).name == REDACTED
    assert with_retries(InMemoryStorage()).name == "in-memory"
    assert with_retries(make_storage("journal", tmp_path)).name == f"journal {tmp_path / 'optuna.journal'}"
    assert repr(with_retries(InMemoryStorage(), budget_s=30)) == "RetryingStorage(in-memory, budget_s=30)"


# -- drill: a real PostgreSQL restart -----------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)


@pytest.fixture
def restartable_postgres():
    """A throwaway PostgreSQL (as tests/drills/conftest.py starts one) that the test may stop and start."""
    if os.environ.get("RESLAB_DRILLS") != "1" or _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
        pytest.skip("needs RESLAB_DRILLS=1 and PostgreSQL's initdb/pg_ctl (nox -s drills)")
    root = Path(tempfile.mkdtemp(prefix="reslab-retry-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_postgres, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = [*as_postgres, _pg_bin("pg_ctl"), "-D", str(data)]

    def start() -> None:
        subprocess.run([*ctl, "-l", str(root / "server.log"), "-o", options, "-w", "start"], check=True,
                       capture_output=True)  # fmt: skip

    def stop(mode: str = "fast") -> None:
        subprocess.run([*ctl, "-m", mode, "-w", "stop"], check=True, capture_output=True)

    start()
    try:
        yield f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{port}/postgres", start, stop
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.drills
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_drill_postgres_restart_under_load(restartable_postgres, mode: str) -> None:
    """A worker loops over the queue's calls (list, claim, heartbeat, attribute, commit) while PostgreSQL is stopped
    for two seconds and started again: every call succeeds, no claim or commit is lost or doubled."""
    url, start, stop = restartable_postgres
    said: list[str] = []
    rdb = RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=1, grace_period=30)
    storage = with_retries(rdb, budget_s=60, log=said.append)
    study = optuna.create_study(study_name=f"drill-{mode}", storage=storage)
    for n in range(150):  # enqueued up front: Optuna retries trial creation on its own, which would hide an outage
        study.enqueue_trial({}, user_attrs={"cell": f"c{n}"})
    done: list[int] = []
    errors: list[BaseException] = []
    halt = threading.Event()

    def worker_loop() -> None:
        try:
            while not halt.is_set():
                waiting = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
                trial = min(waiting, key=lambda t: t.number)
                assert storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
                storage.record_heartbeat(trial._trial_id)
                storage.set_trial_user_attr(trial._trial_id, "reslab.heartbeat", time.time())
                assert storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [len(done)])
                done.append(trial.number)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=worker_loop)
    worker.start()
    deadline = time.monotonic() + 10
    while len(done) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    before = len(done)
    stop(mode)
    time.sleep(2.0)
    start()
    deadline = time.monotonic() + 30
    while len(done) < before + 5 and time.monotonic() < deadline and not errors:
        time.sleep(0.02)
    halt.set()
    worker.join(60)
    assert not errors, errors
    assert len(done) >= before + 5
    trials = storage.get_all_trials(study._study_id)
    complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert complete == done  # each claim and commit happened once, in order
    assert all(t.state in (TrialState.COMPLETE, TrialState.WAITING) for t in trials)  # no orphan RUNNING claim
    assert any("retrying" in line for line in said) and any("answering again" in line for line in said), said
    assert not any(SECRET in line for line in said) and "postgres:***@" in said[0]
    rdb.engine.dispose()
