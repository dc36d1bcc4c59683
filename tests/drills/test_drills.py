"""Scale-out drills on real servers: two "machines" (coordinators with their own RESLAB_NODE) share one study on
PostgreSQL and one `mlflow server`; one machine dies mid-cell; servers are unreachable; the whole sweep is
interrupted. Each drill records cells run, duplicates, lost cells, retries and wall time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from reslab.sweep import queue as q
from tests.drills.conftest import create_database, free_port, record
from tests.helpers import interruptible, wait_until

pytestmark = pytest.mark.drills

CELLS = 6  # plain and residual at depths 8, 14, 20


def config(tmp: Path, name: str, epochs: int = 4) -> Path:
    data = {
        "name": name,
        "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 512, "test_size": 64}},
        "grid": {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8, 14, 20], "widths": [4]},
        # One thread per worker: two "machines" share this machine's cores, and two-thread OpenMP kernels of two
        # processes on two cores stall each other, which tests nothing of the queue.
        "train": {"epochs": epochs, "batch_size": 64, "warmup_epochs": 0.5, "threads": 1},
        "tracking": {"system_metrics": False},
        "sweep": {"heartbeat_s": 1, "grace_s": 8},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def coordinator(
    tmp: Path, cfg: Path, storage: str, tracking: str, node: str, workers: int = 1, *extra: str
) -> subprocess.Popen:
    env = dict(os.environ, RESLAB_NODE=node)
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "reslab.cli", "sweep", str(cfg), "--storage", storage, "--tracking-uri", tracking,
           "--workers", str(workers), *extra]  # fmt: skip
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=interruptible)  # fmt: skip


def queue(storage: str, name: str) -> q.SweepQueue:
    return q.SweepQueue(q.open_storage(storage, create=False), name, create=False)


def children(tracking: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "mlflow.parentRunId" in r.data.tags]


def parents(tracking: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], filter_string="tags.`reslab.role` = 'sweep'")


def figures(drill: str, storage: str, tracking: str, name: str, wall_s: float) -> dict:
    trials = queue(storage, name).trials()
    finished = Counter(r.data.tags["reslab.cell"] for r in children(tracking, name) if r.info.status == "FINISHED")
    complete = Counter(q.item_of(t) for t in trials if t.state == q.TrialState.COMPLETE)
    return {
        "drill": drill,
        "cells": CELLS,
        "cells_run_once": sum(1 for n in finished.values() if n == 1),
        "duplicates": sum(n - 1 for n in finished.values()) + sum(n - 1 for n in complete.values()),
        "lost": CELLS - len(finished),
        "retries": sum(1 for t in trials if t.state == q.TrialState.FAIL),
        "duplicate_enqueues_pruned": sum(1 for t in trials if t.state == q.TrialState.PRUNED),
        "wall_s": round(wall_s, 1),
    }


def test_two_machines_share_one_study_and_run_every_cell_once(tmp_path, postgres, mlflow_server) -> None:
    name = "drill-two"
    storage = create_database(postgres, "drill_two")
    cfg = config(tmp_path, name)
    t0 = time.time()
    machines = [coordinator(tmp_path, cfg, storage, mlflow_server, node) for node in ("machine-a", "machine-b")]
    outputs = [m.communicate(timeout=300)[0] for m in machines]
    wall = time.time() - t0
    assert [m.returncode for m in machines] == [0, 0], outputs
    result = figures("two machines, one study", storage, mlflow_server, name, wall)
    record(result)
    assert result["cells_run_once"] == CELLS and result["duplicates"] == 0 and result["lost"] == 0
    assert len(children(mlflow_server, name)) == CELLS  # nothing ran twice, not even a failed attempt
    assert len(parents(mlflow_server, name)) == 1  # created once, whoever came first
    hosts = {t.user_attrs[q.HOST] for t in queue(storage, name).trials((q.TrialState.COMPLETE,))}
    assert hosts == {"machine-a", "machine-b"}


def test_a_machine_dies_mid_cell_and_the_other_retries_it(tmp_path, postgres, mlflow_server) -> None:
    name = "drill-kill"
    storage = create_database(postgres, "drill_kill")
    cfg = config(tmp_path, name, epochs=10)
    t0 = time.time()
    a = coordinator(tmp_path, cfg, storage, mlflow_server, "machine-a")
    b = coordinator(tmp_path, cfg, storage, mlflow_server, "machine-b")

    def a_is_mid_cell() -> bool:
        running = queue(storage, name).trials((q.TrialState.RUNNING,))
        return any(t.user_attrs.get(q.HOST) == "machine-a" and q.RUN_ID in t.user_attrs for t in running)

    wait_until(a_is_mid_cell)
    victim = next(t for t in queue(storage, name).trials((q.TrialState.RUNNING,))
                  if t.user_attrs.get(q.HOST) == "machine-a" and q.RUN_ID in t.user_attrs)  # fmt: skip
    os.killpg(a.pid, signal.SIGKILL)  # machine A is gone: its coordinator and worker die mid-cell
    a.wait(timeout=30)
    out, _ = b.communicate(timeout=300)
    wall = time.time() - t0
    assert b.returncode == 0, out
    result = figures("one machine killed mid-cell", storage, mlflow_server, name, wall)
    record(result)
    assert result["cells_run_once"] == CELLS and result["duplicates"] == 0 and result["lost"] == 0
    assert result["retries"] >= 1
    killed = next(r for r in children(mlflow_server, name) if r.info.run_id == victim.user_attrs[q.RUN_ID])
    assert killed.info.status in ("FAILED", "KILLED")
    assert killed.data.tags["reslab.failure"].startswith("worker lost")
    retried = queue(storage, name).trials()
    assert any(t.state == q.TrialState.COMPLETE and q.item_of(t) == q.item_of(victim) for t in retried)


def test_a_queue_outage_past_the_retry_budget_stops_in_one_line_and_a_rerun_completes(tmp_path, pg_server) -> None:
    """PostgreSQL goes away mid-sweep for longer than `sweep.storage_retry_s`: the sweep stops with one line naming
    the storage (no password, no traceback) and does not leave its parent run RUNNING; once the database is back,
    the same command completes every cell once."""
    name = "drill-outage"
    storage = create_database(pg_server.url, "drill_outage")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tmp_path, name, epochs=10)
    proc = coordinator(tmp_path, cfg, storage, tracking, "machine-a", 1, "--set", "sweep.storage_retry_s=4")
    try:
        wait_until(lambda: any(q.RUN_ID in t.user_attrs for t in queue(storage, name).trials((q.TrialState.RUNNING,))))
        pg_server.halt()
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        pg_server.start()
    assert proc.returncode == 1, out
    stop = [line for line in out.splitlines() if "reslab sweep: stopped" in line]
    assert len(stop) == 1 and "was unavailable for" in stop[0] and "Traceback" not in out, out
    assert all(r.info.status != "RUNNING" for r in parents(tracking, name))
    t0 = time.time()
    rerun = coordinator(tmp_path, cfg, storage, tracking, "machine-a")
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    result = figures("queue outage past the retry budget, then a rerun", storage, tracking, name, time.time() - t0)
    record(result)
    assert result["cells_run_once"] == CELLS and result["duplicates"] == 0 and result["lost"] == 0


def test_unreachable_tracking_server_is_one_clear_error_before_training(tmp_path, postgres) -> None:
    storage = create_database(postgres, "drill_notrack")
    dead = f"http://127.0.0.1:{free_port()}"
    proc = coordinator(tmp_path, config(tmp_path, "drill-notrack"), storage, dead, "machine-a")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert f"MLflow tracking server {dead} is unreachable" in out and "Traceback" not in out
    assert not q.study_exists(q.open_storage(storage), "drill-notrack")  # nothing queued or trained
    record({"drill": "tracking server unreachable", "exit_code": proc.returncode, "message": out.strip()[-200:]})


def test_unreachable_postgres_is_one_clear_error_before_training(tmp_path, mlflow_server) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    proc = coordinator(tmp_path, config(tmp_path, "drill-nopg"), dead, mlflow_server, "machine-a")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "cannot open sweep storage postgresql://postgres@127.0.0.1" in out and "Traceback" not in out
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(mlflow_server).get_experiment_by_name("drill-nopg")
    assert exp is None or not MlflowClient(mlflow_server).search_runs([exp.experiment_id])
    record({"drill": "PostgreSQL unreachable", "exit_code": proc.returncode, "message": out.strip()[-200:]})


def test_sigint_stops_the_sweep_cleanly_and_a_rerun_completes(tmp_path, postgres, mlflow_server) -> None:
    name = "drill-int"
    storage = create_database(postgres, "drill_int")
    cfg = config(tmp_path, name, epochs=10)
    t0 = time.time()
    proc = coordinator(tmp_path, cfg, storage, mlflow_server, "machine-a", workers=2)

    def one_done_one_running() -> bool:
        trials = queue(storage, name).trials()
        done = [t for t in trials if t.state == q.TrialState.COMPLETE]
        return bool(done) and any(t.state == q.TrialState.RUNNING and q.RUN_ID in t.user_attrs for t in trials)

    wait_until(one_done_one_running)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Resume with: reslab sweep" in out, out
    assert not queue(storage, name).trials((q.TrialState.RUNNING,))
    rerun = coordinator(tmp_path, cfg, storage, mlflow_server, "machine-a", workers=2)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    result = figures("SIGINT, then rerun", storage, mlflow_server, name, time.time() - t0)
    record(result)
    assert result["cells_run_once"] == CELLS and result["duplicates"] == 0 and result["lost"] == 0
    interrupted = [r for r in children(mlflow_server, name) if r.info.status != "FINISHED"]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)
