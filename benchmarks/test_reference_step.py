"""reslab's ResNet-56 training step against a minimal hand-written ResNet-56 (`reference_resnet.py`), the same
plain loop for both, alternating rounds, both memory formats (CPU, two threads, batch 128, fp32): the ratio is
in `extra_info` and `nox -s bench` prints it (target <= 1.02)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference_step import FORMATS, TARGET, compare
from reslab.perf import device_name


@pytest.mark.parametrize("memory_format", list(FORMATS))
def test_reslab_step_vs_hand_written(benchmark, memory_format: str, smoke: bool) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    benchmark.group = "reference"
    result: dict[str, float] = {}
    try:
        # smoke: ResNet-20, one round of one step, so the comparison cannot rot; timings come from `nox -s bench`
        rounds, steps, depth = (1, 1, 20) if smoke else (5, 6, 56)
        benchmark.pedantic(lambda: result.update(compare(rounds, steps, depth, formats=[memory_format])[memory_format]),
                           rounds=1, iterations=1)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(
        ratio=result["ratio"], target_ratio=TARGET, reslab_step_s=result["reslab"],
        reference_step_s=result["reference"], memory_format=memory_format, device=device_name("cpu"),
        what=f"ResNet-{depth} training step, batch 128, fp32, 2 threads, reslab / hand-written",
    )  # fmt: skip
