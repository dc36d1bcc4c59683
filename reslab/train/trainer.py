"""`make_trainer`: the one Lightning `Trainer` reslab trains with.

`run_one` (every training of a sweep, a tuning trial or `reslab train`) and the overhead measurements in
`reslab.perf` (what `benchmarks/` time) build their trainer here, so a benchmark of the training step measures the
step that sweeps run: same accelerator mapping, precision, strategy, determinism and the same Lightning features
switched off (checkpoints, summaries, progress bars, sanity validation: reslab records its own results in MLflow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from reslab.train.config import TrainConfig

if TYPE_CHECKING:
    import lightning.pytorch as pl


def accelerator(device: str) -> str:
    """Lightning's accelerator name for a resolved torch device type ('cuda' is 'gpu' to Lightning)."""
    return {"cuda": "gpu"}.get(device, device)


def make_trainer(
    train: TrainConfig,
    device: str,
    *,
    callbacks: Sequence[pl.Callback] = (),
    max_steps: int | None = None,
    evaluate: bool = True,
) -> pl.Trainer:
    """A Trainer for `train` on the resolved `device` ('cpu', 'cuda', 'mps'), with no logger: `run_one` attaches
    its MLflow logger once the run exists. `max_steps` overrides the recipe's length (timing loops run a fixed
    number of steps); `evaluate=False` skips the per-epoch evaluation, so timed steps are training steps only.
    Deterministic algorithms default to on for the CPU only: on CUDA they restrict cuDNN to its deterministic
    kernels and make ops without one raise (torch's reproducibility notes), a choice a recipe makes explicitly.
    Without them, cuDNN autotunes its convolution algorithms on CUDA (`torch.backends.cudnn.benchmark`): faster,
    and one more reason GPU results differ from run to run."""
    import lightning.pytorch as pl

    steps = max_steps or train.max_steps
    acc = accelerator(device)
    deterministic = train.deterministic if train.deterministic is not None else acc == "cpu"
    return pl.Trainer(
        accelerator=acc,
        devices=train.devices,
        strategy=train.strategy,
        precision=train.precision,
        max_epochs=-1 if steps else train.epochs,
        max_steps=steps or -1,
        logger=False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if evaluate else 0,
        deterministic=deterministic,
        benchmark=acc == "gpu" and not deterministic,
        gradient_clip_val=train.clip_grad_norm,
        gradient_clip_algorithm="norm",
        default_root_dir=None,
    )
