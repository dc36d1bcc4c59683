"""Where reslab reads and writes: every file or folder a command names or creates, checked before anything is.

A sweep writes its queue, its MLflow store, its runs folder and its report; every command reads a config, a dataset
cache or a benchmark JSON. A path that cannot be used otherwise fails late and badly: a config saved as Latin-1
ends in a UnicodeDecodeError traceback, a queue under a regular file in FileExistsError, a 300-character sweep name
in "File name too long" after the queue and the tracking store exist. Each check here says, in one line, which path
is wrong and why, from the filesystem's own answers (its name and path limits, a read-only mount, permissions). A
check only looks: it creates, changes and removes nothing, so whatever a refused command finds is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path


class PathError(ValueError):
    """A file that cannot be read as text: the message says why, without the path (the caller names it)."""


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of the file `path`, or PathError: missing, a folder, unreadable, or not UTF-8 (with where)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PathError("no such file") from None
    except IsADirectoryError:
        raise PathError("a folder, not a file") from None
    except PermissionError:
        raise PathError("cannot be read (permission denied)") from None
    except OSError as exc:
        raise PathError(f"cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise PathError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column}): save it as UTF-8"
        ) from None


def folder_problem(path: str | os.PathLike[str], write: bool = True) -> str | None:
    """Why the folder `path` cannot be used (read, and with `write` written) or created, or None."""
    return _problem(Path(os.path.abspath(path)), folder=True, write=write)


def file_problem(path: str | os.PathLike[str], example: str = "", write: bool = True) -> str | None:
    """Why the file `path` cannot be created, or read (and with `write`, written with side files beside it: a lock,
    SQLite's journal), or None. `example` is a file name to suggest when `path` is a folder."""
    return _problem(Path(os.path.abspath(path)), folder=False, write=write, example=example)


def store_problem(uri: str, bare: str = "folder", example: str = "mlflow.db", write: bool = True) -> str | None:
    """Why a store URI that names a local file or folder cannot be used: `sqlite:///file.db` (a file; `sqlite://`
    alone is an in-memory store that every process sees empty), `file:///folder`, or a path without a scheme (a
    `bare` "folder" for MLflow's file store, a "file" for Optuna's journal). Servers are not judged here.
    `example` names a file to suggest where a folder was given; without `write`, a store that exists need only
    be readable (a report reads a store on a read-only share)."""
    if "://" not in uri:
        return file_problem(uri, example, write) if bare == "file" else folder_problem(uri, write)
    scheme, rest = uri.split("://", 1)
    scheme = scheme.split("+", 1)[0].lower()
    if scheme == "file":
        from urllib.parse import unquote, urlparse

        return folder_problem(unquote(urlparse(uri).path), write)
    if scheme != "sqlite":
        return None
    database = rest.split("?", 1)[0]
    database = database[1:] if database.startswith("/") else database  # sqlite:///rel.db, sqlite:////abs.db
    if database in ("", ":memory:"):
        return (
            "names no database file (an in-memory store is empty in every other process and lost at exit); "
            "give sqlite:///path/to/file.db"
        )
    return file_problem(database, example, write)


# -- the filesystem's answers ------------------------------------------------------------------------------------------


def _problem(target: Path, folder: bool, write: bool, example: str = "") -> str | None:
    base, missing = target, []
    while not os.path.lexists(base):  # the nearest part that exists; everything below it would be created
        missing.insert(0, base.name)
        base = base.parent
    if len(os.fsencode(target)) >= _path_max(base):
        return f"the path is {len(os.fsencode(target))} bytes long, more than the {_path_max(base) - 1} allowed here"
    if not missing:
        return _existing_problem(target, folder, write, example)
    if not os.path.isdir(base):
        return f"{base} is a file, so nothing can be created under it"
    limit = name_max(base)
    for name in missing:
        if len(os.fsencode(name)) > limit:
            return f"the name {name[:24]}... is {len(os.fsencode(name))} bytes long, more than the {limit} allowed here"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{base} {_not_writable(base)}, so {base / missing[0]} cannot be created"
    return None


def _existing_problem(target: Path, folder: bool, write: bool, example: str) -> str | None:
    if folder:
        if not os.path.isdir(target):
            return f"{target} is a file, not a folder"
        if not os.access(target, os.R_OK | os.X_OK):
            return f"{target} cannot be read (permission denied)"
        if write and not os.access(target, os.W_OK):
            return f"{target} {_not_writable(target)}"
        return None
    if os.path.isdir(target):
        hint = f": name a file in it, e.g. {target / example}" if example else ""
        return f"{target} is a folder, not a file{hint}"
    if not os.path.isfile(target):
        return f"{target} is not a regular file"
    if not os.access(target, os.R_OK):
        return f"{target} cannot be read (permission denied)"
    if write and not os.access(target, os.W_OK):
        return f"{target} {_not_writable(target)}"
    if write and not os.access(target.parent, os.W_OK | os.X_OK):  # a lock file, SQLite's journal: created beside it
        return f"{target.parent} {_not_writable(target.parent)}, so no lock file can be made beside {target.name}"
    return None


def _not_writable(path: Path) -> str:
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "is on a read-only filesystem" if read_only else "is not writable (permission denied)"


def name_max(path: Path) -> int:
    """The longest file or folder name, in bytes, the filesystem that would hold `path` allows (255 on ext4, XFS,
    APFS)."""
    return _pathconf(path, "PC_NAME_MAX", 255)


def _path_max(path: Path) -> int:
    return _pathconf(path, "PC_PATH_MAX", 4096)


def _pathconf(path: Path, name: str, default: int) -> int:
    while not os.path.isdir(path) and path != path.parent:  # asked of the nearest folder that exists
        path = path.parent
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default
