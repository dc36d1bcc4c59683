"""What this machine can run: the checks that refuse an impossible request before anything is created.

`reslab train`, `reslab probe` and a sweep's config check (`reslab.sweep.checks`) ask these.

A depth-scaling study asks for extremes (He et al. 2015 train a 1202-layer net), and an extreme that does not fit
fails late and badly: a width of 100000 asks for a 120 GB allocation and dies with a traceback, a depth of 600002
spends minutes building modules before anything else happens, 500 workers on 2 cores thrash. Each is refused here
with one line naming the cell, the estimate and what is available, from `reslab.models.estimate` (closed forms,
nothing built) and the machine's own figures, before a queue, an MLflow run or a file exists.

torch is imported only when the training device may be a GPU on a machine that has NVIDIA's driver, so a config
check on a CPU machine stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reslab.devices import gpu_count, usable_cores, usable_memory

if TYPE_CHECKING:
    from reslab.models.estimate import Estimate
    from reslab.models.spec import NetSpec
    from reslab.train.config import DataConfig, TrainConfig

#: Worker processes beyond these per core / per GPU only contend: each cell gets a slice of a device it cannot use.
WORKERS_PER_CORE = 4
WORKERS_PER_GPU = 8
_GiB = 1024**3


@dataclass(frozen=True)
class Device:
    """Where a cell would train: its kind, its memory available to one cell, and how many there are."""

    kind: str  # "cpu" or "cuda"
    memory_bytes: int
    count: int

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"the GPU has {self.memory_bytes / _GiB:.1f} GiB free"
        return f"this machine has {self.memory_bytes / _GiB:.1f} GiB of memory available"


def training_device(device: str) -> Device:
    """The device a cell with `train.device = device` trains on here. A GPU is asked for its free memory (the
    smallest over the GPUs, since a cell may land on any); the CPU has the memory this process may use
    (`usable_memory`: available, within a batch scheduler's or a container's limit)."""
    cpu = Device("cpu", usable_memory(), usable_cores())
    if device == "cpu" or device == "mps":
        return cpu
    count = gpu_count()
    if count == 0:
        return cpu
    return Device("cuda", _smallest_free_gpu_memory(count), count)


def _smallest_free_gpu_memory(count: int) -> int:
    """NVML's free memory of the fullest GPU, which needs no CUDA context (torch's `mem_get_info` would create
    one per GPU and keep it, half a GiB each, in a coordinator that never trains); the total memory of the
    smallest GPU where NVML (nvidia-ml-py, the `gpu` extra) is missing."""
    try:
        if os.environ.get("CUDA_VISIBLE_DEVICES"):
            raise LookupError("NVML numbers every GPU, not the visible ones")
        import pynvml

        pynvml.nvmlInit()
        try:
            return min(int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free)
                       for i in range(count))  # fmt: skip
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or module: the datasheet memory is the best known bound
        import torch

        return min(int(torch.cuda.get_device_properties(i).total_memory) for i in range(count))


def net_estimate(spec: NetSpec, data: DataConfig) -> Estimate:
    """`spec`'s closed-form size on `data`'s inputs and classes (one output where a one-unit head meets two
    classes), known without building the net or loading the data."""
    from reslab.data.catalog import DATASET_INFO
    from reslab.models.catalog import output_units
    from reslab.models.estimate import estimate

    shape, classes = DATASET_INFO[data.name].shape(data.options)
    return estimate(spec, shape, output_units(spec, classes))


def training_bytes(spec: NetSpec, data: DataConfig, train: TrainConfig) -> tuple[int, str]:
    """Bytes one training of `spec` on `data` needs (parameters, gradients and the optimiser's state: SGD's
    momentum, or AdamW's two moment estimates, one fp32 copy of the parameters more; plus the activations autograd
    keeps for a batch), and how that splits, in words."""
    est = net_estimate(spec, data)
    per_value = 2 if train.precision in ("bf16-mixed", "16-mixed") else 4
    total = est.training_bytes(train.batch_size, per_value)
    activations = total - est.training_bytes(0, per_value)
    state = "momentum"
    if train.optimizer == "adamw":
        total += est.params * 4
        state = "AdamW moments"
    split = f"{(total - activations) / _GiB:.1f} GiB for {est.params:,} parameters with their gradients and {state}"
    split += f" + {activations / _GiB:.1f} GiB of activations for a batch of {train.batch_size}"
    return total, split


def memory_problem(label: str, spec: NetSpec, data: DataConfig, train: TrainConfig, device: Device,
                   verb: str = "train") -> str | None:  # fmt: skip
    """One line when `spec` cannot `verb` (train, probe) on `data` in `device`'s memory, else None."""
    need, split = training_bytes(spec, data, train)
    if need <= device.memory_bytes:
        return None
    return (
        f"{label} needs about {need / _GiB:.1f} GiB to {verb} ({split}), but {device.describe()}: choose a smaller "
        f"depth, width or train.batch_size"
    )


def workers_problem(workers: int | str, device: Device) -> str | None:
    """One line when `workers` processes would only contend for `device` (more than a few per core or GPU)."""
    if not isinstance(workers, int):
        return None
    if device.kind == "cuda" and workers > WORKERS_PER_GPU * device.count:
        return (f"sweep.workers: {workers} workers for {device.count} GPU(s) is more than {WORKERS_PER_GPU} per GPU; "
                f"valid: 1 to {WORKERS_PER_GPU * device.count}, or auto")  # fmt: skip
    if device.kind == "cpu" and workers > WORKERS_PER_CORE * device.count:
        return (f"sweep.workers: {workers} workers for {device.count} CPU core(s) is more than {WORKERS_PER_CORE} "
                f"per core; valid: 1 to {WORKERS_PER_CORE * device.count}, or auto")  # fmt: skip
    return None
