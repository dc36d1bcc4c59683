"""The training step's execution on an accelerator: compilation, memory format, and the backend settings recorded.

He et al.'s CIFAR nets are small (width 16 to 64, 0.27 M to 1.7 M parameters): on a GPU one step of batch 128 is a
few hundred tiny kernels, and an eager PyTorch step spends its time launching them rather than computing. The
remedies are the ones PyTorch documents for such models:

- `torch.compile` fuses the elementwise work (batch norm, ReLU, the residual add) into fewer kernels, and mode
  `reduce-overhead` also replays the whole forward and backward as CUDA graphs, one launch each (PyTorch's
  "CUDA Graphs" and torch.compile tutorials). Steps that record gradient telemetry run eagerly: their hooks and
  taps change the graph, and they are one step in `telemetry_every`.
- channels_last (NHWC) lets cuDNN use its tensor-core convolution kernels for 2-D nets without transposes
  (PyTorch's "Channels Last Memory Format" tutorial); bf16 autocast (`train.precision`) halves their traffic.
- cuDNN autotuning (`torch.backends.cudnn.benchmark`) picks the fastest algorithm per shape. It and atomics in
  some backward kernels make GPU runs non-deterministic: every run records the settings it ran with.

All of these are execution settings: they change how fast a run goes, not the recipe it trains with.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from reslab.train.objective import loss_and_wrong

#: Modes whose compiled step is replayed as CUDA graphs (on CUDA devices only).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


class CompileFallbackWarning(UserWarning):
    """torch.compile failed for a run's step: the run goes on eagerly (same results, eager speed)."""


def uses_channels_last(setting: bool | None, device: str, net: nn.Module) -> bool:
    """Whether a run keeps its 2-D activations channels-last: `None` means on CUDA for nets with 2-D convolutions,
    where cuDNN's fast kernels want NHWC; True/False force it (a net without 2-D convolutions never uses it)."""
    has_2d = any(isinstance(m, nn.Conv2d) for m in net.modules())
    return has_2d and (setting if setting is not None else device == "cuda")


class TrainingForward:
    """The training forward of a net (logits, loss, wrong count), compiled when `mode` is set. The first failure
    of the compiled call (a backend that cannot compile this net, a compiler missing on the machine) warns once
    and falls back to the eager forward for the rest of the run, so a run never fails because compilation did;
    an error that is not compilation's is raised again by the eager call. `eager=True` runs one call eagerly
    (steps with telemetry hooks)."""

    def __init__(self, net: nn.Module, mode: str | None, device: str) -> None:
        self.net = net
        self.mode = mode
        self.fallback: str | None = None  # why compilation was given up, once it was
        self._cudagraphs = mode in CUDAGRAPH_MODES and device == "cuda"
        self._compiled: Callable | None = None
        if mode is not None:
            self._compiled = compile_callable(lambda x, y: loss_and_wrong(net(x), y), mode)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eager: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if self._compiled is None or eager:
            return loss_and_wrong(self.net(x), y)
        if self._cudagraphs:  # a new training iteration: the previous replay's outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        try:
            return self._compiled(x, y)
        except Exception as exc:
            self.fallback = _reason(exc)
            self._compiled = None
            warnings.warn(
                f"torch.compile (mode {self.mode}) failed, training goes on eagerly: {self.fallback}. Set "
                "train.compile: off (--compile off) to skip compiling.",
                CompileFallbackWarning,
                stacklevel=2,
            )
            return loss_and_wrong(self.net(x), y)


def _reason(exc: BaseException) -> str:
    """One line naming the error and, when it wraps another (Dynamo wraps a backend's), the root cause's first line."""
    root = exc
    while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None and inner is not root:
        root = inner
    first_line = (str(root).strip().splitlines() or [""])[0][:300]
    wrapped = f"{type(exc).__name__}: " if root is not exc else ""
    return f"{wrapped}{type(root).__name__}: {first_line}"


def compile_callable(fn: Callable, mode: str) -> Callable:
    """`torch.compile(fn, mode=mode)`, shapes specialised: a run sees two batch shapes (full and the epoch's last),
    and static shapes keep CUDA graphs possible."""
    return torch.compile(fn, mode=mode, dynamic=False)


def backend_settings() -> dict[str, str]:
    """The numerics settings a run trained with, as MLflow tags: cuDNN autotuning, determinism, TF32 use. On a
    GPU they decide whether two runs of one recipe agree to the bit (they do not with autotuning on)."""
    cudnn = torch.backends.cudnn
    settings = {
        "cudnn.enabled": cudnn.enabled,
        "cudnn.benchmark": cudnn.benchmark,
        "cudnn.deterministic": cudnn.deterministic,
        "cudnn.allow_tf32": cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cpu.flush_denormal": True,  # `reslab.train.run.run_one` flushes subnormal floats to zero on the CPU
    }
    if torch.cuda.is_available():
        settings["cudnn.version"] = cudnn.version()
    return {k: str(v) for k, v in settings.items()}
