"""`reslab sweep`: the coordinator. Idempotent steps: expand the grid, enqueue what is missing, run workers,
collect. Running it again runs only what is missing or failed; `--dry-run` only looks.

The coordinator never trains. It prepares the sweep once per start, before any worker starts: the tracking store and
the study (two processes creating one fresh sqlite DB corrupt it; two creating one study race), the sweep's MLflow
parent run, every missing cell enqueued. Then a launcher starts agents: `local` is this machine's own, N worker
processes with the CPU threads divided between them (one per GPU on a GPU machine); `slurm` submits an array job
of agents (`reslab.sweep.slurm`, `reslab.sweep.agent`). Either way it shows progress from the queue until the cells
are done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from reslab import tracking
from reslab.atomic import write_atomic
from reslab.devices import gpu_count, usable_cores, usable_memory, visible_gpus
from reslab.interrupts import EXIT_TERMINATED, Terminated, raise_terminated
from reslab.models.spec import spec_extras
from reslab.redact import (
    PASSWORD_ENV,
    STORAGE_ENV,
    TRACKING_ENV,
    USERNAME_ENV,
    password_of,
    redact_uri,
    remember,
)
from reslab.sweep.config import ConfigError, SweepConfig
from reslab.sweep.grid import Cell
from reslab.sweep.parent import ensure_sweep_run
from reslab.sweep.queue import CellQueue, Item, ItemStatus, QueueError, StorageUnavailable, is_rdb, items_of, run_name
from reslab.sweep.runs import mark_lost_run, settle_orphans
from reslab.sweep.worker import describe_exit
from reslab.tags import Tag

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_RESPAWNS = 3
#: A sweep worker's own memory before its first cell (torch, Lightning, MLflow imported): 630 MB resident, measured.
WORKER_BYTES = 640 * 2**20
#: train fields that change how fast a run goes, not what it computes: a rerun may change them.
EXECUTION_ONLY = ("device", "devices", "strategy", "threads", "telemetry_every", "eval_batch_size", "deterministic",
                  "probe", "compile", "channels_last")  # fmt: skip


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    threads: int | None
    gpus: list[str]  # CUDA_VISIBLE_DEVICES ids, as this process inherited them

    def describe(self) -> str:
        if self.gpus:
            return f"{self.workers} worker{'s' * (self.workers > 1)} (GPU {', '.join(map(str, self.gpus))})"
        return f"{self.workers} worker{'s' * (self.workers > 1)} x {self.threads} thread{'s' * (self.threads != 1)}"


def plan_workers(config: SweepConfig, n_items: int) -> WorkerPlan:
    """`auto`: one worker per GPU (per `devices` GPUs) when training on CUDA; on the CPU as many workers as cores,
    capped by the work and at 8, each with an equal share of the threads (small nets scale better by processes). The
    cores are those this process may run on (`usable_cores`), not the machine's; the GPUs those it inherited
    (`visible_gpus`)."""
    requested = config.sweep.workers
    device = config.train.device
    n_gpus = gpu_count() if device in ("auto", "cuda") else 0
    if n_gpus:
        per_cell = config.train.devices if isinstance(config.train.devices, int) else 1
        n = max(1, n_gpus // per_cell) if requested == "auto" else int(requested)
        return WorkerPlan(n, config.train.threads, visible_gpus(n_gpus))
    cores = usable_cores()
    n = max(1, min(cores, n_items, 8, _fit_in_memory(config))) if requested == "auto" else int(requested)
    threads = config.train.threads or max(1, cores // n)
    return WorkerPlan(n, threads, [])


def _fit_in_memory(config: SweepConfig) -> int:
    """How many CPU workers the memory this process may use holds (`usable_memory`: a SLURM allocation or a
    container's limit, not the node's), each with its imports and the largest cell's training."""
    from reslab.limits import training_bytes

    largest = max((training_bytes(cell.spec(), config.dataset, cell.recipe(config.train))[0]
                   for cell in config.cells()), default=0)  # fmt: skip
    return max(1, usable_memory() // (WORKER_BYTES + largest))


def gpus_of_worker(plan: WorkerPlan, i: int) -> list[str]:
    """Worker i's GPUs: an equal share when there are at least as many GPUs as workers, else one GPU shared
    round-robin (never none: a worker without a GPU would silently train on the CPU)."""
    per = len(plan.gpus) // plan.workers
    if per == 0:
        return [plan.gpus[i % len(plan.gpus)]]
    return plan.gpus[i * per : (i + 1) * per]


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'section.key: old -> new' for every recipe field that differs (execution-only train fields ignored). A train
    field the old recipe lacks (recorded before the field existed) counts as its default, the recipe it ran."""
    from reslab.train.config import TrainConfig

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and k != "options":
                out.update(flat(v, key + "."))
            elif not (prefix == "train." and k in EXECUTION_ONLY):
                out[key] = v
        return out

    defaults = flat({"train": TrainConfig().model_dump(mode="json")}) if "train" in old else {}
    a, b = {**defaults, **flat(old)}, flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Coordinator:
    def __init__(
        self, config: SweepConfig, console: Console | None = None, source: str = "", env_hint: str = ""
    ) -> None:
        self.config = config
        self.console = console or make_console()
        self.source = source or config.name
        self.env_hint = env_hint
        self.cells, self.items = items_of(config)
        self._procs: list[subprocess.Popen] = []  # the workers, once started
        self._parent: str | None = None  # the sweep's MLflow parent run, once attached
        self.log_prefix = ""  # of the workers' logs: an agent's own, so agents sharing runs/<name>/ keep theirs
        self.terminated = False  # SIGTERM stopped the workers
        self.storage_url = _absolute_storage(config.storage_url)
        self.uri = tracking.resolve_uri(config.tracking.uri)
        self.store = tracking.store(self.uri)
        remember(self.storage_url, config.tracking.uri)

    @property
    def resume(self) -> str:
        """The command that runs the rest of this sweep, and where its URIs come from when they hold passwords."""
        return f"reslab sweep {self.source}" + (f" ({self.env_hint})" if self.env_hint else "")

    # -- naming ----------------------------------------------------------------------------------------------------
    def label(self, item: Item) -> str:
        return run_name(self.config, self.cells[item[0]], item[1])

    # -- dry run ---------------------------------------------------------------------------------------------------
    def dry_run(self) -> int:
        from reslab.limits import net_estimate

        queue = CellQueue.existing(self.config, self.storage_url)
        statuses = queue.status() if queue is not None else {}
        table = Table(title=f"sweep {self.config.name}: {len(self.items)} runs ({self._plan_line()})")
        for col in ("run", "params", "MACs", "status", "attempts", "lease"):
            table.add_column(col, justify="right" if col in ("params", "MACs", "attempts") else "left")
        sizes: dict[Any, Any] = {}
        for item in self.items:
            spec = self.cells[item[0]].spec()
            if spec not in sizes:  # closed forms: a 1202-layer grid is listed in milliseconds, nothing is built
                sizes[spec] = net_estimate(spec, self.config.dataset)
            s = sizes[spec]
            st = statuses.get(item)
            state = st.state if st else "missing"
            if st is not None and st.state == "failed":
                state = f"failed: {st.reason}"
            table.add_row(self.label(item), f"{s.params:,}", f"{s.macs / 1e6:,.2f} M", state,
                          str(st.attempts if st else 0), st.lease() if st else "")  # fmt: skip
        self.console.print(table)
        done = sum(1 for st in statuses.values() if st.state == "done")
        self.console.print(f"{done} of {len(self.items)} done; `{self.resume}` runs the rest.")
        return EXIT_OK

    def _plan_line(self) -> str:
        return f"{plan_workers(self.config, len(self.items)).describe()}, {self.config.dataset.name}"

    # -- the real thing --------------------------------------------------------------------------------------------
    def prepare(self) -> tuple[CellQueue, str, dict[Item, ItemStatus]]:
        """The sweep's queue with every missing or failed cell enqueued, its MLflow parent run, orphaned child runs
        settled: idempotent, so any number of launchers and agents may share one sweep. Returns the queue, the
        parent run and every item's status before this start."""
        config = self.config
        # The queue first: an unreachable database must not leave a tracking store or experiment behind.
        queue = CellQueue(config, url=self.storage_url, on_lost=mark_lost_run(self.store))
        self.store.prepare(config.tracking.experiment)
        self._check_recipe(queue)
        parent, superseded = ensure_sweep_run(
            self.store, config.tracking.experiment, config.name, yaml.safe_dump(config.resolved(), sort_keys=False),
            {Tag.GIT_COMMIT: tracking.git_commit(), Tag.CONFIG: self.source},
            sweep_id=queue.sweep_id(), known_parent=queue.parent_run,
        )  # fmt: skip
        queue.set_parent_run(parent)
        self._parent = parent
        if superseded:
            self.console.print(
                f"[yellow]note[/]: MLflow already held sweep {config.name!r} from another queue (parent run "
                f"{', '.join(superseded)}); it is kept, tagged {Tag.ROLE}=superseded, and this queue records under "
                f"a new parent run"
            )
        self._report_grid_change(queue)
        before = queue.settle(retry_failed=True)
        self._close_orphans(queue, parent)
        return queue, parent, before

    def _header(self, todo: int, on: str) -> None:
        self.console.print(
            f"[bold]sweep {self.config.name}[/]: {len(self.items)} runs, {len(self.items) - todo} done, "
            f"{todo} to run on {on}\n"
            f"  queue  {redact_uri(self.storage_url)}\n  mlflow {redact_uri(self.uri)} "
            f"(experiment {self.config.tracking.experiment})"
        )

    def run(self) -> int:
        """The local launcher: prepare, then this machine's own agent, with progress, until every cell is done."""
        queue, parent, before = self.prepare()
        todo = [i for i, s in before.items() if s.state != "done"]
        plan = plan_workers(self.config, len(todo))
        self._header(len(todo), plan.describe())
        if not todo:
            return self._finish(queue, parent, interrupted=False)
        resolved = self._write_resolved()
        procs = self._procs = self._spawn(plan, resolved, parent)
        interrupted = self._watch(queue, procs, before)
        return self._finish(queue, parent, interrupted)

    def run_slurm(self, agents: int, detach: bool) -> int:
        """The SLURM launcher: prepare, submit `agents` agents as an array job (`reslab.sweep.slurm`), then show
        progress from the queue until every cell is done or the job has ended; `detach` returns after submitting."""
        from reslab.sweep import slurm

        problem = slurm.submit_problem()
        if problem:  # before the queue or MLflow are touched
            raise QueueError(problem)
        queue, parent, before = self.prepare()
        todo = [i for i, s in before.items() if s.state != "done"]
        self._header(len(todo), slurm.describe(self.config.sweep.slurm, agents))
        if not todo:
            return self._finish(queue, parent, interrupted=False)
        resolved = self._write_resolved()
        path = self.config.run_dir / "agents.sbatch"
        write_atomic(path, slurm.script(self.config, agents, resolved))
        env = dict(os.environ, **{STORAGE_ENV: self.storage_url, TRACKING_ENV: self.uri})
        job = slurm.submit(path, env)
        self.console.print(f"submitted SLURM job {job}: {agents} agent{'s' * (agents > 1)}, script {path}, logs "
                           f"{self.config.run_dir}/agent-*.log")  # fmt: skip
        follow = f"follow it with `reslab status {self.config.name}`; stop it with `scancel {job}`"
        if detach:
            self.console.print(f"Detached: the agents run on. {follow[0].upper()}{follow[1:]}.")
            return EXIT_OK
        try:
            interrupted = self._watch(queue, [], before, alive=lambda: slurm.job_alive(job))
        except KeyboardInterrupt:
            interrupted = True
        if interrupted:
            self.console.print(f"Stopped watching; the agents run on: {follow}.")
            return EXIT_INTERRUPTED
        return self._finish(queue, parent, interrupted=False, logs="agent-*.log")

    def agent(self, label: str) -> int:
        """One agent of a sweep someone prepared (`reslab.sweep.agent`, started by SLURM): this allocation's
        workers, until no cell is left; the parent run ends FINISHED with the last cell, whoever ran it. SIGTERM
        (a time limit, preemption, `scancel`) gives the workers' cells back at once."""
        self.log_prefix = f"agent-{label}-"
        queue = CellQueue(self.config, url=self.storage_url, create=False, on_lost=mark_lost_run(self.store))
        parent = queue.parent_run
        if parent is None:
            raise QueueError(f"sweep {self.config.name!r} has no parent run in its queue: start it with `reslab "
                             f"sweep`, which prepares it before it starts agents")  # fmt: skip
        self._parent = parent
        before = queue.settle(retry_failed=False)
        todo = [i for i, s in before.items() if s.state != "done"]
        plan = plan_workers(self.config, len(todo))
        self._header(len(todo), f"agent {label}: {plan.describe()}")
        if todo:
            self._procs = self._spawn(plan, self.config.run_dir / "config.resolved.yaml", parent)
            if self._watch(queue, self._procs, before):
                return EXIT_TERMINATED if self.terminated else EXIT_INTERRUPTED
        statuses = queue.status()
        if all(st.state in ("done", "failed") for st in statuses.values()):
            self._record_counts(parent, statuses)
            with contextlib.suppress(Exception):  # another agent may be ending it at the same moment
                if self.store.get_run(parent).info.status == "RUNNING":
                    self.store.finish_run(parent, "FINISHED")
        return EXIT_OK

    def stop_after_outage(self, exc: Exception) -> None:
        """The queue's storage stayed away past its retry budget: stop the workers (their cells are lost and run
        again next time) and end the parent run, so it does not look alive (if the tracking store answers)."""
        _stop(self._procs, grace_s=5.0)
        if self._parent is not None:
            with contextlib.suppress(Exception):
                self.store.finish_run(self._parent, "FAILED", f"queue storage unavailable: {exc}")

    def _close_orphans(self, queue: CellQueue, parent: str) -> None:
        """Child runs still RUNNING whose worker is gone: FINISHED if their trial committed, else KILLED."""
        finished, _ = settle_orphans(self.store, self.config.tracking.experiment, parent, queue.outcomes())
        if finished:
            self.console.print(f"{finished} committed run{'s' * (finished > 1)} marked FINISHED (worker gone)")

    def _report_grid_change(self, queue: CellQueue) -> None:
        """Items the queue holds that the grid no longer has (it shrank): their waiting trials are pruned as stale,
        their results stay in MLflow but not in this sweep's counts; a grid that grew just runs the new cells."""
        gone = queue.prune_stale()
        if gone:
            shown = ", ".join(gone[:6]) + (f" and {len(gone) - 6} more" if len(gone) > 6 else "")
            self.console.print(
                f"[yellow]note[/]: the grid changed: {len(gone)} cell(s) of this sweep's queue are no longer in it "
                f"({shown}); they are skipped and left out of this sweep's summary"
            )

    def _check_recipe(self, queue: CellQueue) -> None:
        recipe = self.config.recipe()
        old = queue.recorded_recipe(recipe)
        if old is None:
            return
        changes = recipe_changes(old, recipe)
        if changes:
            raise ConfigError(
                self.source,
                [
                    f"sweep {self.config.name!r} already has results from another recipe ({'; '.join(changes)}): "
                    f"they would not be comparable. Give this sweep a new name (--set name={self.config.name}-2) "
                    f"or start it over: {self._start_over()} (its MLflow runs are kept, tagged superseded)"
                ],
            )

    def _start_over(self) -> str:
        if is_rdb(self.storage_url):
            return f"optuna delete-study --study-name {self.config.name} --storage <the --storage URL>"
        return f"delete {self.config.run_dir}"

    def _write_resolved(self) -> Path:
        """The config the workers read, URIs without passwords: `_spawn_one` passes the real ones in the
        environment."""
        data = self.config.resolved()
        data["tracking"]["uri"] = redact_uri(self.uri)
        data["sweep"]["storage"] = redact_uri(self.storage_url)
        path = self.config.run_dir / "config.resolved.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, yaml.safe_dump(data, sort_keys=False))
        return path

    def _spawn(self, plan: WorkerPlan, resolved: Path, parent: str) -> list[subprocess.Popen]:
        self._launch = (plan, resolved, parent)
        return [self._spawn_one(i) for i in range(plan.workers)]

    def _spawn_one(self, i: int) -> subprocess.Popen:
        plan, resolved, parent = self._launch
        # Not SLURM's job variables: Lightning would take a worker for a SLURM task (ranks from SLURM_PROCID, an
        # `scontrol requeue` of the whole job on SIGUSR1); the agent has already sized itself by them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(PYTHONUNBUFFERED="1", **{STORAGE_ENV: self.storage_url, TRACKING_ENV: self.uri})
        if plan.threads:
            env.update(OMP_NUM_THREADS=str(plan.threads), MKL_NUM_THREADS=str(plan.threads))
        if plan.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus_of_worker(plan, i))
        cmd = [sys.executable, "-m", "reslab.sweep.worker", str(resolved), "--index", str(i), "--parent-run-id", parent]
        if plan.threads:
            cmd += ["--threads", str(plan.threads)]
        with open(self.config.run_dir / f"{self.log_prefix}worker-{i}.log", "a") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            log.flush()
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def _watch(
        self, queue: CellQueue, procs: list[subprocess.Popen], before: dict[Item, ItemStatus],
        alive: Callable[[], bool] | None = None,
    ) -> bool:  # fmt: skip
        """Progress from the queue until every worker has exited (or, with `alive`, until it says the agents
        elsewhere are gone); True if interrupted. A worker that dies (a signal, the OOM killer) while work remains is
        started again, at most MAX_RESPAWNS times per slot. SIGTERM to this process is passed on to the workers,
        which give their cells back to the queue at once."""
        reported = {i for i, s in before.items() if s.state == "done"}
        respawns = [0] * len(procs)
        killed: dict[int, str] = {}  # worker pid -> why it died, for the cells it held
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task("cells", total=len(self.items), completed=len(reported))
            try:
                while True:
                    statuses = queue.status()
                    for item, st in statuses.items():
                        if item in reported or st.state not in ("done", "failed"):
                            continue
                        if st.state == "failed" and st.reason == "interrupted":
                            continue
                        reported.add(item)
                        progress.console.print(self._result_line(item, st))
                        progress.update(task, completed=len(reported))
                    pending = any(st.state in ("waiting", "running", "missing") for st in statuses.values())
                    for i, proc in enumerate(procs):
                        code = proc.poll()
                        if code in (None, 0, EXIT_INTERRUPTED):
                            continue
                        if proc.pid not in killed:
                            killed[proc.pid] = f"worker {describe_exit(code)}"
                            queue.worker_exited(proc.pid, killed)  # its cells are lost now, with this reason
                        if pending and respawns[i] < MAX_RESPAWNS:
                            respawns[i] += 1
                            why = describe_exit(code)
                            progress.console.print(f"[yellow]worker {i} died ({why}); starting it again")
                            procs[i] = self._spawn_one(i)
                    if alive is not None:
                        if not pending or not alive():
                            return False
                        time.sleep(2.0)  # each look at the job is a request to the SLURM controller
                        continue
                    if all(p.poll() is not None for p in procs):
                        return False
                    time.sleep(0.5)
            except Terminated:
                self.terminated = True
                progress.console.print("[yellow]terminated: the workers give their cells back to the queue")
                _stop(procs, signal.SIGTERM)
                return True
            except KeyboardInterrupt:
                if procs:
                    progress.console.print("[yellow]interrupted: stopping the workers (their runs are marked to "
                                           "resume)")  # fmt: skip
                    _stop(procs)
                return True

    def _result_line(self, item: Item, st: ItemStatus) -> str:
        attrs = st.attrs
        if st.state == "failed":
            return f"[red]✗[/] {self.label(item):<24} failed: {st.reason}"
        if Tag.DIVERGED in attrs:
            return f"[yellow]~[/] {self.label(item):<24} diverged: {attrs[Tag.DIVERGED]}"
        parts = [f"train {100 * attrs.get('train_error', float('nan')):6.2f} %",
                 f"test {100 * attrs.get('test_error', float('nan')):6.2f} %"]  # fmt: skip
        if "train_bpc" in attrs:  # a language model: its loss in bits per character says more than its error
            parts = [f"train {attrs['train_bpc']:.3f} bits", f"test {attrs.get('test_bpc', float('nan')):.3f} bits"]
        if st.pruned is not None:
            parts = [f"pruned ({st.pruned})"]
        return f"[green]✓[/] {self.label(item):<24} " + "  ".join(parts) + f"  {attrs.get('wall_s', 0):6.1f} s"

    def _record_counts(self, parent: str, statuses: dict[Item, ItemStatus]) -> None:
        done = sum(1 for st in statuses.values() if st.state == "done")
        failed = sum(1 for st in statuses.values() if st.state == "failed")
        self.store.log_metrics(parent, [("cells_done", done, 0), ("cells_failed", failed, 0)])
        self.store.set_tags(parent, {Tag.CELLS_DONE: done, Tag.CELLS_FAILED: failed})

    def _finish(self, queue: CellQueue, parent: str, interrupted: bool, logs: str = "worker-*.log") -> int:
        statuses = queue.status()
        counts: dict[str, int] = defaultdict(int)
        for st in statuses.values():
            counts[st.state] += 1
        done, failed = counts["done"], counts["failed"]
        left = len(self.items) - done - failed
        if done:
            self.console.print(summary_table(self.config, self.cells, statuses))
        self._record_counts(parent, statuses)
        resume = self.resume
        if interrupted:
            self._close_orphans(queue, parent)
            self.store.finish_run(parent, "KILLED", "interrupted")
            self.console.print(f"Interrupted with {done} of {len(self.items)} runs done. Resume with: {resume}")
            return EXIT_INTERRUPTED
        if left:
            self.store.finish_run(parent, "FAILED", f"{left} runs were not run: workers exited early")
            self.console.print(
                f"[red]{left} runs were not run[/]: the workers exited early; see {self.config.run_dir}/{logs}, "
                f"then resume with: {resume}"
            )
            return EXIT_INCOMPLETE
        self.store.finish_run(parent, "FINISHED")
        if failed:
            self.console.print(f"[red]{failed} of {len(self.items)} runs failed[/]; `{resume}` retries them:")
            for item, st in statuses.items():
                if st.state == "failed":
                    self.console.print(f"  {self.label(item)}: {st.reason}", soft_wrap=True)
            self.console.print(f"Next:\n{self._next_steps()}")
            return EXIT_INCOMPLETE
        self.console.print(f"All {len(self.items)} runs have results. Next:\n{self._next_steps()}")
        return EXIT_OK

    def _next_steps(self) -> str:
        """Where to look: the MLflow UI on this store, and the report command that reads the same store."""
        name = self.config.name
        report = f"reslab report {name}"
        shown = redact_uri(self.uri)
        if password_of(self.uri):  # the commands find it where this one did, never printed
            report += f"    (with {TRACKING_ENV} set)"
        elif self.uri != tracking.resolve_uri(None):  # not the store `reslab report` finds by itself
            report += f" --tracking-uri {self.uri}"
        if os.environ.get(PASSWORD_ENV) and self.uri.startswith(("http://", "https://")):
            report += f"    (with {USERNAME_ENV} and {PASSWORD_ENV} set)"
        if self.uri.startswith(("http://", "https://")):
            ui = f"open {shown} in a browser    (the MLflow server's UI)"
        elif password_of(self.uri):
            ui = f"{TRACKING_ENV}=... reslab ui    (the store {shown})"
        else:
            ui = f"mlflow ui --backend-store-uri {self.uri}    (or: nox -s ui)"
        return f"  {ui}\n  {report}    -> reports/{name}/index.html"


def make_console() -> Console:
    """Rich on a terminal; plain lines, 120 columns wide, when piped to a file or CI log."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=120)
    return console


def summary_table(config: SweepConfig, cells: dict[str, Cell], statuses: dict[Item, ItemStatus]) -> Table:
    """Block or remedy (x width, shortcut, norm, the other spec fields, lr when they vary, an arm's settings) by
    depth: final train / test error, or a language model's loss in bits per character, mean over seeds (the best
    trial per cell when tuned)."""
    best: dict[str, dict[str, Any]] = {}
    for (key, _), st in statuses.items():
        if st.state != "done" or st.value is None:
            continue
        if key not in best or st.value < best[key]["value"]:
            best[key] = {"value": st.value, **st.attrs}
    bits = any("train_bpc" in attrs for attrs in best.values())
    train_key, test_key, scale = ("train_bpc", "test_bpc", 1.0) if bits else ("train_error", "test_error", 100.0)
    rows: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for key, attrs in best.items():
        cell = cells[key]
        label = (cell.remedy or cell.block) + (f" w{cell.width}" if len(config.grid.widths) > 1 else "")
        label += f" {cell.shortcut}" if len(config.grid.shortcuts) > 1 and cell.block != "plain" else ""
        label += f" norm {cell.norm}" if "norm" in cell.varies else ""
        label += "".join(f" {name} {value}" for name, value in spec_extras(cell.net, cell.varies, label=True))
        label += f" lr {cell.lr:g}" if cell.lr is not None else ""
        label += "".join(f" {name} {value}" for name, value in cell.train)
        rows[label][cell.depth].append((attrs.get(train_key, float("nan")), attrs.get(test_key, float("nan"))))
    depths = sorted({c.depth for c in cells.values()})
    tuned = ", best trial per cell" if config.tune is not None else ""
    what = "loss (bits per character)" if bits else "error (%)"
    table = Table(title=f"{config.name}: final train / test {what}, mean over seeds{tuned}")
    table.add_column("block")
    for d in depths:
        table.add_column(f"depth {d}", justify="right")
    for label in sorted(rows):
        values = []
        for d in depths:
            pairs = rows[label].get(d)
            if not pairs:
                values.append("-")
                continue
            train = sum(p[0] for p in pairs) / len(pairs)
            test = sum(p[1] for p in pairs) / len(pairs)
            values.append(f"{scale * train:.{2 if bits else 1}f} / {scale * test:.{2 if bits else 1}f}")
        table.add_row(label, *values)
    return table


def _stop(procs: list[subprocess.Popen], signum: int = signal.SIGINT, grace_s: float = 30.0) -> None:
    """Let workers that got the terminal's Ctrl-C finish marking their cells; interrupt those that did not (with
    `signum`: SIGTERM gives their cells back at once); kill whatever is left after `grace_s`."""
    deadline = time.time() + (2.0 if signum == signal.SIGINT else 0.0)
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(p.poll() is None for p in procs):
        try:
            time.sleep(0.2)
        except KeyboardInterrupt:
            break
    for p in procs:
        if p.poll() is None:
            p.kill()


def _absolute_storage(url: str) -> str:
    return url if is_rdb(url) else str(Path(url).resolve())


def run_sweep(
    config: SweepConfig, *, dry_run: bool = False, console: Console | None = None, source: str = "",
    env_hint: str = "", agents: int | None = None, detach: bool = False,
) -> int:
    """Run (or with dry_run, list) a sweep whose requests this machine can run (`reslab sweep` checks them first,
    `reslab.sweep.checks`), with its launcher: this machine's workers, or `agents` SLURM agents (`detach`: return
    once submitted). Bad storage or tracking: one clear error, exit code 2, nothing run."""
    slurm = config.sweep.launcher == "slurm"
    agents = agents or config.sweep.slurm.agents
    if slurm and dry_run:  # the script only: neither the queue nor MLflow is contacted, sbatch is not needed
        from reslab.sweep.slurm import script

        (console or make_console()).print(script(config, agents, config.run_dir / "config.resolved.yaml"),
                                          markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        return EXIT_OK
    coordinator = Coordinator(config, console, source, env_hint)
    previous = signal.signal(signal.SIGTERM, raise_terminated) if not dry_run else None
    try:
        if dry_run:
            return coordinator.dry_run()
        return coordinator.run_slurm(agents, detach) if slurm else coordinator.run()
    except Terminated as exc:  # before any worker started, or while the parent run was being ended
        coordinator.console.print(f"reslab sweep: {exc}; `{coordinator.resume}` goes on from here", style="red")
        return EXIT_TERMINATED
    except (QueueError, tracking.TrackingError) as exc:
        coordinator.console.print(f"reslab sweep: error: {exc}", style="red", soft_wrap=True)
        return EXIT_USAGE
    except StorageUnavailable as exc:
        coordinator.stop_after_outage(exc)
        coordinator.console.print(
            f"reslab sweep: stopped: {exc}. The cells in flight run again when you rerun: {coordinator.resume}",
            style="red", soft_wrap=True,
        )  # fmt: skip
        return EXIT_INCOMPLETE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
