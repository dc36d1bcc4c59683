"""A journal torn by a writer killed mid-append (or a full disk) is repaired instead of poisoning the queue."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from reslab.sweep.journal import RepairingJournalBackend, repair_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAME = "queue"


def storage(path: Path, repairing: bool = True) -> JournalStorage:
    backend = RepairingJournalBackend if repairing else JournalFileBackend
    return JournalStorage(backend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def xs(path: Path, repairing: bool = True) -> list[float]:
    study = optuna.load_study(study_name=NAME, storage=storage(path, repairing))
    return [t.system_attrs["fixed_params"]["x"] for t in study.get_trials(deepcopy=False)]


def tear(path: Path) -> None:
    """What a writer killed mid-append leaves: the first 20 bytes of an operation, no newline."""
    last = path.read_bytes().splitlines()[-1]
    with path.open("ab") as f:
        f.write(last[:20])


@pytest.fixture
def writer(tmp_path: Path) -> optuna.Study:
    """A plain Optuna writer that created a queue of three enqueued trials in tmp_path/sweep.log."""
    study = optuna.create_study(study_name=NAME, storage=storage(tmp_path / "sweep.log", repairing=False))
    for x in (0.0, 1.0, 2.0):
        study.enqueue_trial({"x": x})
    return study


@pytest.fixture
def journal(writer: optuna.Study, tmp_path: Path) -> Path:
    return tmp_path / "sweep.log"


@pytest.fixture
def glued(writer: optuna.Study, journal: Path) -> Path:
    """A torn write, then two more operations by the plain writer: the first is glued onto the torn bytes, and once a
    line follows the glued one, every read fails (the second write's own read already does)."""
    tear(journal)
    writer.enqueue_trial({"x": 3.0})
    with pytest.raises(json.JSONDecodeError):
        writer.set_user_attr("after", 1)
    assert b'"worker{"op_code"' in journal.read_bytes()
    return journal


def leftovers(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name not in (path.name, path.name + ".lock"))


def test_plain_backend_cannot_read_a_glued_line(glued: Path) -> None:
    with pytest.raises(json.JSONDecodeError):
        xs(glued, repairing=False)


def test_glued_line_is_repaired_and_its_operation_kept(glued: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = glued.read_bytes()
    study = optuna.load_study(study_name=NAME, storage=storage(glued))
    assert [t.system_attrs["fixed_params"]["x"] for t in study.trials] == [0.0, 1.0, 2.0, 3.0]
    assert study.user_attrs == {"after": 1}

    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    (backup,) = leftovers(glued)  # the backup, and no temporary file
    assert backup.name.startswith("sweep.log.torn-") and backup.suffix == ".bak"
    assert backup.read_bytes() == original
    assert str(glued) in err and "dropped 20 torn byte(s)" in err and str(backup) in err
    assert glued.read_bytes() == original.replace(b'{"op_code":4,"worker{"op_code"', b'{"op_code"', 1)

    study.enqueue_trial({"x": 4.0})  # appends and reads go on, in this storage and in fresh ones
    assert len(study.trials) == 5
    assert xs(glued) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert xs(glued, repairing=False) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert capsys.readouterr().err == ""
    assert len(leftovers(glued)) == 1


def test_glued_last_line_is_rescued_not_skipped(
    writer: optuna.Study, journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Optuna silently skips an unparsable last line, losing its operation; the repairing backend keeps it."""
    tear(journal)
    writer.enqueue_trial({"x": 3.0})
    assert xs(journal, repairing=False) == [0.0, 1.0, 2.0]
    assert xs(journal) == [0.0, 1.0, 2.0, 3.0]
    assert capsys.readouterr().err.count("\n") == 1
    assert xs(journal, repairing=False) == [0.0, 1.0, 2.0, 3.0]


def test_reader_that_was_mid_journal_keeps_its_numbering(writer: optuna.Study, journal: Path) -> None:
    """A plain reader in another process that read up to the torn bytes (and then silently skipped the glued line)
    reads on from its cached offsets after `repair_journal` and sees what a fresh reader sees."""
    study = optuna.load_study(study_name=NAME, storage=storage(journal, repairing=False))
    assert len(study.trials) == 3
    tear(journal)
    writer.enqueue_trial({"x": 3.0})
    assert len(study.trials) == 3  # the glued line is skipped
    with pytest.raises(json.JSONDecodeError):
        writer.set_user_attr("after", 1)

    message = repair_journal(journal)
    assert message is not None and "\n" not in message
    assert [t.system_attrs["fixed_params"]["x"] for t in study.trials] == [0.0, 1.0, 2.0, 3.0]
    assert study.user_attrs == {"after": 1}
    assert xs(journal, repairing=False) == [0.0, 1.0, 2.0, 3.0]
    assert repair_journal(journal) is None


def test_torn_last_line_is_dropped_before_anything_is_appended(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tear(journal)
    study = optuna.load_study(study_name=NAME, storage=storage(journal))  # repaired at open, under the lock
    assert capsys.readouterr().err.count("\n") == 1
    study.enqueue_trial({"x": 3.0})
    tear(journal)  # a writer dies while this storage is open: its next append must not glue onto the torn bytes
    study.enqueue_trial({"x": 4.0})
    study.set_user_attr("after", 1)
    assert capsys.readouterr().err.count("\n") == 1
    assert xs(journal, repairing=False) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [t.system_attrs["fixed_params"]["x"] for t in study.trials] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert journal.read_bytes().endswith(b"\n")
    assert [p.suffix for p in leftovers(journal)] == [".bak", ".bak"]  # one per repair, even within a second


def test_clean_journal_is_left_alone(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = journal.read_bytes()
    assert xs(journal) == [0.0, 1.0, 2.0]
    assert repair_journal(journal) is None
    assert journal.read_bytes() == before
    assert capsys.readouterr().err == ""
    assert leftovers(journal) == []
