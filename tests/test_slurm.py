"""`reslab sweep --launcher slurm` without a cluster: the array job's script (what it asks SLURM for, that it
holds no password, that `--dry-run` contacts nothing and needs no `sbatch`), and every refusal in one line before
anything is created. The real thing, on a real controller, is the SLURM drill (tests/drills/test_slurm.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.helpers import refused

CONFIG = {
    "name": "onslurm",
    "dataset": {"name": "mnist1d"},
    "grid": {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8, 14], "widths": [4],
             "seeds": [0, 1]},
    "train": {"epochs": 1},
    "sweep": {"launcher": "slurm",
              "slurm": {"agents": 3, "partition": "gpu", "account": "lab", "time": "1:00:00", "cpus_per_agent": 4,
                        "mem": "8G", "gpus_per_agent": 1, "sbatch": ["--qos=high"],
                        "setup": ["module load cuda"]}},
}  # fmt: skip
SECRET = "s3cr3t-pw"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "RESLAB_STORAGE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # no sbatch, squeue or scontrol
    (tmp_path / "onslurm.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path


def test_the_dry_run_prints_the_array_job_and_contacts_nothing(workdir: Path, capsys) -> None:
    from reslab.cli import main

    storage = f"postgresql://reslab:{SECRET}@db.invalid:5432/sweeps"  # nothing answers there: nothing may ask
    tracking = f"http://reslab:{SECRET}@mlflow.invalid:5000"
    code = main(["sweep", "onslurm.yaml", "--dry-run", "--storage", storage, "--tracking-uri", tracking])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert SECRET not in out + err and "db.invalid" not in out and "mlflow.invalid" not in out
    lines = out.rstrip().splitlines()
    assert lines[0] == "#!/bin/bash"
    options = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")]
    run_dir = workdir / "runs" / "onslurm"
    assert options == ["--job-name=reslab-onslurm", "--array=0-2", "--ntasks=1", "--cpus-per-task=4",
                       f"--output={run_dir}/agent-%a.log", "--open-mode=append", f"--chdir={workdir}",
                       "--export=ALL", "--partition=gpu", "--account=lab", "--time=1:00:00", "--mem=8G",
                       "--gpus-per-task=1", "--qos=high"]  # fmt: skip
    assert "module load cuda" in lines
    assert lines[-1].endswith(f"-m reslab.sweep.agent {run_dir}/config.resolved.yaml")
    assert sorted(p.name for p in workdir.iterdir()) == ["onslurm.yaml"]  # no queue, store or runs folder


def test_agents_on_the_command_line_override_the_config(workdir: Path, capsys) -> None:
    from reslab.cli import main

    assert main(["sweep", "onslurm.yaml", "--dry-run", "--agents", "5", "--tracking-uri", "http://h:5000",
                 "--storage", "postgresql://u@h/db"]) == 0  # fmt: skip
    assert "#SBATCH --array=0-4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--tracking-uri", "sqlite:///mlflow.db", "--storage", "postgresql://u@h/db"],
         ["--launcher slurm needs a tracking store every node can write", "mlflow server"]),
        (["--tracking-uri", "http://h:5000", "--storage", "sqlite:///optuna.db"],
         ["--launcher slurm needs a queue every node can use", "postgresql://"]),
        (["--tracking-uri", "http://h:5000", "--storage", "postgresql://u@h/db"],
         ["sbatch, which is not on PATH", "--launcher local"]),
        (["--launcher", "local", "--detach"], ["--detach", "--launcher slurm"]),
    ],
    ids=["sqlite-tracking", "sqlite-queue", "no-sbatch", "detach-local"],
)  # fmt: skip
def test_bad_input_is_one_line_before_anything_exists(workdir: Path, capsys, argv: list[str],
                                                      needles: list[str]) -> None:  # fmt: skip
    refused(["sweep", "onslurm.yaml", *argv], capsys, *needles)
    assert sorted(p.name for p in workdir.iterdir()) == ["onslurm.yaml"]


def test_no_agents_is_one_line(workdir: Path, capsys) -> None:
    from reslab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sweep", "onslurm.yaml", "--agents", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --agents: must be a positive integer, got 0" in err


def test_a_mistyped_slurm_key_is_one_line(workdir: Path, capsys) -> None:
    config = {**CONFIG, "sweep": {"launcher": "slurm", "slurm": {"partiton": "gpu"}}}
    (workdir / "typo.yaml").write_text(yaml.safe_dump(config))
    refused(["sweep", "typo.yaml", "--dry-run"], capsys, "sweep.slurm.partiton")
    config["sweep"] = {"slurm": {"sbatch": ["qos=high"]}}
    (workdir / "typo.yaml").write_text(yaml.safe_dump(config))
    refused(["sweep", "typo.yaml", "--dry-run"], capsys, "sbatch option 'qos=high'")


def test_workers_do_not_inherit_the_slurm_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Lightning reads SLURM_* to take a process for a SLURM task (its rank, an `scontrol requeue` of the whole job
    on SIGUSR1): an agent's workers get none of them, and the URIs through their environment only."""
    import subprocess

    from reslab.sweep import runner
    from reslab.sweep.config import load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    started: list[dict[str, str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: started.append(kw["env"]))
    coordinator = runner.Coordinator(load_config({**CONFIG, "sweep": {}}, assign={"tracking.uri": "http://h:5000"}))
    coordinator.log_prefix = "agent-7-"
    coordinator.config.run_dir.mkdir(parents=True)
    coordinator._launch = (runner.WorkerPlan(1, 1, []), Path("resolved.yaml"), "parent")
    coordinator._spawn_one(0)
    (env,) = started
    assert not [k for k in env if k.startswith("SLURM_")] and env["MLFLOW_TRACKING_URI"] == "http://h:5000"
    assert (tmp_path / "runs" / "onslurm" / "agent-7-worker-0.log").is_file()
    assert os.environ["SLURM_JOB_ID"] == "42"  # the agent's own environment is left as it was


def test_status_reads_the_queue_from_any_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`reslab status NAME`: counts, who holds what and why cells failed, from the queue alone (no parent run yet);
    a name the queue does not hold is one line."""
    import json

    from reslab.cli import main
    from reslab.sweep.config import load_config
    from reslab.sweep.queue import CellQueue

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESLAB_NODE", "node12")
    config = load_config({**CONFIG, "sweep": {"storage": str(tmp_path / "q.journal")}})
    CellQueue(config).settle(retry_failed=True)
    worker = CellQueue(config, create=False)
    worker.claim().fail("RuntimeError: out of memory")
    held = worker.claim()
    assert main(["status", "onslurm", "--storage", str(tmp_path / "q.journal")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sweep onslurm: 0 of 8 cells done, 1 running, 6 waiting, 1 failed"
    assert "no parent run recorded yet" in out[2]
    assert out[3].startswith(f"  running {held.key} on node12 pid {os.getpid()}, ")
    assert out[4].endswith(": RuntimeError: out of memory") and out[4].startswith("  failed  ")
    assert main(["status", "onslurm", "--storage", str(tmp_path / "q.journal"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["counts"] == {"failed": 1, "running": 1, "waiting": 6} and found["cells"] == 8
    refused(["status", "other", "--storage", str(tmp_path / "q.journal")], capsys, "no sweep named 'other'")
