"""The training objective and its optimiser: the one loss and the one SGD every loop that trains a reslab net uses.

He et al. 2015 train their CIFAR ResNets by SGD with momentum 0.9 and weight decay 1e-4 on the mean cross-entropy
of a batch; the Keras example's convnet has a one-unit sigmoid head, whose loss is the binary cross-entropy of its
logit.
Lightning's training module, the signal probe at initialisation, the benchmarks' hand-written loop and packed
training all compute that loss and build that optimiser here, so the quantity a probe reports, the step a benchmark
times and the run a sweep trains cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.models.blocks import param_groups
from reslab.train.config import TrainConfig


def training_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (N, classes) against labels (N,), or binary cross-entropy with logits when the head
    has one output. Half-precision logits (bf16 autocast) are taken in fp32 first, as autocast itself does for
    these losses, so a loss computed outside an autocast region equals one computed inside; `reduction` as in
    `torch.nn.functional` ("none" gives each example's loss, for a pack's per-member means)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if logits.shape[1] == 1:
        logit = logits.squeeze(1)
        return F.binary_cross_entropy_with_logits(logit, y.to(logit.dtype), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def wrong_predictions(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The count of examples predicted wrong: the arg-max class, or a logit > 0 for a one-unit head."""
    if logits.shape[1] == 1:
        return ((logits.squeeze(1) > 0).long() != y).sum()
    return (logits.argmax(1) != y).sum()


def loss_and_wrong(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`training_loss` (batch mean) and `wrong_predictions` of one batch, what a training or evaluation step records."""
    return training_loss(logits, y), wrong_predictions(logits, y)


def sgd(
    params: nn.Module | Iterable[dict[str, Any]], cfg: TrainConfig, device: str | torch.device
) -> torch.optim.SGD:
    """The recipe's SGD (lr, momentum, Nesterov, weight decay from `cfg`). A net gets the groups of
    `reslab.models.blocks.param_groups` (each remedy's own lr factors, e.g. Fixup's scalars at a tenth); stacked
    parameters pass their groups ready-made. On CUDA it is the fused implementation (one kernel for all parameters
    instead of several per tensor, the same element-wise update); elsewhere the default one, so CPU results stay
    bit-identical across versions of this code."""
    groups = param_groups(params, cfg.lr) if isinstance(params, nn.Module) else list(params)
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **fused)  # fmt: skip
