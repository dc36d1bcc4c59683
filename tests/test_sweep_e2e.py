"""`reslab sweep` end to end, as a user runs it (a subprocess in a fresh folder): every cell once with 2 workers,
resume after SIGKILL and after Ctrl-C, failed cells recorded, tuning. Slow: real training of tiny nets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from reslab.sweep import queue as q
from tests.helpers import interruptible, wait_until

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 512, "test_size": 64}},
    "grid": {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8, 14], "widths": [4], "seeds": [0]},
    "train": {"epochs": 3, "batch_size": 64, "warmup_epochs": 0.5},
    "tracking": {"system_metrics": False},
    "sweep": {"workers": 1, "heartbeat_s": 1, "grace_s": 20},  # two where a test is about two
}
CELLS = {"plain-8-w4-s0", "plain-14-w4-s0", "residual-8-w4-s0", "residual-14-w4-s0"}


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised MLflow sqlite DB (its migrations take ~7 s): each test starts from a copy."""
    from reslab import tracking

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking.store(f"sqlite:///{path}").prepare("warmup")
    return path


@pytest.fixture
def workdir(tmp_path: Path, template_store: Path) -> Path:
    shutil.copy(template_store, tmp_path / "mlflow.db")
    return tmp_path


def write_config(workdir: Path, **changes: object) -> Path:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = workdir / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sweep_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reslab.cli", "sweep", str(config), *extra]


def run_sweep(workdir: Path, config: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(sweep_cmd(config, *extra), cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def client(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def search(workdir: Path, filter_string: str = "", experiment: str = "tiny") -> list:
    c = client(workdir)
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id], filter_string, max_results=1000)


def children(workdir: Path) -> list:
    return [r for r in search(workdir) if "mlflow.parentRunId" in r.data.tags]


def sweep_parents(workdir: Path) -> list:
    return search(workdir, "tags.`reslab.role` = 'sweep'")


def assert_one_parent(workdir: Path) -> None:
    """One parent run for the sweep, holding the config, and every child attached to it."""
    (parent,) = sweep_parents(workdir)
    assert "config.yaml" in {a.path for a in client(workdir).list_artifacts(parent.info.run_id)}
    assert {r.data.tags["mlflow.parentRunId"] for r in children(workdir)} == {parent.info.run_id}


def finished_per_cell(workdir: Path) -> Counter:
    return Counter(r.info.run_name for r in children(workdir) if r.info.status == "FINISHED")


def study(workdir: Path, name: str = "tiny") -> q.SweepQueue:
    return q.SweepQueue(q.open_storage(str(workdir / "runs" / name / "optuna.journal")), name, create=False)


def complete_per_item(workdir: Path) -> Counter:
    return Counter(q.item_of(t) for t in study(workdir).trials((q.TrialState.COMPLETE,)))


def test_two_workers_run_every_cell_exactly_once_and_a_rerun_runs_nothing(workdir: Path) -> None:
    config = write_config(workdir, sweep__workers=2)
    first = run_sweep(workdir, config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 to run on 2 workers" in first.stdout and "All 4 runs have results" in first.stdout
    counts = complete_per_item(workdir)
    assert len(counts) == 4 and set(counts.values()) == {1}
    assert all(t.state == q.TrialState.COMPLETE for t in study(workdir).trials())  # nothing ran twice
    assert finished_per_cell(workdir) == Counter({cell: 1 for cell in CELLS})
    runs = children(workdir)
    hosts = {r.data.tags["reslab.cell"] for r in runs}
    assert len(hosts) == 4
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    pids = {t.user_attrs[q.PID] for t in study(workdir).trials()}
    assert len(pids) == 2  # both workers worked
    second = run_sweep(workdir, config)
    assert second.returncode == 0 and "4 done, 0 to run" in second.stdout
    assert len(children(workdir)) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children(workdir)} == parents


def _one_done_one_running(workdir: Path) -> bool:
    trials = study(workdir).trials()
    done = [t for t in trials if t.state == q.TrialState.COMPLETE]
    running = [t for t in trials if t.state == q.TrialState.RUNNING and q.RUN_ID in t.user_attrs]
    return bool(done) and bool(running)


def _start(workdir: Path, config: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(sweep_cmd(config), cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=interruptible)  # fmt: skip


def test_sigkill_mid_run_then_rerun_completes_with_one_finished_run_per_cell(workdir: Path) -> None:
    config = write_config(workdir, train__epochs=12)
    proc = _start(workdir, config)
    wait_until(lambda: _one_done_one_running(workdir))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = [t for t in study(workdir).trials() if t.state == q.TrialState.RUNNING]
    assert killed, "a cell should have been running when the sweep was killed"
    rerun = run_sweep(workdir, config)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert finished_per_cell(workdir) == Counter({cell: 1 for cell in CELLS})
    counts = complete_per_item(workdir)
    assert len(counts) == 4 and set(counts.values()) == {1}
    statuses = study(workdir).status([(key, 0) for key in {q.item_of(t)[0] for t in study(workdir).trials()}])
    assert {s.state for s in statuses.values()} == {"done"}
    killed_runs = {t.user_attrs[q.RUN_ID] for t in killed if q.RUN_ID in t.user_attrs}
    assert killed_runs  # the running cell we waited for had its MLflow run
    by_id = {r.info.run_id: r for r in children(workdir)}
    for run_id in killed_runs:
        assert by_id[run_id].info.status == "FAILED"  # the killed attempt, never FINISHED nor left RUNNING
        assert by_id[run_id].data.tags["reslab.failure"].startswith("worker lost")
    assert_one_parent(workdir)


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(workdir: Path) -> None:
    config = write_config(workdir, train__epochs=12)
    proc = _start(workdir, config)
    wait_until(lambda: _one_done_one_running(workdir))
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, out
    assert "Resume with: reslab sweep" in out
    trials = study(workdir).trials()
    assert not [t for t in trials if t.state == q.TrialState.RUNNING]
    interrupted = [t for t in trials if t.user_attrs.get(q.FAILURE) == "interrupted"]
    assert interrupted
    by_id = {r.info.run_id: r for r in children(workdir)}
    assert all(by_id[t.user_attrs[q.RUN_ID]].info.status == "KILLED" for t in interrupted if q.RUN_ID in t.user_attrs)
    rerun = run_sweep(workdir, config)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert finished_per_cell(workdir) == Counter({cell: 1 for cell in CELLS})
    assert_one_parent(workdir)


def test_starting_over_supersedes_the_old_parent_instead_of_mixing(workdir: Path) -> None:
    """Deleting the queue (runs/<name>) starts the sweep over: the old MLflow parent and its children are kept but
    marked superseded, and the new cells get a parent of their own, so no cell has two finished runs in a sweep."""
    config = write_config(workdir, grid__depths=[8], train__epochs=1)
    assert run_sweep(workdir, config).returncode == 0
    (old,) = sweep_parents(workdir)
    shutil.rmtree(workdir / "runs")
    again = run_sweep(workdir, config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "tagged reslab.role=superseded" in again.stdout
    (new,) = sweep_parents(workdir)
    assert new.info.run_id != old.info.run_id
    mine = [r for r in children(workdir) if r.data.tags["mlflow.parentRunId"] == new.info.run_id]
    assert sorted(r.info.run_name for r in mine if r.info.status == "FINISHED") == ["plain-8-w4-s0", "residual-8-w4-s0"]
    from reslab.report import collect

    data = collect(f"sqlite:///{workdir / 'mlflow.db'}", "tiny")
    assert len(data.cells) == 2 and set(data.cells["status"]) == {"FINISHED"}


def test_diverged_cells_are_results_and_the_sweep_goes_on(workdir: Path) -> None:
    """A NaN loss is an outcome of the experiment: the cells complete, their runs are FINISHED and tagged
    reslab.diverged, the sweep exits 0 and says which diverged."""
    config = write_config(workdir, train__lr=1.0e9, grid__norms=["none"], grid__depths=[8])
    result = run_sweep(workdir, config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("diverged: training loss became") == 2
    trials = study(workdir).trials()
    assert len(trials) == 2 and all(t.state == q.TrialState.COMPLETE for t in trials)
    assert all(t.user_attrs["reslab.diverged"].startswith("training loss became") for t in trials)
    runs = children(workdir)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["reslab.diverged"].startswith("training loss became") for r in runs)
    assert {r.data.tags["reslab.attempt"] for r in runs} == {"1"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cell_that_cannot_start_is_failed_in_optuna_and_in_mlflow(workdir: Path) -> None:
    """A cell whose setup fails (here: CUDA asked for on a machine without it) never trains, but the failure is
    recorded with its reason in the queue and as a FAILED child run, and the sweep goes on."""
    config = write_config(workdir, grid__depths=[8], train__device="cuda")
    result = run_sweep(workdir, config, "--report")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SetupError" in (workdir / "reports" / "tiny" / "index.html").read_text()  # the report still renders
    assert "2 of 2 runs failed" in result.stdout and "plain-8-w4-s0: SetupError" in result.stdout
    trials = study(workdir).trials()
    assert len(trials) == 2 and all("no CUDA device" in t.user_attrs[q.FAILURE] for t in trials)
    runs = children(workdir)
    assert sorted(r.info.run_name for r in runs) == ["plain-8-w4-s0", "residual-8-w4-s0"]
    assert all(r.info.status == "FAILED" and "SetupError" in r.data.tags["reslab.failure"] for r in runs)
    assert {r.data.tags["block"] for r in runs} == {"plain", "residual"}
    (parent,) = sweep_parents(workdir)
    assert parent.data.tags["reslab.cells_failed"] == "2"


def test_tuning_gives_every_cell_the_same_trial_budget(workdir: Path) -> None:
    config = write_config(
        workdir,
        dataset__options={"shape": [1, 16], "train_size": 256, "test_size": 64, "val_size": 64},
        grid__depths=[8],
        tune={"trials_per_cell": 3, "pruner": "none", "lr": [0.01, 0.3]},
    )
    result = run_sweep(workdir, config)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = children(workdir)
    per_cell = Counter(r.data.tags["reslab.cell"] for r in runs)
    assert sorted(per_cell.values()) == [3, 3]
    assert all(0.01 <= float(r.data.params["train.lr"]) <= 0.3 for r in runs)
    assert {r.data.tags["reslab.slot"] for r in runs} == {"0", "1", "2"}
    # the start-up trials are paired: slot k tries the same lr in every cell (common random numbers)
    by_slot: dict[str, set[str]] = {}
    for r in runs:
        by_slot.setdefault(r.data.tags["reslab.slot"], set()).add(r.data.params["train.lr"])
    assert all(len(lrs) == 1 for lrs in by_slot.values())
    assert len({lr for lrs in by_slot.values() for lr in lrs}) == 3
    assert "best trial per cell" in result.stdout


def _running_with_run(workdir: Path) -> list:
    return [t for t in study(workdir).trials() if t.state == q.TrialState.RUNNING and q.RUN_ID in t.user_attrs]


def pause_between_writes(pid: int, db: Path, tries: int = 200) -> None:
    """SIGSTOP `pid` at a moment it holds no lock on the sqlite store: a process stopped inside a write keeps the
    whole database locked (sqlite's locking, not the queue's), and every other process's access then fails. After
    each stop an exclusive transaction with no wait tells whether any lock is held; if one is, resume, let the
    write finish, and stop again."""
    import sqlite3
    import time

    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        probe = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)
        finally:
            probe.close()
    raise AssertionError(f"process {pid} held the store's lock at each of {tries} stops")


def test_a_worker_paused_past_its_lease_cannot_finish_a_second_run(workdir: Path) -> None:
    """Two machines' coordinators on one queue; machine a's worker is paused (SIGSTOP) after its MLflow run has
    started, longer than the grace period: machine b retries the cell and finishes it. When a's worker resumes,
    the queue refuses its commit: its run ends KILLED and tagged superseded, without a traceback, and the cell
    keeps exactly one FINISHED run."""
    # Training of a few seconds that writes to the sqlite store once an epoch: a worker paused mid-write would hold
    # the store's lock (a limit of sqlite, not of the queue), so the pause lands between writes.
    config = write_config(workdir, grid__blocks=["residual"], grid__depths=[8], train__epochs=6,
                          train__telemetry_every=100_000, dataset__options__train_size=4096,
                          sweep__workers=1, sweep__grace_s=6)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    a = subprocess.Popen(sweep_cmd(config), cwd=workdir, env={**env, "RESLAB_NODE": "a"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: bool(_running_with_run(workdir)))
        (held,) = _running_with_run(workdir)
        paused = int(held.user_attrs[q.PID])
        pause_between_writes(paused, workdir / "mlflow.db")
        b = subprocess.run(sweep_cmd(config), cwd=workdir, env={**env, "RESLAB_NODE": "b"}, capture_output=True,
                           text=True, timeout=240)  # fmt: skip
        assert b.returncode == 0, b.stdout + b.stderr
        os.kill(paused, signal.SIGCONT)
        out, _ = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    assert a.returncode == 0, out
    runs = children(workdir)
    assert [r.info.status for r in runs if r.info.status == "FINISHED"] == ["FINISHED"]
    first = next(r for r in runs if r.info.run_id == held.user_attrs[q.RUN_ID])
    assert first.info.status == "KILLED" and "lease was lost" in first.data.tags["reslab.superseded"]
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert finished.data.tags["reslab.attempt"] == "2"
    logs = "".join(p.read_text() for p in (workdir / "runs" / "tiny").glob("worker-*.log"))
    assert "superseded residual-8-w4-s0" in logs and "Traceback" not in logs
    counts = complete_per_item(workdir)
    assert list(counts.values()) == [1]


def test_a_cell_whose_worker_keeps_being_killed_fails_with_the_signal_named(workdir: Path) -> None:
    """The OOM killer looks like SIGKILL: the cell is lost and retried up to the limit, then FAILED with the
    signal named; the sweep exits 1, says which cell failed and why, and tags its parent with the count."""
    config = write_config(workdir, grid__blocks=["residual"], grid__depths=[8], train__epochs=200, sweep__workers=1)
    proc = _start(workdir, config)
    killed: list[int] = []
    try:
        for _ in range(q.MAX_LOST + 1):
            wait_until(lambda: any(t.number not in killed for t in _running_with_run(workdir)))
            trial = next(t for t in _running_with_run(workdir) if t.number not in killed)
            os.kill(int(trial.user_attrs[q.PID]), signal.SIGKILL)
            killed.append(trial.number)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out
    assert "residual-8-w4-s0: worker killed by SIGKILL (out of memory?)" in out
    runs = children(workdir)
    assert len(runs) == q.MAX_LOST + 1 and {r.info.status for r in runs} == {"FAILED"}
    assert sorted(r.data.tags["reslab.attempt"] for r in runs) == ["1", "2", "3", "4"]
    assert all("killed by SIGKILL" in r.data.tags["reslab.failure"] for r in runs)
    (parent,) = sweep_parents(workdir)
    assert parent.data.tags["reslab.cells_failed"] == "1"
