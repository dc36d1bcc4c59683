"""The training step sweeps run (group `train_step`): reslab's real step, optimizer, schedule and gradient telemetry
included, with the recipe of configs/cifar10-he2015.yaml (batch 128, CIFAR-shaped synthetic data: CIFAR itself is
not needed to time it), per depth and variant, one cell alone and several at once on one device.

Variants: `eager-fp32` is the step as reslab ran it before it compiled anything (fp32, eager, NCHW); `fast-fp32`
and `fast-bf16` are the step with the execution settings' defaults (`train.compile: auto`, channels-last on CUDA)
in fp32 and in bf16 autocast. Each result's extra_info holds the aggregate cells x images/s (mean step time over
the timed window, the telemetry's eager steps included, as a run's wall time is made of), the compile and warm-up
time, the achieved TFLOP/s and the fraction of the datasheet peak: what `reslab bench-report --project` projects
a sweep's wall time from.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from benchmarks.conftest import cuda
from reslab.data.registry import load_dataset
from reslab.devices import compile_mode
from reslab.models import NetSpec, describe
from reslab.perf import (
    StepTiming,
    concurrent_step_times,
    device_name,
    lightning_step_times,
    rate_info,
)
from reslab.train.config import DataConfig, TrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar10-he2015.yaml"
SHAPE, CLASSES = (3, 32, 32), 10
DEPTHS = [20, 56, 110]
VARIANTS = {
    "eager-fp32": {"compile": "off", "channels_last": False, "precision": "32-true"},
    "fast-fp32": {"compile": "auto", "channels_last": None, "precision": "32-true"},
    "fast-bf16": {"compile": "auto", "channels_last": None, "precision": "bf16-mixed"},
}
#: On a CPU the compiled variants are the eager step (compile is off there by default) and bf16 is slower.
CPU_VARIANTS = ["eager-fp32"]
CONCURRENT = [4, 8] if cuda() else [2]
PACKS = [8, 16] if cuda() else [2]


@functools.cache
def he2015_recipe() -> TrainConfig:
    """The CIFAR config's training recipe: what the projection of its wall time must be measured with."""
    from reslab.sweep.config import load_config

    return load_config(CONFIG).train


def recipe(variant: str, device: str) -> TrainConfig:
    update = {**VARIANTS[variant], "device": device}
    if device == "cpu":
        update["threads"] = 1  # the sweep's CPU workers each take an equal share of the cores
    return he2015_recipe().model_copy(update=update)


def images(batch: int, batches: int) -> DataConfig:
    return DataConfig(name="synthetic", options={"shape": list(SHAPE), "num_classes": CLASSES,
                                                 "train_size": batch * batches, "test_size": batch})  # fmt: skip


def window(device: str, smoke: bool) -> tuple[int, int]:
    """(warm-up steps, timed steps): on CUDA enough steps to include the telemetry's eager ones, as a run does."""
    if smoke:
        return 1, 2
    return (5, 2 * he2015_recipe().telemetry_every) if device == "cuda" else (2, 6)


def record(benchmark, spec: NetSpec, cfg: TrainConfig, variant: str, kind: str, timings: list[StepTiming],
           device: str) -> dict:  # fmt: skip
    """extra_info of one measurement: aggregate rate of `timings` (one per concurrent cell), FLOP/s, peak."""
    macs = describe(spec, SHAPE, CLASSES).macs
    rate = sum(t.mean_images_per_s for t in timings)
    dtype = "bf16" if cfg.precision.startswith("bf16") else "fp32"
    info = benchmark.extra_info
    info.update(family=spec.family, block=spec.block, depth=spec.depth, width=spec.width, batch=cfg.batch_size,
                phase="train_step", variant=variant, kind=kind, cells=len(timings),
                step_s=max(t.mean_s or t.median_s for t in timings), compile_s=max(t.compile_s for t in timings),
                precision=cfg.precision, compile=compile_mode(cfg.compile, device) or "off",
                telemetry_every=cfg.telemetry_every, dtype=dtype, device=device_name(device),
                macs_per_image=macs)  # fmt: skip
    info.update(rate_info(macs, "forward_backward", rate, info["device"], dtype))
    return info


def _single(spec: NetSpec, cfg: TrainConfig, device: str, smoke: bool) -> StepTiming:
    warmup, steps = window(device, smoke)
    batch = 8 if smoke else cfg.batch_size
    cfg = cfg.model_copy(update={"batch_size": batch})
    splits = load_dataset("synthetic", images(batch, 16).options)
    return lightning_step_times(spec, splits, cfg, steps, warmup, sync_each_step=False)


def _concurrent(spec: NetSpec, cfg: TrainConfig, cells: int, device: str, smoke: bool) -> list[StepTiming]:
    warmup, steps = window(device, smoke)
    batch = 8 if smoke else cfg.batch_size
    return concurrent_step_times(spec, images(batch, 16), cfg.model_copy(update={"batch_size": batch}), cells,
                                 steps, warmup)  # fmt: skip


def _pack(spec: NetSpec, cells: int, device: str, smoke: bool) -> StepTiming:
    """A pack of `cells` seeds (`benchmarks/pack.py`) with the recipe's precision on CUDA, fp32 on the CPU."""
    from benchmarks.pack import packed_step_times

    warmup, steps = window(device, smoke)
    batch = 8 if smoke else he2015_recipe().batch_size
    precision = he2015_recipe().precision if device == "cuda" else "32-true"
    cfg = recipe("eager-fp32", device).model_copy(update={"batch_size": batch, "precision": precision})
    return packed_step_times(spec, range(cells), load_dataset("synthetic", images(batch, 16).options), cfg,
                             min(steps, 50), warmup, device)  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS) if cuda() else CPU_VARIANTS)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("block", ["plain", "residual"])
def test_train_step(benchmark, block: str, depth: int, variant: str, device: str, smoke: bool) -> None:
    if variant == "fast-fp32" and (depth != 56 or block != "residual"):
        pytest.skip("fast-fp32 is measured on residual-56 only: each compiled variant costs a compilation")
    spec, cfg = NetSpec("resnet", block, depth, 16), recipe(variant, device)
    benchmark.group = "train_step"
    timing: list[StepTiming] = []
    benchmark.pedantic(lambda: timing.append(_single(spec, cfg, device, smoke)), rounds=1, iterations=1)
    record(benchmark, spec, cfg, variant, "single", timing, device)


@pytest.mark.parametrize("cells", CONCURRENT)
@pytest.mark.parametrize("depth", DEPTHS if cuda() else [20])
def test_train_step_concurrent(benchmark, depth: int, cells: int, device: str, smoke: bool) -> None:
    """N cells at once, each in its own worker process on the one device (a sweep with N workers per GPU)."""
    variant = "fast-bf16" if device == "cuda" else "eager-fp32"
    spec, cfg = NetSpec("resnet", "residual", depth, 16), recipe(variant, device)
    benchmark.group = "train_step"
    timings: list[list[StepTiming]] = []
    benchmark.pedantic(lambda: timings.append(_concurrent(spec, cfg, cells, device, smoke)), rounds=1, iterations=1)
    record(benchmark, spec, cfg, variant, "concurrent", timings[-1], device)


def test_resnet56_speedup(benchmark, device: str, smoke: bool) -> None:
    """ResNet-56's training step as cells x images/s: the fastest way reslab can run it on this device against one
    cell of the eager fp32 step, measured side by side in one run (the target on a GPU: 10x)."""
    spec = NetSpec("resnet", "residual", 56, 16)
    benchmark.group = "train_step"
    rates: dict[str, float] = {}

    def measure() -> None:
        rates["eager-fp32 x1"] = _single(spec, recipe("eager-fp32", device), device, smoke).mean_images_per_s
        fast = "fast-bf16" if device == "cuda" else "eager-fp32"
        rates[f"{fast} x1"] = _single(spec, recipe(fast, device), device, smoke).mean_images_per_s
        for cells in CONCURRENT:
            timings = _concurrent(spec, recipe(fast, device), cells, device, smoke)
            rates[f"{fast} x{cells}"] = sum(t.mean_images_per_s for t in timings)
        for cells in PACKS:
            rates[f"pack{cells}"] = _pack(spec, cells, device, smoke).images_per_s

    benchmark.pedantic(measure, rounds=1, iterations=1)
    best = max(rates, key=rates.get)
    benchmark.extra_info.update(rates=rates, best=best, ratio=rates[best] / rates["eager-fp32 x1"],
                                target_ratio_min=10.0 if device == "cuda" else None, device=device_name(device),
                                what=f"ResNet-56 train step, cells x images/s: {best} over eager-fp32 x1")  # fmt: skip
