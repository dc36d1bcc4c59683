"""Which torch device a run or a probe uses: the one place that turns `auto` into a device and refuses a device
that is not there, so training and the probe at initialisation agree on it; how many CPU cores and GPUs this
process may use; and the one synchronisation a timer needs before it reads the clock (CUDA kernels run
asynchronously: an unsynchronised clock times their launch)."""

from __future__ import annotations

import os
from pathlib import Path

#: `train.compile`'s values: `auto` (compiled on CUDA, eager elsewhere), `off`, or a torch.compile mode; what each
#: does is `reslab.train.fast`'s to say. Here, import-free, so the CLI can offer them without importing torch.
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: What `auto` compiles with on CUDA: the step of these nets is launch-bound, and CUDA graphs remove the launches.
CUDA_AUTO_MODE = "reduce-overhead"


def compile_mode(setting: str, device: str) -> str | None:
    """The torch.compile mode a run on `device` uses, or None for eager: `auto` compiles on CUDA only (on a CPU
    compiling a small net costs more time than it saves in a short run, and the CPU results stay bit-identical to
    eager runs), `off` never; an explicit mode is used on any device."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {setting!r}; valid: {', '.join(COMPILE_MODES)}")
    if setting == "off" or (setting == "auto" and device != "cuda"):
        return None
    return CUDA_AUTO_MODE if setting == "auto" else setting


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (`taskset`, a container's or a batch scheduler's
    cpuset), not the machine's count. Workers and threads sized by the machine's count on a share of it
    oversubscribe that share, and two-thread OpenMP kernels on one core stall at every barrier."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this OS
        return os.cpu_count() or 1


def nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded, asked of the OS without importing torch (which takes a second or two)."""
    return Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists()


def gpu_count() -> int:
    """The CUDA devices torch sees (`CUDA_VISIBLE_DEVICES` applied); 0 without importing torch where no NVIDIA
    driver is loaded. Asks the driver without creating a CUDA context."""
    if not nvidia_driver():
        return 0
    import torch

    return torch.cuda.device_count()


def resolve_device(device: str) -> str:
    """'auto' -> cuda if available, else mps, else cpu; an explicit device that is missing is an error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device mps was asked for but is not available; use --device cpu or auto")
    return device


def sync(device: object) -> None:
    """Wait for the work queued on `device` (a torch.device or its name) when it is a CUDA device; a no-op
    elsewhere."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))
