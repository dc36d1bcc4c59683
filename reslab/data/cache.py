"""Where datasets are cached: `--data-dir`, else $RESLAB_DATA_DIR, else the user's cache dir (~/.cache/reslab)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("RESLAB_DATA_DIR"):
        return Path(os.environ["RESLAB_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reslab"


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write to a temporary file beside `path` and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
