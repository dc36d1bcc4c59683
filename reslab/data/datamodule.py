"""The Lightning DataModule over on-device tensors: loaders are `DeviceBatches`, so Lightning's batch transfer is a
no-op and no worker processes are spawned."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from reslab.data.tensors import DeviceBatches, Splits


class TensorDataModule(pl.LightningDataModule):
    """Train batches are `Splits.train_batches`: shuffled per epoch with `seed` (drop_last as asked), or a fixed
    number of random batches per epoch for a text, and sharded by rank under DDP; evaluation serves the val split
    (when there is one) and then the test split, in order, in large batches."""

    def __init__(
        self,
        splits: Splits,
        batch_size: int,
        *,
        eval_batch_size: int = 1000,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = drop_last
        self._train: DeviceBatches | None = None

    @property
    def eval_names(self) -> list[str]:
        return (["val"] if self.splits.val is not None else []) + ["test"]

    def setup(self, stage: str | None = None) -> None:
        if self.splits.device != self.device:
            self.splits = self.splits.to(self.device)

    def train_dataloader(self) -> DeviceBatches:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self._train is None:
            self._train = self.splits.train_batches(
                self.batch_size, seed=self.seed, drop_last=self.drop_last, rank=rank, world_size=world
            )
        return self._train

    def val_dataloader(self) -> list[DeviceBatches]:
        splits = [self.splits.val] if self.splits.val is not None else []
        splits.append(self.splits.test)
        return [DeviceBatches(s, self.eval_batch_size, transform=self.splits.eval_transform) for s in splits]
