"""`reslab.profiling`: the profile of the real training step, summed per step, and what it says bounds the step."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from reslab.models import NetSpec
from reslab.profiling import profile_step, summarize
from reslab.train.config import TrainConfig


def avg(key: str, count: int, cpu_us: float, device_us: float, cuda: bool = False) -> SimpleNamespace:
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    return SimpleNamespace(key=key, count=count, self_cpu_time_total=cpu_us, self_device_time_total=device_us,
                           device_type=kind)  # fmt: skip


def test_a_gpu_step_mostly_waiting_for_launches_is_called_host_bound() -> None:
    events = [avg("aten::convolution", 400, 8000, 0), avg("cudnn_conv_kernel", 400, 0, 4000, cuda=True),
              avg("elementwise_kernel", 1600, 0, 2000, cuda=True)]  # fmt: skip
    p = summarize(events, steps=10, wall_s=0.2, device="cuda", name="residual-56-w16")
    assert p.wall_ms == 20 and p.device_ms == 0.6 and p.kernels == 200 and p.busy == 0.03
    assert p.finding().startswith("residual-56-w16: host-bound: the GPU computes 3 % of a 20.00 ms step; 200 kernels")
    busy = summarize(events, steps=10, wall_s=0.007, device="cuda", name="n")
    assert "device-bound" in busy.finding() and busy.busy > 0.8


def test_the_cpu_profile_of_the_real_step_counts_its_operators(tmp_path) -> None:
    cfg = TrainConfig(batch_size=16, threads=1, telemetry_every=100, device="cpu")
    trace = tmp_path / "trace.json"
    p = profile_step(NetSpec("resnet", "residual", 8, 4), cfg, steps=2, warmup=1, trace=trace)
    assert p.device_ms is None and p.busy is None and p.kernels == 0
    assert p.steps == 2 and p.wall_ms > 0 and p.host_ops > 100  # a ResNet-8 step is hundreds of operator calls
    assert any("convolution" in op for op, _, _ in p.top)
    assert trace.stat().st_size > 0 and "on the CPU" in p.finding()
