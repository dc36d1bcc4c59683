"""The datasets by name, without torch or their loaders: what each is, its options with their defaults, and its
input shape and classes for given options.

Configs and the CLI validate against this (an unknown dataset or option is refused before anything loads), the
memory check and the dry run read shapes from it, and `reslab.data.registry` pairs each entry with its loader; a
test holds the options here equal to the loaders' signatures, so the two cannot drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reslab.data.text import DEFAULTS as TEXT_DEFAULTS
from reslab.data.text import text_counts, text_meta, text_problem


@dataclass(frozen=True)
class DatasetInfo:
    description: str
    offline: bool
    meta: Callable[[dict], tuple[tuple[int, ...], int]]  # options -> (input shape, classes), without loading
    defaults: dict[str, Any] = field(default_factory=dict)
    counts: Callable[[dict], tuple[int, int, int]] | None = None  # options -> (train, val, test) examples
    check: Callable[[dict], str | None] | None = None  # options -> why they cannot be used (one line), or None
    epoch_steps: Callable[[dict], int] | None = None  # options -> training steps per epoch, where fixed
    tokens: bool = False  # inputs are token ids and targets the next token at every position (a language model's)

    def options(self) -> dict[str, object]:
        """The options a config may set for this dataset, with their defaults."""
        return dict(self.defaults)

    def shape(self, options: dict | None = None) -> tuple[tuple[int, ...], int]:
        """(input shape, number of classes) for `options`, known without loading or downloading anything."""
        return self.meta({**self.defaults, **(options or {})})

    def problem(self, options: dict | None = None) -> str | None:
        """Why `options` cannot make this dataset (a value out of range, a file that cannot be read), said before
        anything loads, or None. Configs and the CLI refuse such options with this line."""
        return self.check({**self.defaults, **(options or {})}) if self.check is not None else None

    def train_steps(self, options: dict | None, batch_size: int, drop_last: bool = False) -> int:
        """Training steps in one epoch: the dataset's fixed number (a text's `steps_per_epoch`), else one pass over
        its training examples in batches of `batch_size`."""
        opts = {**self.defaults, **(options or {})}
        if self.epoch_steps is not None:
            return self.epoch_steps(opts)
        n_train = self.sizes(opts)[0]
        return n_train // batch_size if drop_last else math.ceil(n_train / batch_size)

    def sizes(self, options: dict | None = None) -> tuple[int, int, int]:
        """(train, val, test) example counts for `options`, known without loading anything (what a projection of a
        sweep's wall time needs: steps per epoch and the evaluation's work)."""
        if self.counts is None:
            raise ValueError(f"the example counts of {self.description!r} are not known without loading it")
        return self.counts({**self.defaults, **(options or {})})


_CIFAR = {"val_size": 0, "augment": True, "split_seed": 0}


def _cifar_counts(o: dict) -> tuple[int, int, int]:
    return 50_000 - int(o["val_size"]), int(o["val_size"]), 10_000


def _mnist1d_counts(o: dict) -> tuple[int, int, int]:
    train = int(int(o["num_samples"]) * float(o["train_split"]))
    return train, 0, int(o["num_samples"]) - train


def _digits_counts(o: dict) -> tuple[int, int, int]:
    test = math.ceil(1797 * float(o["test_fraction"]))  # scikit-learn's train_test_split rounds the test part up
    return 1797 - test, 0, test

DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist1d": DatasetInfo(
        "MNIST-1D, 4000/1000 sequences of length 40, generated offline", True, lambda o: ((1, 40), 10),
        {"num_samples": 5000, "train_split": 0.8, "seed": 42}, _mnist1d_counts,
    ),
    "cifar10": DatasetInfo("CIFAR-10, 50k/10k 3x32x32 images", False, lambda o: ((3, 32, 32), 10), _CIFAR,
                           _cifar_counts),
    "cifar100": DatasetInfo("CIFAR-100, 50k/10k 3x32x32 images", False, lambda o: ((3, 32, 32), 100), _CIFAR,
                            _cifar_counts),
    "digits": DatasetInfo(
        "scikit-learn's 8x8 digits, 1437/360 images, offline", True, lambda o: ((1, 8, 8), 10),
        {"test_fraction": 0.2, "split_seed": 0}, _digits_counts,
    ),
    "synthetic": DatasetInfo(
        "random inputs with a fixed linear labelling rule", True,
        lambda o: (tuple(int(d) for d in o["shape"]), int(o["num_classes"])),
        {"shape": (1, 40), "num_classes": 10, "train_size": 1024, "test_size": 256, "val_size": 0, "seed": 0},
        lambda o: (int(o["train_size"]), int(o["val_size"]), int(o["test_size"])),
    ),
    "text": DatasetInfo(
        "characters of a UTF-8 text (default Python's pydoc topics, ~465k), next-character prediction in windows of "
        "seq_len; an epoch is steps_per_epoch random batches", True, text_meta, TEXT_DEFAULTS, text_counts,
        check=text_problem, epoch_steps=lambda o: int(o["steps_per_epoch"]), tokens=True,
    ),
}  # fmt: skip


def pairing_problem(family: str, dataset: str) -> str | None:
    """One line when `family`'s nets cannot read `dataset`: a language model reads token ids and predicts the next
    one at every position, every other family reads signals (images, sequences, vectors) and predicts one class."""
    from reslab.models.catalog import FAMILY_INFO

    fam, data = FAMILY_INFO.get(family), DATASET_INFO.get(dataset)
    if fam is None or data is None or fam.tokens == data.tokens:
        return None
    if fam.tokens:
        readers = ", ".join(n for n, d in DATASET_INFO.items() if d.tokens)
        return f"family {family} is a language model that reads token ids, not dataset {dataset}: use dataset " \
               f"{readers}"  # fmt: skip
    readers = ", ".join(n for n, f in FAMILY_INFO.items() if f.tokens)
    return f"dataset {dataset} holds token ids for a language model, not inputs family {family} reads: use " \
           f"family {readers}"  # fmt: skip
