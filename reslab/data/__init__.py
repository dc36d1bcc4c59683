"""Datasets as tensors on the training device (mnist1d, cifar10/100, digits, synthetic) and their batch iterator.

Lightning is imported only by `reslab.data.datamodule`, so loading data stays cheap for tools that do not train.
"""

from reslab.data.cifar import DataError
from reslab.data.registry import DATASETS, load_dataset
from reslab.data.tensors import DeviceBatches, Split, Splits, pad_crop_flip

__all__ = ["DATASETS", "DataError", "DeviceBatches", "Split", "Splits", "load_dataset", "pad_crop_flip"]
