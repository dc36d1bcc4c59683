"""A randomized fault drill for the sweep's exactly-once promise: every cell trained to one FINISHED child run,
whatever happens to the processes and servers around it.

Rounds of two small sweeps (eight single-device cells on MNIST-1D, one thread each, and one cell trained by DDP
on two CPU processes) run under a seeded schedule of faults drawn from the ones real clusters have: a worker
SIGKILLed (the OOM killer); a coordinator SIGKILLed, then rerun; a worker paused (SIGSTOP) past its lease, then
resumed; the multi-device cell's process SIGKILLed; the PostgreSQL server restarted; a torn journal line (a writer
killed mid-append); a second machine's coordinator joining with its clock ten minutes off. A coordinator that
exits before its sweep is done is rerun, as a user would. After each round, the drill counts duplicates (cells
with more than one FINISHED child run), lost cells (no FINISHED run although the sweep said done), checks that the
sweep has one FINISHED parent whose finished children are exactly its grid, and that every cell's final metrics
equal those of the same cell trained without faults.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from reslab.sweep import queue as q

GRACE_S = 8.0
HEARTBEAT_S = 1.0
METRICS = ("train_error", "test_error", "train_loss", "test_loss")
COMMON_KINDS = ("kill_worker", "kill_coordinator", "pause_worker", "kill_cell", "second_node")
BACKEND_KINDS = {"journal": ("torn_journal",), "postgres": ("restart_postgres",)}


def sweep_config(name: str, ddp: bool) -> dict:
    """Eight cells of a few seconds each (plain and residual, depths 8 and 14, two seeds), or one DDP cell."""
    grid = {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8, 14], "widths": [4], "seeds": [0, 1]}
    # Telemetry every epoch or so, not every 10 steps: a worker paused (SIGSTOP) in the middle of a write to the
    # sqlite store holds its lock until it is resumed, which stalls every other process (a limit of sqlite).
    train = {"epochs": 4, "batch_size": 64, "warmup_epochs": 1, "threads": 1, "device": "cpu", "telemetry_every": 13}
    if ddp:
        grid = {**grid, "blocks": ["residual"], "depths": [8], "seeds": [0]}
        train = {**train, "epochs": 10, "devices": 2, "strategy": "ddp"}
    return {
        "name": name,
        "dataset": {"name": "mnist1d", "options": {"num_samples": 1000}},
        "grid": grid,
        "train": train,
        "tracking": {"system_metrics": False, "experiment": "chaos"},
        "sweep": {"workers": 1 if ddp else 2, "heartbeat_s": HEARTBEAT_S, "grace_s": GRACE_S},
    }


@dataclass
class Backend:
    """Where the queue and the runs live: the journal + sqlite on this machine, or PostgreSQL + `mlflow server`."""

    kind: str
    tracking: str
    storage: Callable[[str], str | None]  # sweep name -> --storage (None: the journal under runs/<name>/)
    restart: Callable[[], None] | None = None  # restarts the database server


@dataclass
class Coordinator:
    sweep: str
    node: str
    proc: subprocess.Popen
    restarts: int = 0


@dataclass
class Figures:
    backend: str
    seed: int
    faults: Counter = field(default_factory=Counter)
    rounds: int = 0
    cells: int = 0
    duplicates: int = 0
    lost: int = 0
    retries: int = 0
    superseded: int = 0
    mismatched: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_json(self) -> dict:
        faults = dict(sorted(self.faults.items()))
        return {"drill": "chaos", "backend": self.backend, "seed": self.seed, "faults": faults,
                "rounds": self.rounds, "cells": self.cells, "duplicates": self.duplicates, "lost": self.lost,
                "retries": self.retries, "superseded": self.superseded, "metric_mismatches": len(self.mismatched),
                "inconsistent_parents": len(self.inconsistent), "wall_s": round(self.wall_s, 1)}  # fmt: skip


def _env(node: str, offset_s: float = 0.0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(RESLAB_NODE=node, RESLAB_CLOCK_OFFSET_S=str(offset_s), PYTHONUNBUFFERED="1")
    return env


def final_metrics(tracking: str, experiment: str, sweep: str) -> dict[str, dict[str, float]]:
    """Cell key -> final metrics of the sweep's FINISHED child runs (the last one per cell)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`reslab.sweep` = '{sweep}'", max_results=5000)
    return {r.data.tags["reslab.cell"]: {k: r.data.metrics[k] for k in METRICS if k in r.data.metrics}
            for r in runs if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags}  # fmt: skip


class Drill:
    """One backend's drill: rounds of sweeps under `n_faults` faults drawn with `seed`."""

    def __init__(self, workdir: Path, backend: Backend, seed: int, n_faults: int, log: Callable[[str], None] = print):
        self.workdir = workdir
        self.backend = backend
        self.rng = random.Random(seed)
        kinds = COMMON_KINDS + BACKEND_KINDS[backend.kind]
        first = list(kinds)
        self.rng.shuffle(first)  # every kind at least once, then a seeded random mix
        self.pending = first + [self.rng.choice(kinds) for _ in range(max(0, n_faults - len(kinds)))]
        self.kinds = kinds
        self.figures = Figures(backend.kind, seed)
        self.log = log
        self.coordinators: list[Coordinator] = []
        self.paused: list[tuple[float, psutil.Process]] = []
        self.queues: dict[str, q.SweepQueue] = {}

    # -- processes ---------------------------------------------------------------------------------------------------
    def start(self, sweep: str, node: str = "a", offset_s: float = 0.0) -> Coordinator:
        cmd = [sys.executable, "-m", "reslab.cli", "sweep", str(self.workdir / f"{sweep}.yaml"),
               "--tracking-uri", self.backend.tracking]  # fmt: skip
        storage = self.backend.storage(sweep)
        if storage:
            cmd += ["--storage", storage]
        log = open(self.workdir / f"{sweep}-{node}.log", "a")  # noqa: SIM115 - the child writes to it
        proc = subprocess.Popen(cmd, cwd=self.workdir, env=_env(node, offset_s), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        coordinator = Coordinator(sweep, node, proc)
        self.coordinators.append(coordinator)
        return coordinator

    def live(self, node: str | None = None) -> list[Coordinator]:
        return [c for c in self.coordinators if c.proc.poll() is None and (node is None or c.node == node)]

    @staticmethod
    def _descendants(c: Coordinator, module: str) -> list[psutil.Process]:
        try:
            procs = psutil.Process(c.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for p in procs:
            try:
                if module in p.cmdline() and p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def _queue(self, sweep: str) -> q.SweepQueue:
        if sweep not in self.queues:
            storage = self.backend.storage(sweep) or str(self.workdir / "runs" / sweep / "optuna.journal")
            self.queues[sweep] = q.SweepQueue(q.open_storage(storage, create=False), sweep, create=False)
        return self.queues[sweep]

    def _busy_workers(self) -> list[psutil.Process]:
        """Workers that hold a RUNNING trial whose MLflow run has started (a fault there costs real work)."""
        holders = set()
        for sweep in {c.sweep for c in self.live()}:
            try:
                holders |= {int(t.user_attrs[q.PID]) for t in self._queue(sweep).trials((q.TrialState.RUNNING,))
                            if q.RUN_ID in t.user_attrs and q.PID in t.user_attrs}  # fmt: skip
            except Exception:
                continue
        return [p for c in self.live() for p in self._descendants(c, "reslab.sweep.worker") if p.pid in holders]

    # -- faults ------------------------------------------------------------------------------------------------------
    def inject(self, kind: str, sweeps: list[str]) -> bool:
        """Inject one fault of `kind` if it can be now (a worker to kill must be busy, ...); True if it was."""
        if kind == "kill_worker":
            workers = self._busy_workers()
            if not workers:
                return False
            self.rng.choice(workers).kill()
        elif kind == "kill_coordinator":
            live = self.live("a")
            if not live:
                return False
            c = self.rng.choice(live)
            c.proc.send_signal(signal.SIGKILL)
            c.proc.wait()
        elif kind == "pause_worker":
            workers = self._busy_workers()
            if not workers:
                return False
            worker = self.rng.choice(workers)
            worker.suspend()
            self.paused.append((time.monotonic() + GRACE_S + 4 + self.rng.uniform(0, 4), worker))
        elif kind == "kill_cell":
            cells = [p for c in self.live() for p in self._descendants(c, "reslab.sweep.cell")
                     if p.parent() is not None and "reslab.sweep.worker" in p.parent().cmdline()]  # fmt: skip
            if not cells:
                return False
            self.rng.choice(cells).kill()
        elif kind == "second_node":
            if self.live("b"):
                return False
            self.start(sweeps[0], "b", offset_s=self.rng.choice((-600.0, 600.0)))
        elif kind == "restart_postgres":
            self.backend.restart()
        elif kind == "torn_journal":
            journal = self.workdir / "runs" / sweeps[0] / "optuna.journal"
            if not journal.exists():
                return False
            from optuna.storages.journal import JournalFileOpenLock

            lock = JournalFileOpenLock(str(journal))
            lock.acquire()
            try:
                with open(journal, "ab") as fh:
                    fh.write(b'{"op_code": 5, "worker_id": "torn-by-the-drill", "trial_id": 0, "user_a')
            finally:
                lock.release()
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.figures.faults[kind] += 1
        self.log(f"  fault {sum(self.figures.faults.values())}: {kind}")
        return True

    def _resume_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for due, worker in list(self.paused):
            if everything or now >= due:
                with contextlib.suppress(psutil.Error):
                    worker.resume()
                self.paused.remove((due, worker))

    # -- a round -----------------------------------------------------------------------------------------------------
    def _done(self, sweep: str) -> bool:
        config = yaml.safe_load((self.workdir / f"{sweep}.yaml").read_text())
        from reslab.sweep.config import load_config
        from reslab.sweep.queue import items_of

        _, items = items_of(load_config(config))
        try:
            statuses = self._queue(sweep).status(items)
        except Exception:
            return False
        return all(s.state == "done" for s in statuses.values())

    def run_round(self, number: int, deadline_s: float = 900.0) -> list[str]:
        sweeps = [f"chaos{number}", f"chaosddp{number}"]
        for sweep in sweeps:
            (self.workdir / f"{sweep}.yaml").write_text(yaml.safe_dump(sweep_config(sweep, "ddp" in sweep)))
            self.start(sweep)
        t_end = time.monotonic() + deadline_s
        finished: set[str] = set()
        while len(finished) < len(sweeps):
            if time.monotonic() > t_end:
                raise AssertionError(f"round {number} did not finish in {deadline_s:.0f} s")
            time.sleep(self.rng.uniform(1.5, 4.0))
            self._resume_due()
            open_sweeps = [s for s in sweeps if s not in finished]
            for kind in list(self.pending):
                target = [s for s in open_sweeps if ("ddp" in s) == (kind == "kill_cell")] or open_sweeps
                if self.inject(kind, target):
                    self.pending.remove(kind)
                    break
            for sweep in open_sweeps:
                if self.live() and any(c.sweep == sweep for c in self.live()):
                    continue
                if self.paused:
                    continue  # a paused worker still holds a cell: its coordinator waits for it
                a = [c for c in self.coordinators if c.sweep == sweep and c.node == "a"]
                last = a[-1] if a else None
                if last is not None and last.proc.returncode == 0 and self._done(sweep):
                    finished.add(sweep)
                    continue
                if sum(c.restarts for c in a) > 40:
                    raise AssertionError(f"{sweep}: coordinators kept exiting before it was done")
                self.start(sweep).restarts = 1  # a coordinator died or gave up early: rerun it, as a user would
        self._resume_due(everything=True)
        return sweeps

    # -- the checks --------------------------------------------------------------------------------------------------
    def check(self, sweeps: list[str], reference: dict[str, dict[str, dict[str, float]]]) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.backend.tracking)
        exp = client.get_experiment_by_name("chaos")
        for sweep in sweeps:
            config = sweep_config(sweep, "ddp" in sweep)
            from reslab.sweep.config import load_config
            from reslab.sweep.queue import items_of

            cells, _ = items_of(load_config(config))
            runs = client.search_runs([exp.experiment_id], f"tags.`reslab.sweep` = '{sweep}'", max_results=5000)
            parents = [r for r in runs if r.data.tags.get("reslab.role") == "sweep"]
            kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
            finished = Counter(r.data.tags["reslab.cell"] for r in kids if r.info.status == "FINISHED")
            self.figures.cells += len(cells)
            self.figures.duplicates += sum(n - 1 for n in finished.values() if n > 1)
            self.figures.lost += sum(1 for key in cells if finished[key] == 0)
            self.figures.superseded += sum(1 for r in kids if "reslab.superseded" in r.data.tags)
            self.figures.retries += sum(1 for r in kids if int(r.data.tags.get("reslab.attempt", 1)) > 1)
            ok_parent = (len(parents) == 1 and parents[0].info.status == "FINISHED"
                         and set(finished) == set(cells)
                         and {r.data.tags["mlflow.parentRunId"] for r in kids} == {parents[0].info.run_id})  # fmt: skip
            if not ok_parent:
                self.figures.inconsistent.append(sweep)
            expected = reference["ddp" if "ddp" in sweep else "main"]
            got = final_metrics(self.backend.tracking, "chaos", sweep)
            for key, metrics in got.items():
                want = expected.get(key, {})
                if set(want) != set(metrics) or any(abs(metrics[k] - want[k]) > 1e-6 for k in want):
                    self.figures.mismatched.append(f"{sweep}/{key}: {metrics} != {want}")

    def run(self, reference: dict[str, dict[str, dict[str, float]]], max_rounds: int = 12) -> Figures:
        prepare_store(self.backend.tracking)
        t0 = time.perf_counter()
        number = 0
        try:
            while self.pending or number == 0:
                number += 1
                if number > max_rounds:
                    raise AssertionError(f"faults left after {max_rounds} rounds: {self.pending}")
                self.log(f"round {number} ({len(self.pending)} faults to go)")
                sweeps = self.run_round(number)
                for c in self.coordinators:  # the second node's coordinator ends when its sweep is done
                    c.proc.wait(timeout=180)
                self.check(sweeps, reference)
                self.figures.rounds = number
        finally:
            self._resume_due(everything=True)
            for c in self.coordinators:
                if c.proc.poll() is None:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                    c.proc.wait()
        self.figures.wall_s = time.perf_counter() - t0
        return self.figures


def prepare_store(tracking: str) -> None:
    """Create the store and the drill's experiment once: coordinators started at the same moment on a fresh sqlite
    store would race to create its tables (as two users starting sweeps at once would; the README says so)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    if client.get_experiment_by_name("chaos") is None:
        client.create_experiment("chaos")


def reference_metrics(workdir: Path, log: Callable[[str], None] = print) -> dict[str, dict[str, dict[str, float]]]:
    """The same cells trained without faults (journal + sqlite, the drill's configs under other names)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    prepare_store(tracking)
    sweeps = {"main": "chaosref", "ddp": "chaosrefddp"}
    procs = {}
    for label, name in sweeps.items():  # both at once, as the drill's rounds run them
        (workdir / f"{name}.yaml").write_text(yaml.safe_dump(sweep_config(name, label == "ddp")))
        cmd = [sys.executable, "-m", "reslab.cli", "sweep", f"{name}.yaml", "--tracking-uri", tracking]
        procs[label] = subprocess.Popen(cmd, cwd=workdir, env=_env("ref"), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out = {}
    for label, proc in procs.items():
        output, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise AssertionError(f"the fault-free reference sweep failed:\n{output}")
        out[label] = final_metrics(tracking, "chaos", sweeps[label])
    log(f"reference: {sum(len(v) for v in out.values())} cells trained without faults")
    return out


def record(figures: Figures, root: Path) -> dict:
    """Append the drill's figures to test-artifacts/chaos.jsonl and print them."""
    out = root / "test-artifacts"
    out.mkdir(exist_ok=True)
    data = figures.to_json()
    with open(out / "chaos.jsonl", "a") as fh:
        fh.write(json.dumps(data) + "\n")
    print(json.dumps(data))
    return data
