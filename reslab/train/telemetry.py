"""Gradient telemetry: seed 002's experiment in every run.

Seed 002 tracks the gradient norm at the input of a block through the block (x_in) and through the residual
connection (x_res): early in training the shortcut carries the clear signal and the branch a weak one; later they
swap. `GradientProbe` records, every K training steps and inside the backward pass training runs anyway:
- per block: the gradient norm reaching the block input through the branch F and through the shortcut, and the
  gradient norm at the block output (at init a rezero block's branch gradient is 0 and its shortcut gradient is
  its output gradient);
- per rezero block: the gate a;
- per layer: the norm of the weight gradient (what vanishes in deep plain nets).
Values stay tensors until the epoch ends (no device sync per step) and are logged in one batch per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn

from reslab.models.blocks import Block

Rows = list[tuple[str, float, int]]


class GradientProbe(pl.Callback):
    """Every `every` steps, tap each block and read the gradients of that step; `sink` receives
    (metric, value, step) rows at each epoch end."""

    def __init__(self, every: int, sink: Callable[[Rows], None] | None = None) -> None:
        if every <= 0:
            raise ValueError(f"telemetry interval must be positive, got {every}")
        self.every = every
        self.sink = sink
        self.blocks: list[Block] = []
        self.weights: list[tuple[str, nn.Parameter]] = []
        self._armed = False
        self._current: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: list[tuple[int, list[str], torch.Tensor]] = []
        self.history: Rows = []  # everything recorded, for callers without a sink (tests, notebooks)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = pl_module.net
        self.blocks = [m for m in net.modules() if isinstance(m, Block)]
        self.weights = [(n, p) for n, p in net.named_parameters() if p.dim() > 1 and p.requires_grad]

    # -- arming: taps and output hooks exist only on probed steps ------------------------------------------------
    def arm(self) -> None:
        self._armed = True
        self._current = {}
        for i, block in enumerate(self.blocks):
            block.tap = self._tap(i)
            self._handles.append(block.register_forward_hook(self._output_hook(i)))

    def disarm(self) -> None:
        self._armed = False
        for block in self.blocks:
            block.tap = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, key: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self._current[key] = torch.linalg.vector_norm(grad.detach().float())

        return hook

    def _tap(self, i: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        def tap(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if not x.requires_grad:
                return x, x
            xb, xs = x.view_as(x), x.view_as(x)  # two autograd nodes: each sees only its own consumer's gradient
            xb.register_hook(self._record(f"grad_branch/b{i:03d}"))
            xs.register_hook(self._record(f"grad_shortcut/b{i:03d}"))
            return xb, xs

        return tap

    def _output_hook(self, i: int) -> Callable:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            if output.requires_grad:
                output.register_hook(self._record(f"grad_out/b{i:03d}"))

        return hook

    # -- Lightning hooks -------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every == 0:
            self.arm()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if not self._armed:
            return
        values = dict(sorted(self._current.items()))
        for i, block in enumerate(self.blocks):
            if block.gate is not None:
                values[f"gate/b{i:03d}"] = block.gate.a.detach().float()
        grads = [(n, p.grad) for n, p in self.weights if p.grad is not None]
        norms = torch._foreach_norm([g.detach().float() for _, g in grads]) if grads else []
        for j, ((name, _), norm) in enumerate(zip(grads, norms, strict=True)):
            values[f"grad_weight/{j:03d}.{name.removesuffix('.weight')}"] = norm
        if values:
            self._pending.append((trainer.global_step, list(values), torch.stack(list(values.values()))))
        self.disarm()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx: int) -> None:
        if self._armed:  # the step was skipped (no optimizer step): do not leave taps behind
            self.disarm()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(log=trainer.is_global_zero)  # under DDP every rank probes; rank 0 alone logs

    def flush(self, log: bool = True) -> None:
        rows: Rows = []
        for step, keys, vals in self._pending:
            rows.extend(zip(keys, vals.tolist(), [step] * len(keys), strict=True))
        self._pending.clear()
        self.history.extend(rows)
        if rows and log and self.sink is not None:
            self.sink(rows)
