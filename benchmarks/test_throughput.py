"""Forward and forward+backward throughput of every family vs depth (groups `forward` and `forward_backward`).

He et al.'s CIFAR ResNets (width 16, batch 128, 3x32x32) at depths 20, 56, 110 (and 1202 on a GPU), blocks plain /
residual / preact; the dense and the Keras example's conv families at a few depths; the causal transformer (width
64, windows of 64 characters as `configs/transformer-depth.yaml` trains it; width 256 on a GPU) post-norm, pre-norm
and ReZero at depths 2 to 24 blocks (to 96 on a GPU). On CUDA each net also runs in bf16 autocast, channels_last and
torch.compile variants, side by side. Each result's extra_info holds images/s (windows/s for the transformer, with
tokens/s beside it), MACs per image, achieved TFLOP/s, peak memory, device and dtype, and the datasheet peak of
known GPUs.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from benchmarks.conftest import cuda
from reslab.models import NetSpec, build_net, describe
from reslab.models.registry import example_input
from reslab.perf import device_name, rate_info, saved_activation_bytes, sync
from reslab.train.objective import training_loss

BATCH = 128
PHASES = ("forward", "forward_backward")
RESNET_DEPTHS = [20, 56, 110, *([1202] if cuda() else [])]
VARIANTS = ["fp32", *(["bf16", "bf16-channels_last", "bf16-channels_last-compile"] if cuda() else [])]


def _case(spec: NetSpec, shape: tuple[int, ...], classes: int, phase: str, variant: str, device: str, batch: int):
    """The net, inputs and step function of one benchmark; the step synchronises the device inside."""
    torch.manual_seed(0)
    net = build_net(spec, shape, classes).to(device)
    x = example_input(net, shape, batch, random=True, device=device)
    y = torch.randint(0, classes, (batch, *shape) if x.dtype == torch.long else (batch,), device=device)
    if "channels_last" in variant and len(shape) == 3:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model = torch.compile(net) if "compile" in variant else net
    dtype = "bf16" if variant.startswith("bf16") else "fp32"

    def autocast():
        if dtype == "bf16":
            return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    if phase == "forward":
        net.eval()

        def step() -> None:
            with torch.no_grad(), autocast():
                model(x)
            sync(device)
    else:
        net.train()

        def step() -> None:
            with autocast():
                loss = training_loss(model(x), y)
            loss.backward()
            net.zero_grad(set_to_none=True)
            sync(device)

    return net, x, step, dtype


@functools.cache
def _macs(spec: NetSpec, shape: tuple[int, ...], classes: int) -> int:
    return describe(spec, shape, classes).macs


def _run(benchmark, spec: NetSpec, shape, classes: int, phase: str, variant: str, device: str, rounds: int,
         batch: int = BATCH) -> None:
    smoke = bool(benchmark.disabled)  # --benchmark-disable: run once on a small batch, so none can rot
    batch = 8 if smoke else batch
    net, x, step, dtype = _case(spec, shape, classes, phase, variant, device, batch)
    benchmark.group = phase
    macs = _macs(spec, shape, classes)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2 if "compile" not in variant else 3)
    info = benchmark.extra_info
    info.update(family=spec.family, block=spec.block, depth=spec.depth, width=spec.width, batch=batch, phase=phase,
                variant=variant, dtype=dtype, device=device_name(device), macs_per_image=macs)  # fmt: skip
    if torch.device(device).type == "cuda":
        info["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif phase == "forward_backward":
        params = sum(p.numel() * p.element_size() for p in net.parameters())
        info["peak_memory_mb"] = (saved_activation_bytes(net, x) + 2 * params) / 2**20  # activations + weights + grads
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    info.update(rate_info(macs, phase, batch / stats.median, info["device"], dtype))
    if x.dtype == torch.long:  # a language model: each example is a window of tokens
        info["tokens_per_s"] = info["images_per_s"] * x.shape[1]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("depth", RESNET_DEPTHS)
@pytest.mark.parametrize("block", ["plain", "residual", "preact"])
@pytest.mark.parametrize("phase", PHASES)
def test_resnet(benchmark, block: str, depth: int, phase: str, variant: str, device: str, rounds: int) -> None:
    if "compile" in variant and (block != "residual" or depth > 110):
        pytest.skip("torch.compile is measured on the residual nets up to depth 110 (compiling 1202 takes minutes)")
    _run(benchmark, NetSpec("resnet", block, depth, 16), (3, 32, 32), 10, phase, variant, device, rounds)


@pytest.mark.skipif(cuda(), reason="on a GPU test_resnet runs every variant")
@pytest.mark.parametrize("phase", PHASES)
def test_resnet_variants_on_cpu(benchmark, phase: str, device: str, rounds: int) -> None:
    """The bf16-autocast and channels_last code of the GPU variants, run where there is no GPU so it cannot rot
    (on this CPU bf16 is slower than fp32 for such small nets, as measured). torch.compile is left to the GPU."""
    _run(benchmark, NetSpec("resnet", "residual", 20, 16), (3, 32, 32), 10, phase, "bf16-channels_last", device, rounds)


@pytest.mark.parametrize("depth", [10, 34, 98])
@pytest.mark.parametrize("block", ["plain", "residual"])
@pytest.mark.parametrize("phase", PHASES)
def test_mlp(benchmark, block: str, depth: int, phase: str, device: str, rounds: int) -> None:
    _run(benchmark, NetSpec("mlp", block, depth, 256), (1, 40), 10, phase, "fp32", device, rounds)


@pytest.mark.parametrize("depth", [7, 13, 25])
@pytest.mark.parametrize("block", ["plain", "residual"])
@pytest.mark.parametrize("phase", PHASES)
def test_convnet(benchmark, block: str, depth: int, phase: str, device: str, rounds: int) -> None:
    _run(benchmark, NetSpec("convnet", block, depth), (3, 32, 32), 10, phase, "fp32", device, rounds)


TRANSFORMER_WIDTH = 256 if cuda() else 64
TRANSFORMER_DEPTHS = [2, 6, 12, 24, *([48, 96] if cuda() else [])]


@pytest.mark.parametrize("variant", ["fp32", *(["bf16"] if cuda() else [])])
@pytest.mark.parametrize("depth", TRANSFORMER_DEPTHS)
@pytest.mark.parametrize("block", ["residual", "preact", "rezero"])
@pytest.mark.parametrize("phase", PHASES)
def test_transformer(benchmark, block: str, depth: int, phase: str, variant: str, device: str, rounds: int) -> None:
    """Windows of 64 characters over a 96-symbol vocabulary, batch 32 as `configs/transformer-depth.yaml` trains."""
    spec = NetSpec("transformer", block, depth, TRANSFORMER_WIDTH)
    _run(benchmark, spec, (64,), 96, phase, variant, device, rounds, batch=32)
