"""The cluster drill: `reslab sweep --launcher slurm` on a real SLURM controller and node (Debian's slurmctld,
slurmd and munge on 127.0.0.1), with the queue on PostgreSQL and `mlflow server` for tracking, as on a cluster.
Each agent is an array task; SLURM cancels, requeues and SIGTERMs them mid-cell, and every cell still ends with
exactly one FINISHED MLflow run under one FINISHED parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml

from reslab.sweep import queue as q
from tests.drills import slurm as cluster
from tests.drills.conftest import create_database, record
from tests.drills.test_drills import children, parents, queue
from tests.helpers import wait_until

pytestmark = pytest.mark.drills

CELLS = 8  # plain and residual at depths 8 and 14, seeds 0 and 1
HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def slurm() -> cluster.SlurmCluster:
    absent = cluster.missing()
    if absent and os.environ.get("RESLAB_SLURM") == "0":  # nox said it could not install them here
        pytest.skip(f"SLURM is not installed ({', '.join(absent)} missing) and cannot be here")
    if absent:
        pytest.fail(f"the SLURM drill needs {', '.join(absent)}: install Debian's munge, slurmctld, slurmd and "
                    f"slurm-client (nox -s tests does)")  # fmt: skip
    found = cluster.SlurmCluster()
    found.start()
    try:
        yield found
    finally:
        found.stop()


def config(tmp: Path, name: str, epochs: int = 6, **grid) -> Path:
    data = {
        "name": name,
        "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 512, "test_size": 64}},
        "grid": {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8, 14], "widths": [4],
                 "seeds": [0, 1], **grid},
        "train": {"epochs": epochs, "batch_size": 64, "warmup_epochs": 0.5, "threads": 1},
        "tracking": {"system_metrics": False},
        "sweep": {"heartbeat_s": HEARTBEAT_S, "grace_s": 8, "slurm": {"cpus_per_agent": 1}},
    }  # fmt: skip
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sweep(slurm: cluster.SlurmCluster, tmp: Path, cfg: Path, storage: str, tracking: str, *extra: str,
          node: str = "slurm-node") -> subprocess.Popen:  # fmt: skip
    env = dict(slurm.env, RESLAB_STORAGE=storage, RESLAB_NODE=node)  # sbatch passes it on to the agents
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "reslab.cli", "sweep", str(cfg), "--tracking-uri", tracking, *extra]
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def once(storage: str, tracking: str, name: str) -> dict:
    finished = Counter(r.data.tags["reslab.cell"] for r in children(tracking, name) if r.info.status == "FINISHED")
    complete = Counter(q.item_of(t) for t in queue(storage, name).trials() if t.state == q.TrialState.COMPLETE)
    return {"cells_run_once": sum(1 for n in finished.values() if n == 1),
            "duplicates": sum(n - 1 for n in finished.values()) + sum(n - 1 for n in complete.values()),
            "lost": CELLS - len(finished)}  # fmt: skip


def holding_agent(storage: str, name: str, task: str | None = None) -> tuple[q.FrozenTrial, psutil.Process]:
    """A running trial with its MLflow run started, and the agent process whose worker holds it."""
    for t in queue(storage, name).trials((q.TrialState.RUNNING,)):
        if q.RUN_ID not in t.user_attrs:
            continue
        agent = psutil.Process(int(t.user_attrs[q.PID])).parent()
        if task is None or agent.environ().get("SLURM_ARRAY_TASK_ID") == task:
            return t, agent
    raise LookupError("no agent holds a cell yet")


def test_an_array_job_runs_every_cell_once_and_a_cancelled_task_gives_its_cell_back(
    slurm: cluster.SlurmCluster, tmp_path: Path, postgres: str, mlflow_server: str
) -> None:  # fmt: skip
    name = "drill-slurm"
    storage = create_database(postgres, "drill_slurm")
    t0 = time.time()
    proc = sweep(slurm, tmp_path, config(tmp_path, name, epochs=10), storage, mlflow_server, "--launcher", "slurm",
                 "--agents", "2")  # fmt: skip
    found: list = []
    wait_until(lambda: found.append(holding_agent(storage, name, "0")) or True, what="agent 0 to hold a cell")
    victim, agent = found[-1]
    job = agent.environ()["SLURM_ARRAY_JOB_ID"]
    slurm.run("scancel", f"{job}_0")
    out, _ = proc.communicate(timeout=300)
    wall = time.time() - t0
    assert proc.returncode == 0, out + slurm.logs()
    assert f"submitted SLURM job {job}: 2 agents" in out and "All 8 runs have results" in out
    result = {"drill": "SLURM array, one task cancelled mid-cell", "cells": CELLS, **once(storage, mlflow_server, name),
              "wall_s": round(wall, 1)}  # fmt: skip
    record(result)
    assert result["cells_run_once"] == CELLS and result["duplicates"] == 0 and result["lost"] == 0
    (parent,) = parents(mlflow_server, name)
    assert parent.info.status == "FINISHED"
    assert len([r for r in children(mlflow_server, name) if r.info.status == "FINISHED"]) == CELLS
    cancelled = next(r for r in children(mlflow_server, name) if r.info.run_id == victim.user_attrs[q.RUN_ID])
    assert cancelled.info.status == "KILLED" and "SIGTERM" in cancelled.data.tags["reslab.failure"]
    retried = [t for t in queue(storage, name).trials() if q.item_of(t) == q.item_of(victim)]
    assert [t.state for t in retried] == [q.TrialState.FAIL, q.TrialState.COMPLETE]
    assert "SIGTERM" in retried[0].user_attrs[q.LOST]
    logs = sorted(p.name for p in (tmp_path / "runs" / name).glob("agent-*"))
    assert logs == ["agent-0-worker-0.log", "agent-0.log", "agent-1-worker-0.log", "agent-1.log"]
    status = subprocess.run([sys.executable, "-m", "reslab.cli", "status", name, "--storage", storage,
                             "--tracking-uri", mlflow_server],
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert f"sweep {name}: 8 of 8 cells done, 0 running, 0 waiting, 0 failed" in status.stdout, status.stderr
    assert "FINISHED; child runs: 8 FINISHED, 1 KILLED" in status.stdout


def test_a_sigterm_agent_gives_its_cell_to_the_other_at_once(
    slurm: cluster.SlurmCluster, tmp_path: Path, postgres: str, mlflow_server: str
) -> None:  # fmt: skip
    """Two cells, one short and one long: when the short one is done, its agent waits on the queue; SIGTERM to the
    other agent (a time limit, preemption) hands the long cell to it within heartbeat_s + 5 s."""
    name = "drill-sigterm"
    storage = create_database(postgres, "drill_sigterm")
    cfg = config(tmp_path, name, epochs=3, blocks=["residual"], depths=[8], seeds=[0])
    data = yaml.safe_load(cfg.read_text())
    data["arms"] = [{"grid": {"depths": [14]}, "train": {"epochs": 200}}]
    cfg.write_text(yaml.safe_dump(data))
    proc = sweep(slurm, tmp_path, cfg, storage, mlflow_server, "--launcher", "slurm", "--agents", "2", "--detach")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Detached" in out, out
    trials = lambda: queue(storage, name).trials()  # noqa: E731

    def one_done_one_running() -> bool:
        done = [t for t in trials() if t.state == q.TrialState.COMPLETE]
        return bool(done) and bool(holding_agent(storage, name))

    wait_until(one_done_one_running, what="the short cell done and the long one running")
    victim, agent = holding_agent(storage, name)
    job = agent.environ()["SLURM_ARRAY_JOB_ID"]
    t0 = time.time()
    agent.send_signal(signal.SIGTERM)

    def claimed_elsewhere() -> bool:
        return any(t.state in (q.TrialState.RUNNING, q.TrialState.COMPLETE) and q.item_of(t) == q.item_of(victim)
                   and t.number != victim.number and q.PID in t.user_attrs for t in trials())  # fmt: skip

    wait_until(claimed_elsewhere, timeout=60, what="the other agent to claim the cell")
    handover = time.time() - t0
    record({"drill": "SIGTERM to a SLURM agent mid-cell", "handover_s": round(handover, 1),
            "bound_s": HEARTBEAT_S + 5})  # fmt: skip
    assert handover <= HEARTBEAT_S + 5
    slurm.run("scancel", job)  # the long cell need not finish: the drill is the hand-over


def test_slurm_and_a_local_agent_share_a_sweep_and_a_requeued_task_duplicates_nothing(
    slurm: cluster.SlurmCluster, tmp_path: Path, postgres: str, mlflow_server: str
) -> None:  # fmt: skip
    """The local `reslab sweep` starts once the SLURM agent is mid-cell (on a loaded machine a local worker could
    otherwise run every cell before SLURM starts its agent); then the SLURM task is requeued."""
    name = "drill-mixed"
    storage = create_database(postgres, "drill_mixed")
    cfg = config(tmp_path, name, epochs=12)
    t0 = time.time()
    submitted = sweep(slurm, tmp_path, cfg, storage, mlflow_server, "--launcher", "slurm", "--agents", "1",
                      "--detach")  # fmt: skip
    out, _ = submitted.communicate(timeout=120)
    assert submitted.returncode == 0, out
    found: list = []
    wait_until(lambda: found.append(holding_agent(storage, name, "0")) or True, what="the SLURM agent mid-cell")
    victim, agent = found[-1]
    job = agent.environ()["SLURM_ARRAY_JOB_ID"]
    local = sweep(slurm, tmp_path, cfg, storage, mlflow_server, "--workers", "1", node="workstation")
    slurm.run("scontrol", "requeue", f"{job}_0")
    # SLURM holds a requeued job for 120 s (BeginTime); an administrator's `StartTime=now` releases it at once
    wait_until(lambda: "BeginTime" in slurm.run("squeue", "-h", "-j", job, "-o", "%r"), what="the task requeued")
    slurm.run("scontrol", "update", f"JobId={job}_0", "StartTime=now")
    out, _ = local.communicate(timeout=300)
    assert local.returncode == 0, out
    wait_until(lambda: not slurm.run("squeue", "-h", "-j", job).strip(), timeout=120, what="the array job to end")
    starts = (tmp_path / "runs" / name / "agent-0.log").read_text().count(f"sweep {name}: ")
    assert starts == 2, "the requeued agent started once more"
    result = {"drill": "SLURM agent + local agent on one sweep, a task requeued", "cells": CELLS,
              **once(storage, mlflow_server, name), "wall_s": round(time.time() - t0, 1)}  # fmt: skip
    record(result)
    assert result["cells_run_once"] == CELLS and result["duplicates"] == 0 and result["lost"] == 0
    (parent,) = parents(mlflow_server, name)
    assert parent.info.status == "FINISHED"
    trials = queue(storage, name).trials()
    assert {t.user_attrs[q.HOST] for t in trials if q.HOST in t.user_attrs} == {"workstation", "slurm-node"}
    requeued = [t for t in trials if q.item_of(t) == q.item_of(victim)]
    assert [t.state for t in requeued] == [q.TrialState.FAIL, q.TrialState.COMPLETE]
    assert "SIGTERM" in requeued[0].user_attrs[q.LOST]
