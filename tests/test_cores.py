"""A sweep sizes its workers and threads by the CPU cores it may run on (`taskset`, a container's or a batch
scheduler's cpuset, a SLURM allocation), not by the machine's count: on a share of a machine, the machine's count
oversubscribes it. Its memory and GPUs are the allocation's too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reslab.devices import gpu_count, usable_cores, usable_memory, visible_gpus

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


def test_a_slurm_allocation_caps_cores_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent given 1 CPU and 512 MB on a node whose CPUs are not bound to jobs (task/none) still sees the whole
    node in its affinity mask: the allocation decides."""
    whole = usable_cores()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "512")
    assert usable_cores() == 1 and usable_memory() <= 512 * 2**20
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "100")
    assert usable_memory() <= 100 * 2**20
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "not a number")
    assert usable_cores() == whole


def test_an_allocation_with_memory_for_one_worker_plans_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from reslab.sweep import runner
    from reslab.sweep.config import load_config

    config = load_config(ROOT / "configs" / "default.yaml")
    monkeypatch.setattr(runner, "usable_cores", lambda: 8)
    monkeypatch.setattr(runner, "usable_memory", lambda: 64 * 2**30)
    assert runner.plan_workers(config, 16).workers == 8
    monkeypatch.setattr(runner, "usable_memory", lambda: runner.WORKER_BYTES + 2**20)  # room for one worker
    plan = runner.plan_workers(config, 16)
    assert (plan.workers, plan.threads) == (1, 8)


def test_workers_get_the_inherited_gpus_not_gpus_0_to_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent given GPUs 3 and 5 of an 8-GPU node sees them as 2 devices; its workers must get 3 and 5."""
    from reslab.sweep import runner
    from reslab.sweep.config import load_config

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus(2) == ["3", "5"]
    monkeypatch.setattr(runner, "gpu_count", lambda: 2)
    config = load_config(ROOT / "configs" / "default.yaml", ["train.device=cuda"])
    plan = runner.plan_workers(config, 16)
    assert plan.workers == 2 and [runner.gpus_of_worker(plan, i) for i in range(2)] == [["3"], ["5"]]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(2) == ["0", "1"]


def test_a_sweep_in_a_one_cpu_allocation_plans_one_worker() -> None:
    env = dict(os.environ, SLURM_CPUS_PER_TASK="1")
    cmd = [sys.executable, "-m", "reslab.cli", "sweep", "configs/default.yaml", "--dry-run"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "16 runs (1 worker x 1 thread, mnist1d)" in out.stdout
