"""Learning-rate schedules per iteration: linear warm-up, then cosine decay (to 0) or He et al. 2015's step decay
(x gamma at each milestone, e.g. /10 at 32k and 48k of 64k iterations), or constant.

He et al. warm ResNet-110 up at 0.01 before going back to 0.1; `warmup_start_factor=0.1` with a short warm-up is
that recipe in linear form."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

from reslab.train.config import TrainConfig


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor on cfg.lr at iteration `step` (0-based), for torch's LambdaLR."""
    total = cfg.total_steps(steps_per_epoch)
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    milestones = cfg.milestone_steps(total)
    start = cfg.warmup_start_factor

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            return cfg.gamma ** bisect_right(milestones, step)
        return 1.0

    return factor
