"""A sweep sizes its workers and threads by the CPU cores it may run on (`taskset`, a container's or a batch
scheduler's cpuset), not by the machine's count: on a share of a machine, the machine's count oversubscribes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reslab.devices import gpu_count, usable_cores

ROOT = Path(__file__).resolve().parents[1]
pinnable = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None, reason="needs CPU affinity (taskset)"
)


def test_usable_cores_is_the_affinity_mask() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cores() == expected
    assert gpu_count() >= 0


@pinnable
def test_a_sweep_pinned_to_one_core_plans_one_thread_per_worker() -> None:
    core = min(os.sched_getaffinity(0))
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "reslab.cli", "sweep", "configs/default.yaml",
           "--dry-run"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "16 runs (1 worker x 1 thread, mnist1d)" in out.stdout
    explicit = subprocess.run([*cmd, "--set", "sweep.workers=2"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert "16 runs (2 workers x 1 thread, mnist1d)" in explicit.stdout, explicit.stdout + explicit.stderr
