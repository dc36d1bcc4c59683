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
    cpuset), not the machine's count, and no more than a SLURM job step was given (`SLURM_CPUS_PER_TASK`: a cluster
    without CPU binding leaves the mask at the whole node). Workers and threads sized by the machine's count on a
    share of it oversubscribe that share, and two-thread OpenMP kernels on one core stall at every barrier."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this OS
        cores = os.cpu_count() or 1
    given = _slurm_int("SLURM_CPUS_PER_TASK")
    return max(1, min(cores, given)) if given else cores


def usable_memory() -> int:
    """The bytes of memory this process may use: what the OS reports available, capped by a SLURM allocation
    (`SLURM_MEM_PER_NODE`, or `SLURM_MEM_PER_CPU` x the CPUs, in MB) and a cgroup v2 limit (a container's
    `memory.max`), whichever is smallest."""
    import psutil

    limits = [int(psutil.virtual_memory().available)]
    per_node, per_cpu = _slurm_int("SLURM_MEM_PER_NODE"), _slurm_int("SLURM_MEM_PER_CPU")
    if per_node:
        limits.append(per_node * 2**20)
    elif per_cpu:
        limits.append(per_cpu * usable_cores() * 2**20)
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits.append(int(text))
    except OSError:
        pass
    return min(limits)


def _slurm_int(name: str) -> int | None:
    """A SLURM count from the environment (`SLURM_CPUS_PER_TASK=4`), None when unset or not a positive number."""
    text = os.environ.get(name, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def visible_gpus(count: int) -> list[str]:
    """The ids to give workers in `CUDA_VISIBLE_DEVICES` for the `count` GPUs this process sees: the inherited
    `CUDA_VISIBLE_DEVICES` entries (a batch scheduler's allocation, e.g. "3,5") where it is set, else 0..count-1.
    Renumbering from 0 inside an allocation would hand a worker a GPU of another job."""
    inherited = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return inherited[:count] if len(inherited) >= count else [str(i) for i in range(count)]


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
