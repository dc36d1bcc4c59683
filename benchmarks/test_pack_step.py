"""Training-step throughput of packs: K seeds of one CIFAR ResNet trained as one grouped computation (group
`train_step`, variant `packK`).

A width-16 ResNet cannot fill a GPU alone; a pack of K cells runs each layer of all K members as one kernel
(`benchmarks/pack.py`). Each result's extra_info holds the aggregate rate of the K cells (images/s, TFLOP/s and the
fraction of the datasheet peak), so packs of different K compare directly with each other and with the solo step.
On CPU a pack of 2 and 4 at depth 20; on CUDA K in 1, 4, 8, 16 at depths 20, 56, 110. The recipe is that of
configs/cifar10-he2015.yaml (bf16 autocast on CUDA, fp32 on the CPU, where bf16 is slower); a pack runs eagerly.
"""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks.conftest import cuda
from benchmarks.pack import PackTraining
from benchmarks.test_train_step import he2015_recipe
from reslab.data.synthetic import load_synthetic
from reslab.models import NetSpec, describe
from reslab.perf import device_name, rate_info, sync

BATCH = 128
SHAPE = (3, 32, 32)
CLASSES = 10
PACK_SIZES = [1, 4, 8, 16] if cuda() else [2, 4]
DEPTHS = [20, 56, 110] if cuda() else [20]


@functools.cache
def _macs(spec: NetSpec) -> int:
    return describe(spec, SHAPE, CLASSES).macs


@pytest.mark.parametrize("cells", PACK_SIZES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_pack_step(benchmark, depth: int, cells: int, device: str, rounds: int) -> None:
    smoke = bool(benchmark.disabled)  # --benchmark-disable: run once on a small batch, so none can rot
    batch = 8 if smoke else BATCH
    spec = NetSpec("resnet", "residual", depth, 16)
    splits = load_synthetic(SHAPE, CLASSES, train_size=4 * batch, test_size=batch)
    precision = he2015_recipe().precision if torch.device(device).type == "cuda" else "32-true"
    cfg = he2015_recipe().model_copy(update={"batch_size": batch, "precision": precision, "device": device})
    run = PackTraining(spec, range(cells), splits, cfg, device)
    dtype = "bf16" if precision.startswith("bf16") else "fp32"

    def step() -> None:
        run.step()
        sync(device)

    benchmark.group = "train_step"
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=1 if smoke else rounds, iterations=1, warmup_rounds=1 if smoke else 3)
    info = benchmark.extra_info
    info.update(family=spec.family, block=spec.block, depth=depth, width=spec.width, batch=batch,
                phase="train_step", variant=f"pack{cells}", cells=cells, kind="pack", dtype=dtype, precision=precision,
                compile="off", compile_s=0.0, device=device_name(device), macs_per_image=_macs(spec))  # fmt: skip
    if torch.device(device).type == "cuda":
        info["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    info.update(rate_info(_macs(spec), "forward_backward", cells * batch / stats.median, info["device"], dtype),
                step_s=stats.median)  # fmt: skip
