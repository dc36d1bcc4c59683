"""The training objective and its optimiser: the one loss and the one optimiser builder every loop that trains a
reslab net uses.

He et al. 2015 train their CIFAR ResNets by SGD with momentum 0.9 and weight decay 1e-4 on the mean cross-entropy
of a batch; the Keras example's convnet has a one-unit sigmoid head, whose loss is the binary cross-entropy of its
logit. A language model (the `text` dataset) predicts the next token at every position: its loss is the
cross-entropy averaged over every position of every sequence, reported in bits per character as well (nats / ln 2,
`BITS_PER_NAT`), and Transformers train with AdamW (Loshchilov & Hutter 2019, decoupled weight decay), as GPT-2 and
nanoGPT do; `TrainConfig.optimizer` chooses, SGD staying the default.
Lightning's training module, the signal probe at initialisation, the benchmarks' hand-written loop and packed
training all compute that loss and build that optimiser here, so the quantity a probe reports, the step a benchmark
times and the run a sweep trains cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.models.blocks import param_groups
from reslab.train.config import TrainConfig

#: Bits per nat: a cross-entropy in nats times this is in bits (per character, for a character-level model).
BITS_PER_NAT = 1.0 / math.log(2.0)


def _one_unit_head(logits: torch.Tensor) -> bool:
    return logits.dim() == 2 and logits.shape[1] == 1


def training_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (N, classes) against labels (N,), or binary cross-entropy with logits when the head
    has one output, or for a sequence model, cross-entropy of logits (N, T, vocabulary) against next tokens (N, T)
    at every position. Half-precision logits (bf16 autocast) are taken in fp32 first, as autocast itself does for
    these losses, so a loss computed outside an autocast region equals one computed inside; `reduction` as in
    `torch.nn.functional` ("none" gives each example's loss, each position's for sequences, for a pack's
    per-member means; "mean" averages over every prediction)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if _one_unit_head(logits):
        logit = logits.squeeze(1)
        return F.binary_cross_entropy_with_logits(logit, y.to(logit.dtype), reduction=reduction)
    if logits.dim() == 3:
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction=reduction)
        return loss.view(y.shape) if reduction == "none" else loss
    return F.cross_entropy(logits, y, reduction=reduction)


def wrong_predictions(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The count of predictions that are wrong: the arg-max class (at every position, for sequences), or a logit > 0
    for a one-unit head."""
    if _one_unit_head(logits):
        return ((logits.squeeze(1) > 0).long() != y).sum()
    return (logits.argmax(-1) != y).sum()


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


def adamw(
    params: nn.Module | Iterable[dict[str, Any]], cfg: TrainConfig, device: str | torch.device
) -> torch.optim.AdamW:
    """The recipe's AdamW (lr, betas, eps and weight decay from `cfg`; Loshchilov & Hutter 2019: the decay is
    decoupled, each step shrinks a weight by lr x weight_decay, and it applies to every parameter, as SGD's does).
    Parameter groups (with a depth parametrization's lr and eps factors) and the fused CUDA implementation as for
    `sgd`. Its update is element by element, so a pack of stacked members steps each member as its solo run
    would."""
    groups = param_groups(params, cfg.lr, cfg.eps) if isinstance(params, nn.Module) else list(params)
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             **fused)  # fmt: skip


def build_optimizer(
    params: nn.Module | Iterable[dict[str, Any]], cfg: TrainConfig, device: str | torch.device
) -> torch.optim.Optimizer:
    """The optimiser `cfg.optimizer` names (`sgd` or `adamw`), the one every training loop builds."""
    return {"sgd": sgd, "adamw": adamw}[cfg.optimizer](params, cfg, device)
