"""Atomic file writes: a file is either its old self or complete, never half written.

A reader (another sweep worker, a report, a resumed sweep) must never see half a file, and a crash or `kill -9`
mid-write must not leave a file that looks complete: so the data goes to a uniquely named temporary file beside the
target (same directory, hence same filesystem, so the rename is atomic) and is renamed over it only once fully
written. The file is fsynced before the rename and the directory after it, so a machine crash soon after does not
leave an empty or missing file where the rename said a complete one was. On any exception, KeyboardInterrupt
included, the temporary file is removed and the exception re-raised. Only a `kill -9` mid-write can leave one, as a
hidden `.{name}.{pid}.{random}.tmp` that never looks like the target.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "fsync_dir", "fsync_file", "temp_path", "write_atomic"]


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name beside `path` (pid and random token, so concurrent writers never share one)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_file(fh: IO[Any]) -> None:
    """Push `fh`'s buffered data to the disk, so that a rename made after it never names an empty file."""
    fh.flush()
    os.fsync(fh.fileno())


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in `directory` durable. Best effort: some platforms and filesystems cannot fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object whose contents replace `path` only when the block exits normally ("wb", or "w" for UTF-8 text).

    The temporary file is created with the permissions a plain `open(path, "w")` would give (0o666 less the umask).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes a whole file: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fsync_file(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace `path`'s contents with `data` (str as UTF-8) atomically and durably."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as fh:
        fh.write(data)
