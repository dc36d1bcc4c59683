"""The registry of datasets by name, as configs and the CLI say them, with their options."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reslab.data.cifar import load_cifar
from reslab.data.digits import load_digits
from reslab.data.mnist1d import load_mnist1d
from reslab.data.synthetic import load_synthetic
from reslab.data.tensors import Splits


@dataclass(frozen=True)
class DatasetEntry:
    loader: Callable[..., Splits]
    description: str
    offline: bool
    meta: Callable[[dict], tuple[tuple[int, ...], int]]  # options -> (input shape, classes), without loading

    def shape(self, options: dict | None = None) -> tuple[tuple[int, ...], int]:
        """(input shape, number of classes) for `options`, known without loading or downloading anything."""
        return self.meta({**self.options(), **(options or {})})

    def options(self) -> dict[str, object]:
        """The options a config may set for this dataset, with their defaults."""
        params = inspect.signature(self.loader).parameters
        return {k: p.default for k, p in params.items() if k not in ("name", "data_dir")}


DATASETS: dict[str, DatasetEntry] = {
    "mnist1d": DatasetEntry(
        load_mnist1d, "MNIST-1D, 4000/1000 sequences of length 40, generated offline", True, lambda o: ((1, 40), 10)
    ),
    "cifar10": DatasetEntry(
        functools.partial(load_cifar, "cifar10"), "CIFAR-10, 50k/10k 3x32x32 images", False, lambda o: ((3, 32, 32), 10)
    ),
    "cifar100": DatasetEntry(
        functools.partial(load_cifar, "cifar100"),
        "CIFAR-100, 50k/10k 3x32x32 images",
        False,
        lambda o: ((3, 32, 32), 100),
    ),
    "digits": DatasetEntry(
        load_digits, "scikit-learn's 8x8 digits, 1437/360 images, offline", True, lambda o: ((1, 8, 8), 10)
    ),
    "synthetic": DatasetEntry(
        load_synthetic,
        "random inputs with a fixed linear labelling rule",
        True,
        lambda o: (tuple(int(d) for d in o["shape"]), int(o["num_classes"])),
    ),
}


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
