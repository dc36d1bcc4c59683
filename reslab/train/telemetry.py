"""Gradient telemetry: the gradient-norm experiment of the "Residual connection" explainer, in every run.

That experiment tracks the gradient norm at the input of a block through the block (x_in) and through the residual
connection (x_res): early in training the shortcut carries the clear signal and the branch a weak one; later they
swap. `GradientProbe` records, every K training steps and inside the backward pass training runs anyway:
- per block: the gradient norm reaching the block input through the branch F and through the shortcut, and the
  gradient norm at the block output (at init a rezero block's branch gradient is 0 and its shortcut gradient is
  its output gradient): keys `grad_branch/bNNN`, `grad_shortcut/bNNN`, `grad_out/bNNN`;
- per block: the root mean square of its output, the residual stream after the block (`act/bNNN`): the depth
  coordinate check (`reslab.report.coordinate`) reads it at the last block at step 0 and at the next probed step;
- per rezero block: the gate a (`gate/bNNN`);
- per layer: the norm of the weight gradient, what vanishes in deep plain nets (`grad_weight/LLL.<parameter>`).
Values stay tensors until the epoch ends (no device sync per step) and are read in one transfer per epoch.

Their number grows with depth (3,602 per probed step for a residual ResNet-1202), and an MLflow run with thousands
of metric keys makes the UI and run search crawl. So they all go to one artifact per run, `telemetry.csv`
(`step,key,value` lines, what the report reads), and MLflow gets a fixed handful of series per probed step, enough
to see in the UI how the gradient norm changes from the last block back to the first and how much of it the
shortcut carries:
- `telemetry/grad_out_first`, `telemetry/grad_out_middle`, `telemetry/grad_out_last`: the gradient norm at the
  output of the first, middle (index n // 2) and last block;
- `telemetry/shortcut_share_last`: grad_shortcut / (grad_branch + grad_shortcut) at the deepest block with a
  shortcut, the share of the signal the shortcut carries there (absent for plain nets);
- `telemetry/grad_weight_first`, `telemetry/grad_weight_last`: the weight-gradient norm of the first layer (the
  stem) and of the last (the head);
- `telemetry/gate_mean`: the mean rezero gate a (rezero nets only).

The same artifact holds, at step 0, the probe of the signal at initialisation that `reslab.train.run` takes before
the first step (`reslab.probe.result`: keys `probe_act/bNNN`, `probe_grad_in/bNNN`, `probe_grad_out/bNNN`,
`probe_share/bNNN`, `probe_cmap/bNNN` and the whole net's `probe_net/<name>`; its five MLflow metrics are
`probe/<name>`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn

from reslab.models.blocks import Block

Rows = list[tuple[str, float, int]]

ARTIFACT = "telemetry.csv"
SUMMARY_PREFIX = "telemetry/"


def summarize_step(values: dict[str, float], n_blocks: int) -> dict[str, float]:
    """The MLflow summary series of one probed step, from its per-block and per-layer `values` (see the module
    docstring); a series whose values were not recorded at that step (a plain net's shortcut share, a gate outside
    rezero nets) is left out."""
    out: dict[str, float] = {}
    if n_blocks:
        for name, i in (("first", 0), ("middle", n_blocks // 2), ("last", n_blocks - 1)):
            if (key := f"grad_out/b{i:03d}") in values:
                out[f"grad_out_{name}"] = values[key]
    for i in reversed(range(n_blocks)):
        shortcut = values.get(f"grad_shortcut/b{i:03d}")
        if shortcut is not None:
            total = values.get(f"grad_branch/b{i:03d}", 0.0) + shortcut
            if total > 0:
                out["shortcut_share_last"] = shortcut / total
            break
    weights = [v for k, v in values.items() if k.startswith("grad_weight/")]  # in layer order, as recorded
    if weights:
        out["grad_weight_first"], out["grad_weight_last"] = weights[0], weights[-1]
    gates = [v for k, v in values.items() if k.startswith("gate/")]
    if gates:
        out["gate_mean"] = sum(gates) / len(gates)
    return {SUMMARY_PREFIX + k: v for k, v in out.items()}


def telemetry_csv(rows: Rows) -> str:
    """`rows` as the text of the `telemetry.csv` artifact (`step,key,value`; repr keeps every float exact)."""
    lines = ["step,key,value", *(f"{step},{key},{value!r}" for key, value, step in rows)]
    return "\n".join(lines) + "\n"


class GradientProbe(pl.Callback):
    """Every `every` steps, tap each block and read the gradients of that step. `history` keeps every per-block
    and per-layer (metric, value, step) row; `sink` receives the summary rows (`summarize_step`) at each epoch
    end."""

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
        self._module: pl.LightningModule | None = None
        self.history: Rows = []  # every per-block and per-layer row recorded: the telemetry.csv artifact

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        net = pl_module.net
        self._module = pl_module
        self.blocks = [m for m in net.modules() if isinstance(m, Block)]
        self.weights = [(n, p) for n, p in net.named_parameters() if p.dim() > 1 and p.requires_grad]

    # -- arming: taps and output hooks exist only on probed steps ------------------------------------------------
    def arm(self) -> None:
        """Tap the blocks for one step. The step runs eagerly (a compiled step would not see the taps)."""
        self._armed = True
        self._eager(True)
        self._current = {}
        for i, block in enumerate(self.blocks):
            block.tap = self._tap(i)
            self._handles.append(block.register_forward_hook(self._output_hook(i)))

    def disarm(self) -> None:
        self._armed = False
        self._eager(False)
        for block in self.blocks:
            block.tap = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _eager(self, on: bool) -> None:
        if self._module is not None and hasattr(self._module, "eager_step"):
            self._module.eager_step = on

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
            self._current[f"act/b{i:03d}"] = torch.linalg.vector_norm(output.detach().float()) / math.sqrt(
                max(output.numel(), 1))
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

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.disarm()  # a step cut short must not leave hooks on a net its caller may keep

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(log=trainer.is_global_zero)  # under DDP every rank probes; rank 0 alone logs

    def flush(self, log: bool = True) -> None:
        """Read the values of the steps probed since the last flush into `history` (one device transfer for all of
        them), and, with `log`, hand their summaries to `sink`."""
        rows: Rows = []
        summaries: Rows = []
        flat = torch.cat([vals for _, _, vals in self._pending]).tolist() if self._pending else []
        start = 0
        for step, keys, _ in self._pending:
            values = dict(zip(keys, flat[start : start + len(keys)], strict=True))
            start += len(keys)
            rows.extend((key, value, step) for key, value in values.items())
            summaries.extend((key, value, step) for key, value in summarize_step(values, len(self.blocks)).items())
        self._pending.clear()
        self.history.extend(rows)
        if summaries and log and self.sink is not None:
            self.sink(summaries)
