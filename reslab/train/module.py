"""`ResLabModule`: the LightningModule that trains any `build_net` network with He et al.'s recipe.

Training error is counted over each epoch's training batches, in training mode, as He et al. Fig. 1 and Fig. 6
plot it; sums are kept on the device and read once per epoch, so a step costs what the model costs and never waits
for the device (the epoch timer synchronises before it reads the clock). Metrics go to the logger once per epoch
(step = epoch, 1-based), as fractions in [0, 1]. On an accelerator the step runs as `reslab.train.fast` says:
compiled, channels-last for 2-D nets; its loss and optimiser (fused on CUDA) are `reslab.train.objective`'s.

A sequence model (targets (N, T): the `text` dataset) makes T predictions per example: its loss and error are
averaged over every prediction (the error is then the share of next characters mispredicted), and each loss is
also logged in bits per character, `train_bpc` and `<split>_bpc` (nats / ln 2). `train_images_per_s` counts
examples (windows, for a text) whatever they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn

from reslab.devices import compile_mode, sync
from reslab.train.config import TrainConfig
from reslab.train.fast import TrainingForward, uses_channels_last
from reslab.train.objective import BITS_PER_NAT, build_optimizer, loss_and_wrong
from reslab.train.schedule import lr_lambda


class ResLabModule(pl.LightningModule):
    """Cross-entropy over `num_outputs` classes (at every position, for a sequence model), or BCE when the head has
    one output (the Keras example's sigmoid convnet). `eval_names` name the evaluation loaders in order (e.g.
    ["val", "test"]); `on_epoch` gets each epoch's metrics (for progress lines)."""

    def __init__(
        self,
        net: nn.Module,
        cfg: TrainConfig,
        eval_names: list[str],
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.eval_names = eval_names
        self.on_epoch = on_epoch
        self.history: list[dict[str, float]] = []
        self.diverged: str | None = None
        self._train_sums = torch.zeros(4)  # loss x predictions, wrong, predictions, examples
        self._eval_sums = torch.zeros(len(eval_names), 4)
        self._sequences = False  # targets are sequences (a prediction per position): losses in bits too
        self._t0 = self._t_train = 0.0
        self.eager_step = False  # set by the gradient telemetry for the steps it taps
        self.channels_last = False
        self._forward: TrainingForward | None = None

    @property
    def compile_fallback(self) -> str | None:
        """Why compilation was given up during this run (it then trained eagerly), or None."""
        return self._forward.fallback if self._forward is not None else None

    def on_fit_start(self) -> None:
        device = self.device.type
        self.channels_last = uses_channels_last(self.cfg.channels_last, device, self.net)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._forward = TrainingForward(self.net, compile_mode(self.cfg.compile, device), device)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _accumulate(self, sums: torch.Tensor, loss: torch.Tensor, wrong: torch.Tensor, y: torch.Tensor) -> None:
        n = y.numel()  # predictions: one per example, or one per position of a sequence
        sums[:2] += torch.stack((loss.detach().float() * n, wrong.float()))
        sums[2] += n  # Python scalars: no host-to-device copy per step
        sums[3] += y.shape[0]
        self._sequences = y.dim() > 1

    # -- training --------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(4, device=self.device)
        self._eval_sums = torch.zeros(len(self.eval_names), 4, device=self.device)
        sync(self.device)
        self._t0 = time.perf_counter()
        self._t_train = 0.0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self._forward is None:  # a step outside fit (a test calling it directly): eager
            self._forward = TrainingForward(self.net, None, self.device.type)
        loss, wrong = self._forward(self._layout(x), y, eager=self.eager_step)
        self._accumulate(self._train_sums, loss, wrong, y)
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        # He et al. count iterations (64k), which rarely end on an epoch boundary; Lightning evaluates only at the
        # end of an epoch, so a run stopped by max_steps mid-epoch would have no final test error. Asking it to stop
        # makes it evaluate first.
        if self.cfg.max_steps is not None and self.trainer.global_step >= self.cfg.max_steps:
            self.trainer.should_stop = True

    def on_validation_epoch_start(self) -> None:
        # Evaluation runs inside the training epoch, after its last batch (the trainer's stage is VALIDATING by now,
        # so `trainer.training` cannot tell): the epoch's training time ends where evaluation starts.
        if not self._t_train:
            sync(self.device)
            self._t_train = time.perf_counter() - self._t0

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        loss, wrong = loss_and_wrong(self.net(self._layout(x)), y)
        self._accumulate(self._eval_sums[dataloader_idx], loss, wrong, y)

    def on_train_epoch_end(self) -> None:
        if not self._t_train:
            sync(self.device)
        train_s = self._t_train or (time.perf_counter() - self._t0)
        sums = self.trainer.strategy.reduce(self._train_sums, reduce_op="sum")  # all ranks' batches under DDP
        loss_sum, wrong, n, examples = sums.tolist()
        if not math.isfinite(loss_sum):  # a result, not a failure: record this epoch and stop training
            self.diverged = f"training loss became {loss_sum / max(n, 1)} in epoch {self.current_epoch + 1}"
            self.trainer.should_stop = True
        metrics = {
            "train_loss": loss_sum / n,
            "train_error": wrong / n,
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "epoch_time_s": train_s,
            "train_images_per_s": examples / train_s if train_s > 0 else 0.0,
        }
        if self._sequences:
            metrics["train_bpc"] = metrics["train_loss"] * BITS_PER_NAT
        for name, (e_loss, e_wrong, e_n, _) in zip(self.eval_names, self._eval_sums.tolist(), strict=True):
            if e_n:
                metrics[f"{name}_loss"] = e_loss / e_n
                metrics[f"{name}_error"] = e_wrong / e_n
                if self._sequences:
                    metrics[f"{name}_bpc"] = metrics[f"{name}_loss"] * BITS_PER_NAT
        epoch = self.current_epoch + 1
        self.history.append({"epoch": epoch, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=epoch)
        if self.on_epoch is not None and self.trainer.is_global_zero:
            self.on_epoch(epoch, metrics)

    # -- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.cfg
        optimizer = build_optimizer(self.net, cfg, self.device)
        steps_per_epoch = len(self.trainer.datamodule.train_dataloader())  # per rank, as the optimizer steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
