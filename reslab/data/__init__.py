"""Datasets as tensors on the training device (mnist1d, cifar10/100, digits, synthetic, text) and their batch
iterator.

Lightning is imported only by `reslab.data.datamodule`, so loading data stays cheap for tools that do not train;
the names below load on first use (PEP 562), so `reslab.data.catalog` (what the config checks read) does not
import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {"DATASETS": "registry", "DataError": "cifar", "DeviceBatches": "tensors", "Split": "tensors",
          "Splits": "tensors", "Windows": "tensors", "load_dataset": "registry",
          "pad_crop_flip": "tensors"}  # fmt: skip

__all__ = ["DATASETS", "DataError", "DeviceBatches", "Split", "Splits", "Windows", "load_dataset", "pad_crop_flip"]

if TYPE_CHECKING:
    from reslab.data.cifar import DataError
    from reslab.data.registry import DATASETS, load_dataset
    from reslab.data.tensors import DeviceBatches, Split, Splits, Windows, pad_crop_flip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"reslab.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'reslab.data' has no attribute {name!r}")
