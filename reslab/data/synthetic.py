"""Random inputs of any shape with a fixed labelling rule (the argmax of a fixed random linear map), for tests and
benchmarks: learnable, instant, and the same for the same seed everywhere."""

from __future__ import annotations

import torch

from reslab.data.tensors import Split, Splits


def load_synthetic(
    shape: tuple[int, ...] | list[int] = (1, 40),
    num_classes: int = 10,
    train_size: int = 1024,
    test_size: int = 256,
    val_size: int = 0,
    seed: int = 0,
) -> Splits:
    shape = tuple(int(d) for d in shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"shape must be positive sizes, got {shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    n = train_size + val_size + test_size
    x = torch.randn((n, *shape), generator=gen)
    rule = torch.randn(x[0].numel(), num_classes, generator=gen)
    y = (x.flatten(1) @ rule).argmax(1)
    train = Split(x[:train_size], y[:train_size])
    val = Split(x[train_size : train_size + val_size], y[train_size : train_size + val_size]) if val_size else None
    test = Split(x[train_size + val_size :], y[train_size + val_size :])
    return Splits("synthetic", train, test, val, shape, num_classes)
