"""The registry of datasets: each dataset of `reslab.data.catalog` with its loader, and the cached loading."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reslab.data.catalog import DATASET_INFO, DatasetInfo
from reslab.data.cifar import load_cifar
from reslab.data.digits import load_digits
from reslab.data.mnist1d import load_mnist1d
from reslab.data.synthetic import load_synthetic
from reslab.data.tensors import Splits
from reslab.data.text import load_text


@dataclass(frozen=True)
class DatasetEntry(DatasetInfo):
    """A dataset of `catalog.DATASET_INFO` with its loader."""

    loader: Callable[..., Splits] | None = None


_LOADERS: dict[str, Callable[..., Splits]] = {
    "mnist1d": load_mnist1d, "cifar10": functools.partial(load_cifar, "cifar10"),
    "cifar100": functools.partial(load_cifar, "cifar100"), "digits": load_digits, "synthetic": load_synthetic,
    "text": load_text,
}  # fmt: skip
DATASETS: dict[str, DatasetEntry] = {name: DatasetEntry(**vars(info), loader=_LOADERS[name])
                                     for name, info in DATASET_INFO.items()}  # fmt: skip


def load_dataset(name: str, options: dict | None = None, data_dir: str | Path | None = None) -> Splits:
    """The dataset `name` with `options`, on the CPU. Loaded once per process: sweep workers reuse it."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(DATASETS[name].options()))
    if unknown:
        valid = ", ".join(DATASETS[name].options()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; valid: {valid}")
    return _load_cached(name, json.dumps(opts, sort_keys=True), str(data_dir) if data_dir else None)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, options_json: str, data_dir: str | None) -> Splits:
    entry = DATASETS[name]
    kwargs = json.loads(options_json)
    if "data_dir" in inspect.signature(entry.loader).parameters:
        kwargs["data_dir"] = data_dir
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    return entry.loader(**kwargs)
