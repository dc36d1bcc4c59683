"""MNIST-1D (Greydanus 2020): ten 1-D digit templates, shifted, scaled, sheared and noised into length-40
sequences. Generated offline by the `mnist1d` package, small enough that the degradation problem shows in minutes
on a CPU, and hard enough that depth matters. Cached as .npz: generation takes seconds, loading milliseconds; a
cache file that cannot be read is generated again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from reslab.data.cache import load_npz, resolve_data_dir, save_npz_atomic
from reslab.data.tensors import Split, Splits


def load_mnist1d(
    num_samples: int = 5000, train_split: float = 0.8, seed: int = 42, data_dir: str | Path | None = None
) -> Splits:
    """MNIST-1D with the package's default arguments (4000 train / 1000 test, length 40, seed 42); input 1x40."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=int(num_samples), train_split=float(train_split), seed=int(seed))
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = resolve_data_dir(data_dir) / f"mnist1d-{key}.npz"
    keys = ("x", "y", "x_test", "y_test")
    arrays = load_npz(path, keys)
    if arrays is None:  # not cached yet, or the cached file was unreadable and has been removed
        from mnist1d.data import make_dataset

        raw = make_dataset(_ObjectView(args))
        arrays = {k: np.asarray(raw[k]) for k in keys}
        save_npz_atomic(path, **arrays)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(x.astype(np.float32)).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))

    return Splits(
        name="mnist1d",
        train=split(arrays["x"], arrays["y"]),
        test=split(arrays["x_test"], arrays["y_test"]),
        val=None,
        input_shape=(1, arrays["x"].shape[1]),
        num_classes=10,
    )


class _ObjectView:
    """mnist1d reads its arguments as attributes."""

    def __init__(self, d: dict) -> None:
        self.__dict__ = d
