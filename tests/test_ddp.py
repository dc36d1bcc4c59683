"""Inside a cell: `train.devices` and `train.strategy` pass through to Lightning. DDP on the CPU (2 processes,
gloo) trains one network and records one MLflow run, from rank 0 — for `reslab train` and inside a sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
SYNTH = ["--dataset", "synthetic", "--data-option", "shape=[1,16]", "--data-option", "train_size=512"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _runs(workdir: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_reslab_train_with_ddp_on_two_cpu_processes_logs_one_run(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "reslab.cli", "train", *SYNTH, "--depth", "8", "--width", "4", "--epochs", "2",
           "--device", "cpu", "--devices", "2", "--strategy", "ddp", "--experiment", "ddp", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 1 trains but does not report
    out = json.loads(lines[0])
    (run,) = _runs(tmp_path, "ddp")
    assert run.info.run_id == out["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["train.devices"] == "2" and run.data.params["train.strategy"] == "ddp"
    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id, "train_error")
    assert sorted(m.step for m in history) == [1, 2]  # logged once per epoch, not once per rank


def test_sweep_cells_with_ddp(tmp_path: Path) -> None:
    config = {
        "name": "ddpsweep",
        "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 512, "test_size": 64}},
        "grid": {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8], "widths": [4]},
        "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "devices": 2, "strategy": "ddp"},
        "tracking": {"system_metrics": False},
        "sweep": {"workers": 1},
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "reslab.cli", "sweep", "ddp.yaml"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    children = [r for r in _runs(tmp_path, "ddpsweep") if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == ["plain-8-w4-s0", "residual-8-w4-s0"]
    assert all(r.info.status == "FINISHED" and r.data.params["train.devices"] == "2" for r in children)


def _cell_processes() -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if "reslab.sweep.cell" in cmdline:
            found.append(p)
    return found


def test_a_multi_device_cell_dies_with_its_worker(tmp_path: Path) -> None:
    """kill -9 of the worker: the cell's process and its DDP rank end at once (they must not train on while the
    queue gives the cell to another worker), and their run never finishes."""
    import signal

    from reslab.sweep import queue as q
    from tests.helpers import wait_until

    config = {
        "name": "ddpkill",
        "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 512, "test_size": 64}},
        "grid": {"family": "resnet", "blocks": ["residual"], "depths": [8], "widths": [4]},
        "train": {"epochs": 500, "batch_size": 64, "device": "cpu", "devices": 2, "strategy": "ddp"},
        "tracking": {"system_metrics": False},
        "sweep": {"workers": 1, "heartbeat_s": 1, "grace_s": 5},
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "reslab.cli", "sweep", "ddp.yaml"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def running() -> list:
        journal = q.open_storage(str(tmp_path / "runs" / "ddpkill" / "optuna.journal"))
        return q.SweepQueue(journal, "ddpkill", create=False).trials((q.TrialState.RUNNING,))

    try:
        wait_until(lambda: any(q.RUN_ID in t.user_attrs for t in running()))
        wait_until(lambda: len(_cell_processes()) == 2, timeout=60, what="both DDP ranks")
        cells = _cell_processes()
        (trial,) = running()
        os.kill(int(trial.user_attrs[q.PID]), signal.SIGKILL)
        wait_until(lambda: not any(p.is_running() and p.status() != "zombie" for p in cells), timeout=5,
                   what="the cell's processes to end with their worker")  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (run,) = [r for r in _runs(tmp_path, "ddpkill") if r.info.run_id == trial.user_attrs[q.RUN_ID]]
    assert run.info.status != "FINISHED"
