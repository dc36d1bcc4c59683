"""Where a training step's time goes: a `torch.profiler` trace of reslab's real step, summed per step.

The question for He et al.'s small CIFAR nets on a GPU is whether a step waits for the device (kernels that are
slow or at low occupancy), or the device waits for the host (hundreds of kernel launches, Python and framework
overhead between them). The two call for different fixes (bigger or fused kernels vs CUDA graphs and fewer
launches), so the profile measures both sides: the wall time per step, the time kernels ran on the device, the
kernels launched, and the operators that took the most time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from reslab.devices import sync
from reslab.models import NetSpec
from reslab.train.config import TrainConfig


@dataclass(frozen=True)
class StepProfile:
    name: str
    device: str
    steps: int
    wall_ms: float  # per step, the device synchronised at both ends of the profiled window
    device_ms: float | None  # kernel time per step (None on the CPU)
    kernels: float  # kernels launched per step (0 on the CPU)
    host_ops: float  # operator calls per step
    top: list[tuple[str, float, float]] = field(default_factory=list)  # (operator, self ms per step, calls per step)

    @property
    def busy(self) -> float | None:
        """The fraction of the step the device computes (None on the CPU)."""
        return None if self.device_ms is None else min(1.0, self.device_ms / self.wall_ms)

    def finding(self) -> str:
        """One sentence: what bounds the step, and so which fix the numbers call for."""
        top = ", ".join(f"{op} {ms:.2f} ms" for op, ms, _ in self.top[:3])
        if self.busy is None:
            return (f"{self.name}: {self.wall_ms:.1f} ms a step on the CPU, {self.host_ops:.0f} operator calls; "
                    f"top: {top}")  # fmt: skip
        per_kernel_us = 1e3 * self.wall_ms / self.kernels if self.kernels else float("nan")
        if self.busy < 0.5:
            return (f"{self.name}: host-bound: the GPU computes {100 * self.busy:.0f} % of a {self.wall_ms:.2f} ms "
                    f"step; {self.kernels:.0f} kernels a step, {per_kernel_us:.1f} us of step per kernel, so launch "
                    f"and framework overhead dominate (CUDA graphs / compilation remove it); top: {top}")  # fmt: skip
        return (f"{self.name}: device-bound: the GPU computes {100 * self.busy:.0f} % of a {self.wall_ms:.2f} ms step "
                f"({self.kernels:.0f} kernels); the kernels themselves are the cost; top: {top}")  # fmt: skip


def summarize(events: object, steps: int, wall_s: float, device: str, name: str, top: int = 10) -> StepProfile:
    """A StepProfile from a profiler's `key_averages()` over `steps` steps that took `wall_s`."""
    on_cuda = device == "cuda"
    rows = []
    kernels = calls = 0.0
    device_us = 0.0
    for avg in events:
        calls += avg.count
        self_us = avg.self_device_time_total if on_cuda else avg.self_cpu_time_total
        if on_cuda and avg.device_type == torch.autograd.DeviceType.CUDA:
            kernels += avg.count
            device_us += avg.self_device_time_total
        rows.append((avg.key, self_us / 1e3 / steps, avg.count / steps))
    rows.sort(key=lambda r: -r[1])
    return StepProfile(
        name=name, device=device, steps=steps, wall_ms=1e3 * wall_s / steps,
        device_ms=device_us / 1e3 / steps if on_cuda else None, kernels=kernels / steps, host_ops=calls / steps,
        top=[(op, round(ms, 4), round(n, 2)) for op, ms, n in rows[:top]],
    )  # fmt: skip


def profile_step(
    spec: NetSpec, cfg: TrainConfig, steps: int = 20, warmup: int = 5, trace: str | Path | None = None
) -> StepProfile:
    """Profile `steps` of reslab's training step (Lightning, telemetry at cfg.telemetry_every, the optimizer) on
    CIFAR-shaped synthetic data after `warmup` steps (compilation, cuDNN autotuning); `trace` writes the Chrome
    trace (open it in Perfetto or chrome://tracing)."""
    import lightning.pytorch as pl
    from torch.profiler import ProfilerActivity, profile

    from reslab.data.registry import load_dataset
    from reslab.devices import resolve_device
    from reslab.perf import lightning_step_times

    device = resolve_device(cfg.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    window: dict[str, object] = {}

    class Window(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                sync(device)
                window["profiler"] = prof = profile(activities=activities)
                prof.start()
                window["t0"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == warmup + steps:
                sync(device)
                window["wall_s"] = time.perf_counter() - window["t0"]
                window["profiler"].stop()

    splits = load_dataset("synthetic", {"shape": [3, 32, 32], "train_size": cfg.batch_size * 16,
                                        "test_size": cfg.batch_size})  # fmt: skip
    lightning_step_times(spec, splits, cfg, steps, warmup, sync_each_step=False, callbacks=[Window()])
    prof = window["profiler"]
    if trace is not None:
        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    return summarize(prof.key_averages(), steps, window["wall_s"], device, spec.name)


def write_profiles(profiles: list[StepProfile], path: str | Path) -> None:
    Path(path).write_text(json.dumps([{**asdict(p), "busy": p.busy, "finding": p.finding()} for p in profiles],
                                     indent=1))  # fmt: skip
