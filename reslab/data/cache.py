"""Where datasets are cached (`--data-dir`, else $RESLAB_DATA_DIR, else the user's cache dir, ~/.cache/reslab), and
how cache files are written and read: atomically, and a cache file that cannot be read is rebuilt, not fatal."""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from reslab.atomic import atomic_file

# What np.load and NpzFile raise for an empty, truncated, corrupt or foreign file, or one without an expected array.
UNREADABLE = (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError)


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("RESLAB_DATA_DIR"):
        return Path(os.environ["RESLAB_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reslab"


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write `arrays` to `path` atomically and durably (see `reslab.atomic`): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        np.savez(fh, **arrays)


def load_npz(path: Path, keys: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The arrays `keys` of the cached .npz at `path`, or None when the caller must build it: the file is missing, or
    unreadable (empty, truncated, corrupt, not an .npz, an array missing), in which case it is removed with one line on
    stderr. A cache is only a copy, so a bad one (a disk filled mid-write by an older reslab, a file copied in by hand)
    costs a rebuild, never a crashed run."""
    try:
        with np.load(path) as f:
            return {k: f[k] for k in keys}
    except FileNotFoundError:
        return None
    except UNREADABLE as exc:
        print(f"cached {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None
