"""Optuna journal files that survive a torn write.

Optuna's JournalFileBackend appends one JSON operation per line. A writer killed mid-append (kill -9) or stopped by
a full disk leaves a partial last line. Optuna's reader skips that line, but the next append glues a whole operation
onto the torn bytes (`{"op_co{"op_code":5,...}`), and from then on every read of the journal fails with a
JSONDecodeError: one glued line poisons the queue for every worker.

`RepairingJournalBackend` repairs such a file instead of failing, and `repair_journal` does the same for a runbook.
Under the journal's own lock the file is re-read and backed up, the torn bytes are dropped, the complete operation
that follows them on the same line is kept, and the file is rewritten atomically; one line on stderr says so.

Log numbers (Optuna counts lines and caches their byte offsets) stay valid for readers in every process: no reader
gets past a line that does not parse, the lines before it keep their bytes and offsets, and torn bytes never counted
as an operation. Torn bytes at the very end (no newline) can only come from a dead writer once the lock is held (a
live writer holds it while appending), so they are dropped at open time and before each append, under the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from reslab.atomic import write_atomic

if TYPE_CHECKING:
    from optuna.storages.journal._file import BaseJournalFileLock

OP_START = b'{"op_code"'


@dataclass(frozen=True)
class _Repair:
    message: str
    first_line: int  # the first line that changed: the lines before it, and their byte offsets, are untouched


def repair_journal(path: str | os.PathLike[str], lock_obj: BaseJournalFileLock | None = None) -> str | None:
    """Repair the journal at `path` under its lock (by default the JournalFileOpenLock reslab's queue uses).
    Returns the one-line message saying what was done, or None if the file was fine (then it is left untouched)."""
    path = os.fspath(path)
    with _held(lock_obj or JournalFileOpenLock(path)):
        repair = _repair_locked(path)
    return repair.message if repair else None


class RepairingJournalBackend(JournalFileBackend):
    """A JournalFileBackend whose reads repair a torn journal (see the module docstring) instead of failing, and whose
    opening and appends first drop a dead writer's torn last line, so that nothing is ever glued onto it."""

    def __init__(self, file_path: str, lock_obj: BaseJournalFileLock | None = None) -> None:
        super().__init__(file_path, lock_obj)
        if _torn_tail(self._file_path):  # a hint only: the decision is made again under the lock
            with _held(self._lock):
                self._repair_locked()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        number = log_number_from
        nothing_to_repair = False
        while True:
            try:
                for log in super().read_logs(number):
                    yield log
                    number += 1
            except ValueError:  # JSONDecodeError: a glued line with more lines after it
                if nothing_to_repair:
                    raise
            else:  # Optuna silently skips an unparsable *last* line: look for one
                if nothing_to_repair or not self._unparsable_line_at(number):
                    return
            # Either way another process may have repaired it meanwhile (then one more read settles it).
            with _held(self._lock):
                nothing_to_repair = not self._repair_locked()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        payload = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        with _held(self._lock):
            if _torn_tail(self._file_path):  # we hold the lock, so its writer is dead: never glue onto it
                self._repair_locked()
            with open(self._file_path, "ab") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())

    def _repair_locked(self) -> bool:
        repair = _repair_locked(self._file_path)
        if repair is None:
            return False
        # Optuna caches the byte offset of each line it has read; those after the first changed line have moved.
        self._log_number_offset = {n: at for n, at in self._log_number_offset.items() if n <= repair.first_line}
        print(repair.message, file=sys.stderr, flush=True)
        return True

    def _unparsable_line_at(self, number: int) -> bool:
        offset = self._log_number_offset.get(number)
        if offset is None or os.path.getsize(self._file_path) <= offset:
            return False
        with open(self._file_path, "rb") as f:
            f.seek(offset)
            line = f.readline()
        return line.endswith(b"\n") and not _parses(line)


@contextlib.contextmanager
def _held(lock: BaseJournalFileLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False
    return True


def _rescue(line: bytes) -> bytes | None:
    """The complete operation at the end of a line that starts with torn bytes: the last `{"op_code"` whose rest
    parses (an operation's nested objects cannot end the line, so searching from the end finds the outermost)."""
    at = line.rfind(OP_START)
    while at > 0:
        with contextlib.suppress(ValueError):
            if isinstance(json.loads(line[at:]), dict):
                return line[at:]
        at = line.rfind(OP_START, 0, at)
    return None


def _torn_tail(path: str) -> bool:
    """Whether the file ends without a newline (a torn write, or one still under way if the lock is not held)."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _repair_locked(path: str) -> _Repair | None:
    """Drop torn bytes, keeping the complete operations after them; the caller holds the journal's lock."""
    with open(path, "rb") as f:
        data = f.read()
    *lines, tail = data.split(b"\n")
    kept: list[bytes] = []
    first_line: int | None = None
    dropped = rescued = 0
    for number, line in enumerate(lines):
        if _parses(line):
            kept.append(line)
            continue
        first_line = number if first_line is None else first_line
        op = _rescue(line)
        if op is None:
            dropped += len(line) + 1
        else:
            kept.append(op)
            dropped += len(line) - len(op)
            rescued += 1
    if tail:
        first_line = len(lines) if first_line is None else first_line
        dropped += len(tail)
    if first_line is None:
        return None
    backup = _write_backup(path, data)
    write_atomic(path, b"".join(line + b"\n" for line in kept))
    return _Repair(
        f"reslab: repaired torn Optuna journal {path}: dropped {dropped} torn byte(s), kept {rescued} operation(s) "
        f"glued onto them; the original is backed up at {backup}",
        first_line,
    )


def _write_backup(path: str, data: bytes) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1, 1000):
        backup = f"{path}.torn-{stamp}{'' if n == 1 else f'-{n}'}.bak"
        try:
            with open(backup, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            continue
        return backup
    raise FileExistsError(f"no free backup name for {path}")


if __name__ == "__main__":  # python -m reslab.sweep.journal JOURNAL...
    for journal in sys.argv[1:]:
        print(repair_journal(journal) or f"{journal}: fine, nothing to repair")
