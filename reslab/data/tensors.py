"""Datasets as tensors on the training device, and the batch iterator that serves them.

airbench keeps CIFAR-10 as one uint8 tensor on the GPU and augments whole batches there: a per-sample Python
transform, not the model, is what makes small ResNets slow to train. reslab does the same on every device: a
dataset is a few tensors, an epoch is a permutation, a batch is one gather (plus, for CIFAR, one batched
pad-crop-flip), so the data path runs far faster than the model it feeds (benchmarks/measure_training.py).

A text is one 1-D tensor of token ids, and its examples are windows of it (`Windows`): strided views, so the
418,000 overlapping training windows of a 465,000-character text cost no memory beyond the text itself, and a
batch of them is the same one gather. An epoch over so many windows would be thousands of steps, so a text's
epoch is a fixed number of batches drawn at random instead (`Splits.train_steps`), as nanoGPT draws its batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

#: A batch transform: (inputs, generator or None for evaluation) -> float inputs ready for the model.
Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


@dataclass(frozen=True)
class Windows:
    """The windows of one token sequence as examples: example i is `tokens[i*stride : i*stride + length]` and its
    targets are the same window shifted by one token (next-token prediction at every position). Stride 1 gives every
    window (training); stride `length` gives non-overlapping windows that cover the sequence once (evaluation).
    `x` and `y` are views of `tokens`, so moving a `Windows` to a device moves the 1-D sequence only."""

    tokens: torch.Tensor
    length: int
    stride: int = 1

    def __post_init__(self) -> None:
        if self.tokens.dim() != 1 or self.length <= 0 or self.stride <= 0:
            raise ValueError(f"windows need a 1-D sequence and a positive length and stride, got tokens of shape "
                             f"{tuple(self.tokens.shape)}, length {self.length}, stride {self.stride}")  # fmt: skip
        if len(self.tokens) < self.length + 1:
            raise ValueError(f"{len(self.tokens)} tokens hold no window of {self.length} tokens and its targets")

    def __len__(self) -> int:
        return (len(self.tokens) - 1 - self.length) // self.stride + 1

    @property
    def x(self) -> torch.Tensor:
        """(windows, length) inputs, a strided view of `tokens`."""
        return self.tokens[:-1].unfold(0, self.length, self.stride)

    @property
    def y(self) -> torch.Tensor:
        """(windows, length) targets: the inputs shifted by one token."""
        return self.tokens[1:].unfold(0, self.length, self.stride)

    def to(self, device: torch.device | str) -> Windows:
        return replace(self, tokens=self.tokens.to(device, non_blocking=True))


@dataclass(frozen=True)
class Splits:
    """train / val (optional) / test tensors of one dataset, with what a network needs to know about them.
    `train_transform` and `eval_transform` run on whole batches on the device (normalisation of uint8 images,
    augmentation); None means the stored tensors are already model inputs.

    `train_steps` says what a training epoch is: None, one pass over the training examples in a fresh order; a
    number, that many batches of examples drawn at random with replacement (a text, whose windows number as many
    as its characters). `details` identify the data beyond its options (a text's SHA-256 and size): a run logs
    them as `data.<key>` params."""

    name: str
    train: Split | Windows
    test: Split | Windows
    val: Split | Windows | None
    input_shape: tuple[int, ...]
    num_classes: int
    train_transform: Transform | None = None
    eval_transform: Transform | None = None
    train_steps: int | None = None
    details: dict[str, str | int] = field(default_factory=dict)

    def train_batches(
        self, batch_size: int, *, seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1
    ) -> DeviceBatches:
        """The training batches every loop draws (Lightning's DataModule, the benchmarks' loops, packs): shuffled
        with `seed`, through `train_transform`, one epoch as `train_steps` says."""
        return DeviceBatches(self.train, batch_size, shuffle=True, drop_last=drop_last, seed=seed,
                             transform=self.train_transform, rank=rank, world_size=world_size,
                             steps_per_epoch=self.train_steps)  # fmt: skip

    def to(self, device: torch.device | str) -> Splits:
        return replace(
            self,
            train=self.train.to(device),
            test=self.test.to(device),
            val=self.val.to(device) if self.val is not None else None,
        )

    @property
    def device(self) -> torch.device:
        return self.train.x.device


class DeviceBatches:
    """Batches of a `Split` (or `Windows`) already on its device: a fresh seeded permutation each epoch (epoch e of
    seed s is always the same), optional batch transform, `drop_last`, and a rank/world shard for data-parallel
    training.

    With `steps_per_epoch`, an epoch is that many full batches of examples drawn uniformly at random with
    replacement instead of a permutation (shuffle and drop_last do not apply); under data parallelism each rank
    draws its own `steps_per_epoch` batches from the epoch's generator.

    The epoch advances when an epoch's first batch is taken, so a loop that only calls iter() does not shift the
    order (Lightning inspects loaders before it trains)."""

    def __init__(
        self,
        split: Split | Windows,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
        rank: int = 0,
        world_size: int = 1,
        steps_per_epoch: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if steps_per_epoch is not None and steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def _shard_size(self) -> int:
        n = len(self.split)
        return n // self.world_size if self.world_size > 1 else n

    def __len__(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.split.x, self.split.y
        n = len(self.split)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        if self.steps_per_epoch is not None:
            yield from self._drawn(x, y, n, gen)
            return
        order = torch.randperm(n, generator=gen).to(x.device) if self.shuffle else torch.arange(n, device=x.device)
        if self.world_size > 1:
            shard = self._shard_size()
            order = order[self.rank * shard : (self.rank + 1) * shard]
        size = len(order)
        stop = size - size % self.batch_size if self.drop_last else size
        contiguous = not self.shuffle and self.world_size == 1
        for start in range(0, stop, self.batch_size):
            if contiguous:
                xb, yb = x[start : start + self.batch_size], y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if self.transform is not None:
                xb = self.transform(xb, gen if self.shuffle else None)
            yield xb, yb

    def _drawn(
        self, x: torch.Tensor, y: torch.Tensor, n: int, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`steps_per_epoch` batches of examples drawn with replacement: one index draw for the epoch (every rank
        draws the same and takes its own rows), one gather per batch."""
        draws = torch.randint(n, (self.world_size, self.steps_per_epoch, self.batch_size), generator=gen)
        for idx in draws[self.rank].to(x.device):
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if self.transform is not None:
                xb = self.transform(xb, gen)
            yield xb, yb


def pad_crop_flip(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """He et al. 2015 §4.2 augmentation on a whole batch: zero-pad `pad` pixels on each side, take a random crop of
    the original size, flip horizontally with probability 1/2. One gather for the crop, no per-sample Python."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(images.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (b, h)
    cols = torch.arange(w, device=images.device)
    cols = torch.where(flip[:, None], (w - 1) - cols, cols) + dx[:, None]  # (b, w), reversed where flipped
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
