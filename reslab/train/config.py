"""`TrainConfig`: the frozen, validated training recipe of one run.

Defaults are the recipe that shows the degradation problem on MNIST-1D in minutes: SGD 0.1 with momentum 0.9,
weight decay 1e-4, batch 128, cosine decay after 2 linear warm-up epochs (`warmup_epochs=0`: none at all, the
first step at the peak rate). Transformers train with `optimizer="adamw"` instead. He et al. 2015's CIFAR recipe is
`max_steps=64000, schedule="step", milestones=(32000, 48000)` (lr / 10 at 32k and 48k iterations).
pydantic validates it, so a sweep config reports every bad field at once, each with its path.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reslab.devices import COMPILE_MODES

#: Lightning's registered strategies and "auto" (a test keeps this equal to Lightning's StrategyRegistry, so the
#: config can refuse a bad name without importing Lightning).
STRATEGIES = (
    "auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true", "ddp_fork",
    "ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true", "ddp_notebook",
    "ddp_notebook_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true", "ddp_spawn",
    "ddp_spawn_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true", "deepspeed",
    "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
    "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload", "single_device",
    "single_tpu", "single_xla", "xla", "xla_debug",
)  # fmt: skip
CompileMode = Literal[COMPILE_MODES]
#: What Lightning's `devices` takes as text: "auto", "-1" (all), a count, or device indices "0,1" / "2,".
_DEVICES_TEXT = re.compile(r"auto|-1|\d+|\d+(,\d+)*,?")


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(20, gt=0, description="training epochs (ignored when max_steps is set)")
    max_steps: int | None = Field(None, gt=0, description="training iterations, as He et al. count them")
    batch_size: int = Field(128, gt=0, description="training batch size")
    eval_batch_size: int = Field(1000, gt=0, description="batch size of the evaluation passes")
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd (He et al.'s recipe: momentum, nesterov) or adamw (decoupled weight decay, "
        "Loshchilov & Hutter 2019; betas, eps), the Transformers' optimiser"
    )  # fmt: skip
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="AdamW: decay rates of the running mean of the gradient and of its square"
    )
    eps: float = Field(1e-8, gt=0, description="AdamW: added to the root of the squared-gradient mean")
    weight_decay: float = Field(
        1e-4, ge=0, description="weight decay (SGD: L2 in the gradient; AdamW: decoupled, lr x this per step)"
    )
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="learning-rate schedule")
    milestones: tuple[float, ...] = Field(
        (0.5, 0.75), description="step schedule: fractions of training (< 1) or iteration numbers (>= 1), e.g. "
        "32000,48000"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: lr factor at each milestone")
    warmup_epochs: float = Field(2.0, ge=0, description="linear warm-up length in epochs")
    warmup_start_factor: float = Field(0.1, gt=0, le=1, description="warm-up starts at lr x this (He: 0.01/0.1)")
    seed: int = Field(0, ge=0, description="seed of the initialisation, data order and augmentation")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="training device")
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field("32-true", description="Lightning precision")
    devices: int | str = Field(1, description="Lightning devices: a count, 'auto', or a list like '0,1'")
    strategy: str = Field("auto", description="Lightning strategy, e.g. ddp")
    telemetry_every: int = Field(10, gt=0, description="gradient telemetry every K training steps")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the gradient's global norm to this before each step (off: the papers' recipes "
        "do not clip; deep nets without normalisation may need it at a high learning rate)"
    )  # fmt: skip
    probe: bool = Field(
        True, description="measure the signal at initialisation before the first step (reslab probe: per-block rows "
        "in telemetry.csv, five probe/ metrics); on a copy of the net with every RNG state kept, so the training is "
        "the same with or without it"
    )  # fmt: skip
    compile: CompileMode = Field(
        "auto", description="torch.compile the training step: auto (reduce-overhead on CUDA, off on the CPU), off, "
        "or a torch.compile mode; a failed compilation warns once and the run goes on eagerly"
    )  # fmt: skip
    channels_last: bool | None = Field(
        None, description="2-D activations in channels-last (NHWC) memory format (default: on CUDA)"
    )
    drop_last: bool = Field(False, description="drop the last incomplete training batch of each epoch")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    deterministic: bool | None = Field(None, description="deterministic algorithms (default: on CPU only)")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        valid = "a count >= 1, -1 (all), 'auto', or device indices such as '0,1' or [0, 1]"
        if isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
            return ",".join(map(str, v))
        if isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1):
            return v
        if isinstance(v, str) and _DEVICES_TEXT.fullmatch(v.strip().replace(" ", "")) and v.strip() != "0":
            text = v.strip().replace(" ", "")
            return int(text) if text.lstrip("-").isdigit() and "," not in text else text
        raise ValueError(f"devices {v!r} is not one Lightning accepts; valid: {valid}")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must each be in [0, 1), got {list(v)}")
        return v

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; valid: {', '.join(STRATEGIES)}")
        return v

    @model_validator(mode="after")
    def _milestones_increase(self) -> TrainConfig:
        if list(self.milestones) != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            raise ValueError(f"milestones must be positive and increasing, got {list(self.milestones)}")
        return self

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch

    def num_epochs(self, steps_per_epoch: int) -> int:
        """Epochs to run: `epochs`, or enough to cover max_steps (Lightning stops at max_steps exactly)."""
        if self.max_steps is None:
            return self.epochs
        return math.ceil(self.max_steps / steps_per_epoch)

    def milestone_steps(self, total_steps: int) -> list[int]:
        return [round(m * total_steps) if m < 1 else int(m) for m in self.milestones]


class DataConfig(BaseModel):
    """Which dataset, with which options (see `reslab.data.catalog.DATASET_INFO[name].options()`), cached where."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "mnist1d"
    options: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None

    @model_validator(mode="after")
    def _known(self) -> DataConfig:
        from reslab.data.catalog import DATASET_INFO

        if self.name not in DATASET_INFO:
            raise ValueError(f"unknown dataset {self.name!r}; valid: {', '.join(DATASET_INFO)}")
        valid = DATASET_INFO[self.name].options()
        unknown = sorted(set(self.options) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for dataset {self.name!r}; valid: {', '.join(valid) or 'none'}"
            )
        wrong = [f"{k}={v!r} (expected {_kind(valid[k])})" for k, v in self.options.items() if not _fits(v, valid[k])]
        if wrong:
            raise ValueError(f"dataset {self.name!r} option(s) of the wrong type: {', '.join(wrong)}")
        problem = DATASET_INFO[self.name].problem(self.options)  # e.g. a text file that cannot be read
        if problem:
            raise ValueError(f"dataset {self.name!r}: {problem}")
        return self


def _kind(default: object) -> str:
    if isinstance(default, (tuple, list)):
        return "a list"
    return "a number" if type(default) in (int, float) else type(default).__name__


def _fits(value: object, default: object) -> bool:
    """A dataset option's value has its default's type (a number where the default is a number; anything where the
    default is None, which means 'not set')."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or float(value).is_integer())
    if isinstance(default, (tuple, list)):  # YAML has lists only
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


class TrackingConfig(BaseModel):
    """Where runs are recorded: `uri` None means --tracking-uri / $MLFLOW_TRACKING_URI / sqlite:///./mlflow.db."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str | None = None
    experiment: str = Field("reslab", min_length=1)
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(1.0, gt=0, description="seconds between system metric samples")


def optimizer_problem(parametrization: str, optimizer: str) -> str | None:
    """One line when a depth parametrization is not defined for the optimiser: CompleteP's rules are for Adam(W)
    only (Dey et al. 2025); depth-muP has rules for both SGD and Adam (Yang et al. 2023)."""
    if parametrization == "completep" and optimizer != "adamw":
        return (f"parametrization completep is defined for AdamW only (Dey et al. 2025), not optimizer {optimizer}: "
                f"set train.optimizer adamw (--optimizer adamw), or use depth_mup, whose SGD rule keeps the lr")
    return None
