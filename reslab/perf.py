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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from reslab.data.tensors import DeviceBatches, Split, Splits
from reslab.devices import sync
from reslab.models import NetSpec, build_net
from reslab.train.config import DataConfig, TrainConfig
from reslab.train.objective import build_optimizer, training_loss
from reslab.train.schedule import lr_lambda


@dataclass(frozen=True)
class StepTiming:
    """Step times of one training loop: the median (the typical step), the mean (what a run's wall time is made of,
    the eager telemetry steps among compiled ones included) and the warm-up's total (compilation and autotuning
    happen in the first steps)."""

    median_s: float
    steps: int
    batch_size: int
    mean_s: float | None = None
    warmup_s: float = 0.0
    warmup_steps: int = 0

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.median_s

    @property
    def mean_images_per_s(self) -> float:
        return self.batch_size / (self.mean_s or self.median_s)

    @property
    def compile_s(self) -> float:
        """The warm-up's time beyond that many ordinary steps: what compiling and autotuning add to a run."""
        return max(0.0, self.warmup_s - self.warmup_steps * (self.mean_s or self.median_s))


def plain_loop_step_times(
    spec: NetSpec, splits: Splits, cfg: TrainConfig, steps: int, warmup: int = 3, device: str = "cpu"
) -> StepTiming:
    """The loop a researcher writes by hand: forward, the training loss, backward, optimiser step, schedule step
    (loss, optimiser and batches are the ones reslab trains with, `reslab.train.objective`, `Splits.train_batches`)."""
    torch.manual_seed(cfg.seed)
    net = build_net(spec, splits.input_shape, splits.num_classes).to(device)
    opt = build_optimizer(net, cfg, device)
    batches = splits.to(device).train_batches(cfg.batch_size, seed=cfg.seed)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, len(batches)))
    ends: list[float] = [time.perf_counter()]
    net.train()
    while len(ends) <= warmup + steps:
        for x, y in batches:
            loss = training_loss(net(x), y)
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
    """Median and mean of the intervals between consecutive step ends (data fetch and loop bookkeeping included),
    after `warmup` steps whose total is kept."""
    intervals = [b - a for a, b in itertools.pairwise(ends)]
    timed = intervals[warmup:]
    return StepTiming(statistics.median(timed), steps, batch_size, mean_s=statistics.fmean(timed),
                      warmup_s=sum(intervals[:warmup]), warmup_steps=warmup)  # fmt: skip


def lightning_step_times(
    spec: NetSpec,
    splits: Splits,
    cfg: TrainConfig,
    steps: int,
    warmup: int = 3,
    telemetry: bool = True,
    *,
    sync_each_step: bool = True,
    after_warmup: Callable[[], None] | None = None,
    callbacks: Sequence[object] = (),
) -> StepTiming:
    """reslab's training step as `run_one` runs it (ResLabModule + GradientProbe every cfg.telemetry_every steps,
    the trainer `make_trainer` builds for sweeps, no tracking, no evaluation), timed from batch start to batch
    end. `sync_each_step=False` synchronises the device only where the timed window starts and ends, as a run
    does (the host queues the next step while the device computes this one): the mean is then the window's, and
    the median equals it. `after_warmup` is called once the warm-up steps are done (a barrier for concurrent
    measurements). `callbacks` are more Lightning callbacks (a profiler's)."""
    from reslab.train.run import quiet_lightning, resolve_device

    quiet_lightning()
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _lightning_timing(spec, splits, cfg, steps, warmup, telemetry, device, sync_each_step, after_warmup,
                                 callbacks)  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _lightning_timing(
    spec, splits, cfg, steps, warmup, telemetry, device, sync_each_step, after_warmup, extra_callbacks
) -> StepTiming:
    import lightning.pytorch as pl

    from reslab.data.datamodule import TensorDataModule
    from reslab.train.module import ResLabModule
    from reslab.train.telemetry import GradientProbe
    from reslab.train.trainer import make_trainer

    torch.manual_seed(cfg.seed)
    net = build_net(spec, splits.input_shape, splits.num_classes)
    dm = TensorDataModule(splits, cfg.batch_size, seed=cfg.seed, device=device)
    timer = _BatchTimer(device, sync_at=None if sync_each_step else {warmup, warmup + steps}, after=after_warmup,
                        after_step=warmup)  # fmt: skip
    callbacks: list[pl.Callback] = [timer, *extra_callbacks]
    if telemetry:
        callbacks.insert(0, GradientProbe(cfg.telemetry_every))
    trainer = make_trainer(cfg, device, callbacks=callbacks, max_steps=warmup + steps, evaluate=False)
    trainer.fit(ResLabModule(net, cfg, dm.eval_names), datamodule=dm)
    if sync_each_step:
        return _timing(timer.ends, warmup, steps, cfg.batch_size)
    window = (timer.ends[warmup + steps] - timer.ends[warmup]) / steps
    return StepTiming(window, steps, cfg.batch_size, mean_s=window, warmup_s=timer.ends[warmup] - timer.ends[0],
                      warmup_steps=warmup)  # fmt: skip


def concurrent_step_times(
    spec: NetSpec, data: DataConfig, cfg: TrainConfig, cells: int, steps: int, warmup: int = 3
) -> list[StepTiming]:
    """The training step of `cells` runs at once, each in its own process on the same device (what a sweep with
    that many workers per GPU does; without CUDA MPS the processes time-slice the GPU). Each warms up (compiles),
    then all wait for each other and time the same number of steps, so their timed windows overlap: the sum of
    their rates is the aggregate cells x images/s the device sustains."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier = ctx.Barrier(cells)
    results = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_cell, args=(spec, data, cfg, steps, warmup, barrier, results, i))
             for i in range(cells)]  # fmt: skip
    for proc in procs:
        proc.start()
    import queue

    out: dict[int, StepTiming | str] = {}
    while len(out) < cells:
        try:
            i, timing = results.get(timeout=5)
            out[i] = timing
        except queue.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0) and i not in out]
            if dead:  # killed (out of memory, a signal) before it could report: the others wait at the barrier
                for proc in procs:
                    proc.kill()
                raise RuntimeError(f"concurrent cell {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
    for proc in procs:
        proc.join()
    failed = [t for t in out.values() if isinstance(t, str)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {cells} concurrent cells failed: {failed[0]}")
    return [out[i] for i in range(cells)]


def _concurrent_cell(spec, data, cfg, steps, warmup, barrier, results, index) -> None:
    """One process of `concurrent_step_times`: its own seed (a sweep's cells differ), the shared barrier after the
    warm-up; a failure is reported rather than left to hang the others."""
    from reslab.data.registry import load_dataset

    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        splits = load_dataset(data.name, data.options, data.data_dir)
        own = cfg.model_copy(update={"seed": cfg.seed + index})
        timing = lightning_step_times(spec, splits, own, steps, warmup, sync_each_step=False,
                                      after_warmup=lambda: barrier.wait(timeout=1800))  # fmt: skip
        results.put((index, timing))
    except Exception as exc:
        barrier.abort()
        results.put((index, f"{type(exc).__name__}: {exc}"))


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
    """A Lightning callback that stamps the end of each training batch (fit start is the first stamp), after
    synchronising the device at every step or only at the steps in `sync_at`; `after` is called once step
    `after_step` is done."""

    def __new__(
        cls, device: str, sync_at: set[int] | None = None, after: Callable[[], None] | None = None, after_step: int = 0
    ):
        import lightning.pytorch as pl

        class BatchTimer(pl.Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_train_start(self, trainer, pl_module) -> None:
                sync(device)
                self.ends.append(time.perf_counter())

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                done = len(self.ends)  # steps finished, this one included
                if sync_at is None or done in sync_at:
                    sync(device)
                if after is not None and done == after_step:
                    after()
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


def rate_info(macs: int, phase: str, images_per_s: float, device: str, dtype: str) -> dict[str, float]:
    """A benchmark's rate as its extra_info records it: images/s, the achieved TFLOP/s and, for a GPU whose
    datasheet is known (`device` as `device_name` writes it), the peak and the fraction of it reached."""
    tflops = train_flops_per_image(macs, phase) * images_per_s / 1e12
    info = {"images_per_s": images_per_s, "tflops": tflops}
    peak = peak_tflops(device, dtype)
    if peak:
        info.update(peak_tflops=peak, fraction_of_peak=tflops / peak)
    return info


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
