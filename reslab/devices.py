"""Which torch device a run or a probe uses: the one place that turns `auto` into a device and refuses a device
that is not there, so training and the probe at initialisation agree on it."""

from __future__ import annotations


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
