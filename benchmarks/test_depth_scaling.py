"""Step time and memory vs depth, fitted: both should grow linearly in depth (each block adds the same work and
the same saved activations). Depths 20 ... 110 on the CPU, up to 1202 on a GPU. The per-depth points and the
fits (slope, intercept, R²) go into extra_info, which the benchmark figure draws."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reslab.models import NetSpec, build_net
from reslab.perf import device_name, linear_fit, median_step_s, saved_activation_bytes

BATCH = 128


def test_depth_scaling(benchmark, device: str, smoke: bool) -> None:
    on_gpu = torch.device(device).type == "cuda"
    depths = [20, 56] if smoke else [20, 32, 44, 56, 110, *([218, 434, 1202] if on_gpu else [])]
    points = []
    for depth in depths:
        torch.manual_seed(0)
        net = build_net(NetSpec("resnet", "residual", depth, 16), (3, 32, 32), 10).to(device)
        x = torch.randn(BATCH, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (BATCH,), device=device)

        def step(net=net, x=x, y=y) -> None:
            F.cross_entropy(net(x), y).backward()
            net.zero_grad(set_to_none=True)

        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        seconds = median_step_s(step, device, steps=1 if smoke else 5, warmup=1)
        memory = torch.cuda.max_memory_allocated() if on_gpu else saved_activation_bytes(net, x)
        points.append({"depth": depth, "step_s": seconds, "memory_mb": memory / 2**20})
    benchmark.group = "depth_scaling"
    deepest = depths[-1]
    net = build_net(NetSpec("resnet", "residual", deepest, 16), (3, 32, 32), 10).to(device)
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    benchmark.pedantic(lambda: F.cross_entropy(net(x), torch.zeros(BATCH, dtype=torch.long, device=device)).backward(),
                       rounds=1, iterations=1)  # fmt: skip
    depth_list = [p["depth"] for p in points]
    benchmark.extra_info.update(
        depth_scaling=points,
        time_fit=linear_fit(depth_list, [p["step_s"] for p in points]),
        memory_fit=linear_fit(depth_list, [p["memory_mb"] for p in points]),
        memory_kind="peak CUDA allocation" if on_gpu else "saved activations",
        device=device_name(device),
        batch=BATCH,
    )
