"""Timing discipline for reslab's own overheads: the training step in Lightning vs a plain PyTorch loop, the data
path vs the model, gradient telemetry vs none.

As nanoGPT's bench.py and timm's benchmark.py do: warm up first, synchronise the device inside the timed region,
take medians over many steps (robust on a shared machine), and report rates. Used by benchmarks/ (pytest-benchmark)
and by `python benchmarks/measure_training.py`.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reslab.data.tensors import DeviceBatches, Split, Splits
from reslab.devices import sync
from reslab.models import NetSpec, build_net
from reslab.models.blocks import param_groups
from reslab.train.config import TrainConfig
from reslab.train.schedule import lr_lambda


@dataclass(frozen=True)
class StepTiming:
    median_s: float
    steps: int
    batch_size: int

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.median_s


def plain_loop_step_times(
    spec: NetSpec, splits: Splits, cfg: TrainConfig, steps: int, warmup: int = 3, device: str = "cpu"
) -> StepTiming:
    """The loop a researcher writes by hand: forward, cross-entropy, backward, SGD step, schedule step."""
    torch.manual_seed(cfg.seed)
    net = build_net(spec, splits.input_shape, splits.num_classes).to(device)
    opt = torch.optim.SGD(
        param_groups(net, cfg.lr), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    batches = DeviceBatches(splits.train.to(device), cfg.batch_size, shuffle=True, seed=cfg.seed)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, len(batches)))
    ends: list[float] = [time.perf_counter()]
    net.train()
    while len(ends) <= warmup + steps:
        for x, y in batches:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sync(device)
            ends.append(time.perf_counter())
            if len(ends) > warmup + steps:
                break
    return _timing(ends, warmup, steps, cfg.batch_size)


def _timing(ends: list[float], warmup: int, steps: int, batch_size: int) -> StepTiming:
    """Median of the intervals between consecutive step ends (data fetch and loop bookkeeping included)."""
    intervals = [b - a for a, b in itertools.pairwise(ends)]
    return StepTiming(statistics.median(intervals[warmup:]), steps, batch_size)


def lightning_step_times(
    spec: NetSpec, splits: Splits, cfg: TrainConfig, steps: int, warmup: int = 3, telemetry: bool = True
) -> StepTiming:
    """reslab's training step as `run_one` runs it (ResLabModule + GradientProbe every cfg.telemetry_every steps,
    the trainer `make_trainer` builds for sweeps, no tracking, no evaluation), timed from batch start to batch
    end."""
    import lightning.pytorch as pl

    from reslab.data.datamodule import TensorDataModule
    from reslab.train.module import ResLabModule
    from reslab.train.run import quiet_lightning, resolve_device
    from reslab.train.telemetry import GradientProbe
    from reslab.train.trainer import make_trainer

    quiet_lightning()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    net = build_net(spec, splits.input_shape, splits.num_classes)
    dm = TensorDataModule(splits, cfg.batch_size, seed=cfg.seed, device=device)
    timer = _BatchTimer(device)
    callbacks: list[pl.Callback] = [timer]
    if telemetry:
        callbacks.insert(0, GradientProbe(cfg.telemetry_every))
    trainer = make_trainer(cfg, device, callbacks=callbacks, max_steps=warmup + steps, evaluate=False)
    trainer.fit(ResLabModule(net, cfg, dm.eval_names), datamodule=dm)
    return _timing(timer.ends, warmup, steps, cfg.batch_size)


def lightning_over_plain(
    spec: NetSpec, splits: Splits, cfg: TrainConfig, steps: int, rounds: int = 3, device: str = "cpu"
) -> tuple[StepTiming, StepTiming]:
    """(plain, Lightning) step timings, best of `rounds` alternating measurements: on a shared, noisy machine the
    load drifts between two back-to-back measurements, and alternating them with the best of each (timeit's rule)
    compares the two loops rather than two moments of the machine."""
    plain, light = [], []
    for _ in range(rounds):
        plain.append(plain_loop_step_times(spec, splits, cfg, steps, device=device))
        light.append(lightning_step_times(spec, splits, cfg, steps))
    return min(plain, key=lambda t: t.median_s), min(light, key=lambda t: t.median_s)


class _BatchTimer:
    """A Lightning callback that stamps the end of each training batch (fit start is the first stamp)."""

    def __new__(cls, device: str):
        import lightning.pytorch as pl

        class BatchTimer(pl.Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_train_start(self, trainer, pl_module) -> None:
                self.ends.append(time.perf_counter())

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                sync(device)
                self.ends.append(time.perf_counter())

        return BatchTimer()


def data_path_images_per_s(
    split: Split, batch_size: int, transform: Callable | None = None, epochs: int = 3, device: str = "cpu"
) -> float:
    """Images/s of the batch iterator alone (shuffle, gather, transform), what the model is fed at most."""
    batches = DeviceBatches(split.to(device), batch_size, shuffle=True, transform=transform)
    for _ in batches:  # warm-up epoch
        pass
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for _, y in batches:
            n += y.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


# -- throughput benchmarks (benchmarks/) ------------------------------------------------------------------------------

#: Dense peak TFLOP/s of known GPUs by dtype (vendor datasheets, no sparsity), for the fraction of peak reached.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def peak_tflops(name: str, dtype: str) -> float | None:
    """The datasheet peak of GPU `name` for `dtype` ('fp32' convs on CUDA run as TF32 by default), or None."""
    for key, peaks in PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            if dtype == "fp32" and torch.backends.cudnn.allow_tf32:
                return peaks["tf32"]
            return peaks.get(dtype)
    return None


def train_flops_per_image(macs: int, phase: str) -> float:
    """FLOPs per image: 2 per MAC forward; a backward pass costs about twice its forward (input and weight
    gradients), so forward+backward counts 3 forwards."""
    return 2.0 * macs * (3.0 if phase == "forward_backward" else 1.0)


def saved_activation_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward of one forward pass (each storage counted once): the
    activation memory a training step needs, measured on any device."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum().backward()
    net.zero_grad(set_to_none=True)
    return sum(seen.values())


def median_step_s(fn: Callable[[], None], device: str, steps: int, warmup: int = 2) -> float:
    """Median seconds of `fn` over `steps` calls after `warmup`, the device synchronised inside each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def linear_fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least squares y = intercept + slope * x, with R² (how linear the growth is)."""
    import numpy as np

    xs, ys = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (intercept + slope * xs)
    total = ((ys - ys.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}
