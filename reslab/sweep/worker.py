"""A sweep worker: claim an item, turn it into a spec, call `run_one`, record the result; until the queue is empty.

Started by `reslab sweep` or an agent (one process per worker, on any number of machines), silent but for its log
file. Ctrl-C fails its cell as interrupted (the next `reslab sweep` reruns it); SIGTERM, a scheduler's time limit or
preemption, gives the cell back as lost at once, for any worker to claim (`reslab.interrupts`). The
objective is thin on purpose: everything about MLflow goes through one `reslab.tracking.Store`, everything about
training is in `reslab.train.run`.

    python -m reslab.sweep.worker runs/<sweep>/config.resolved.yaml --index 0 --parent-run-id <id>
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reslab import tracking
from reslab.interrupts import EXIT_TERMINATED, Terminated, raise_terminated
from reslab.redact import guard_streams
from reslab.sweep.config import SweepConfig, load_config
from reslab.sweep.grid import Cell
from reslab.sweep.queue import CellQueue, Lease, QueueError, StorageUnavailable
from reslab.sweep.runs import mark_lost_run, result_attrs
from reslab.sweep.tuner import tuner_for
from reslab.tags import Tag


def item_tags(config: SweepConfig, lease: Lease) -> dict[str, Any]:
    """The tags that place a run in its sweep: the cell, its arm's settings (where it has any), which slot, try."""
    arm = {Tag.ARM: lease.cell.arm} if lease.cell.arm else {}
    return {Tag.SWEEP: config.name, Tag.CELL: lease.key, **arm, Tag.SLOT: lease.slot, Tag.TRIAL: lease.number,
            Tag.ATTEMPT: lease.attempt}  # fmt: skip


def multi_device(config: SweepConfig) -> bool:
    devices = config.train.devices
    return (isinstance(devices, int) and devices > 1) or (isinstance(devices, str) and devices not in ("1", "auto"))


def fenced_callbacks(lease: Lease, metric: str, extra_attrs: Callable[[], dict[str, Any]] | None = None):
    """`on_start` and `commit` for `run_one` on a leased item: record the run id, then commit the result. Either
    raises `Superseded` when the queue says the item is no longer this worker's (it was failed as lost while this
    process was paused or cut off): the run then ends KILLED, tagged superseded, and nothing is recorded twice."""
    from reslab.train.run import Superseded

    lost = "its lease was lost (the cell was given to another worker)"

    def on_start(run_id: str | None) -> None:
        if run_id and not lease.record_run(run_id):
            raise Superseded(lost)

    def on_commit(result) -> None:
        attrs = result_attrs(result.metrics, result.params, result.macs, result.wall_s, len(result.history),
                             result.diverged)  # fmt: skip
        attrs.update(extra_attrs() if extra_attrs is not None else {})
        if not lease.commit(result.metrics[metric], attrs):
            raise Superseded(lost)

    return on_start, on_commit


class Worker:
    def __init__(
        self, config: SweepConfig, parent_run_id: str | None, threads: int | None, config_path: str | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.threads = threads
        self.parent_run_id = parent_run_id
        self.train = config.train if threads is None else config.train.model_copy(update={"threads": threads})
        self.uri = tracking.resolve_uri(config.tracking.uri)
        self.store = tracking.store(self.uri)
        self.queue = CellQueue(config, create=False, on_lost=mark_lost_run(self.store))

    def run(self) -> int:
        heartbeat = self.queue.heartbeat()
        signal.signal(signal.SIGTERM, raise_terminated)
        try:
            while True:
                lease = self.queue.claim()
                if lease is None:
                    if not self._wait_for_work():
                        return 0
                    continue
                heartbeat.hold(lease)
                self.run_item(lease)
                heartbeat.hold(None)
        except KeyboardInterrupt as stop:
            # record why, uninterrupted by a second Ctrl-C or SIGTERM
            previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                if isinstance(stop, Terminated):  # preempted or out of time: another worker takes it at once
                    if self.queue.give_back(f"its worker was {stop} (preempted, out of time or stopped)"):
                        print(f"gave its cell back: {stop}", flush=True)
                    return EXIT_TERMINATED
                self.queue.interrupted()  # the next `reslab sweep` reruns it
                return 130
            finally:
                for s, handler in previous.items():  # ignored signals are inherited by every later child
                    signal.signal(s, handler)
        finally:
            heartbeat.stop()

    def _wait_for_work(self) -> bool:
        """Nothing waiting: retry lost items; wait while others still run (one of them may be lost later)."""
        states = {s.state for s in self.queue.settle(retry_failed=False).values()}
        if "waiting" in states:
            return True
        if "running" in states:
            time.sleep(min(2.0, self.config.sweep.heartbeat_s))
            return True
        return False

    def run_item(self, lease: Lease) -> None:
        from reslab.train.run import StopRun, Superseded, run_one

        cell, run_name = lease.cell, lease.name
        if multi_device(self.config) and self.config_path:
            self.run_item_in_process(lease)
            return
        tuner = tuner_for(self.config, self.queue, cell, lease.slot)
        train = tuner.suggest(cell.recipe(self.train))
        tags = {**item_tags(self.config, lease), **tuner.tags()}
        on_start, on_commit = fenced_callbacks(lease, tuner.metric, tuner.attrs)
        started: list[str | None] = []

        def on_run_start(run_id: str | None) -> None:
            started.append(run_id)
            on_start(run_id)

        t0 = time.perf_counter()
        try:
            result = run_one(
                cell.spec(), self.config.dataset, train, self.config.tracking.model_copy(update={"uri": self.uri}),
                run_name=run_name, parent_run_id=self.parent_run_id, extra_tags=tags, on_start=on_run_start,
                on_epoch=tuner.on_epoch, commit=on_commit,
            )  # fmt: skip
        except KeyboardInterrupt:
            tuner.abandon()
            raise
        except Superseded as lost:
            tuner.abandon()
            print(f"superseded {run_name}: {lost}; its run is KILLED and tagged {Tag.SUPERSEDED}", flush=True)
            return
        except StopRun as stop:  # pruned by the tuner: the item is done, its trial pruned
            lease.commit(tuner.pruned(), tuner.attrs(), pruned=str(stop))
            print(f"pruned {run_name}: {stop}", flush=True)
            return
        except Exception as exc:
            tuner.abandon()
            if not started:  # failed before run_one created an MLflow run (SetupError, a corrupt dataset, ...)
                self._record_setup_failure(cell, run_name, tags, exc)
            lease.fail(f"{type(exc).__name__}: {exc}", {"wall_s": time.perf_counter() - t0})
            print(f"failed {run_name}: {type(exc).__name__}: {exc}", flush=True)
            _free_device_memory()
            return
        tuner.done(result.metrics[tuner.metric])
        outcome = f"train_error {result.metrics['train_error']:.4f}"
        print(f"done {run_name}: {f'diverged, {outcome}' if result.diverged else outcome} in {result.wall_s:.1f} s",
              flush=True)  # fmt: skip

    def _record_setup_failure(self, cell: Cell, run_name: str, tags: dict[str, Any], exc: Exception) -> None:
        """A cell that cannot even start (its device is missing on this machine, ...) still gets its child run in
        MLflow, FAILED with the reason, so the sweep's MLflow view shows every failure the queue knows of."""
        from reslab.train.run import run_tags

        cell_tags = run_tags(cell.spec(), cell.seed, self.config.dataset.name)
        try:
            run_id = self.store.start_run(self.config.tracking.experiment, run_name, {**cell_tags, **tags},
                                          parent_run_id=self.parent_run_id)  # fmt: skip
            self.store.finish_run(run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        except Exception as err:  # the queue still records the failure
            print(f"could not record the failure of {run_name} in MLflow: {err}", file=sys.stderr)

    def run_item_in_process(self, lease: Lease) -> None:
        """A multi-device (DDP) cell: its own process, so Lightning can start the other ranks from its command."""
        import json
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            cmd = [
                sys.executable,
                "-m",
                "reslab.sweep.cell",
                str(self.config_path),
                "--trial-id",
                str(lease.trial_id),
                "--result",
                str(result),
            ]
            if self.parent_run_id:
                cmd += ["--parent-run-id", self.parent_run_id]
            if self.threads:
                cmd += ["--threads", str(self.threads)]
            t0 = time.perf_counter()
            # The cell's process commits the result itself (fenced, as here) and dies with this worker. Ctrl-C
            # reaches it through the process group.
            proc = subprocess.run(cmd, check=False, env=dict(os.environ, RESLAB_PARENT_PID=str(os.getpid())))
            outcome = json.loads(result.read_text()) if result.exists() else {}
        if not outcome and proc.returncode < 0:  # killed by a signal (the OOM killer): lost, retried at once
            why = f"the cell's process was {describe_exit(proc.returncode)}"
            lease.lose(why)
            print(f"lost {lease.key}: {why}", flush=True)
        elif "error" in outcome or not outcome:
            why = outcome.get("error") or f"the cell's process died ({describe_exit(proc.returncode)})"
            lease.fail(why, {"wall_s": time.perf_counter() - t0})
            print(f"failed {lease.key}: {why}", flush=True)
        elif outcome.get("superseded"):
            print(f"superseded {lease.key}: {outcome['superseded']}", flush=True)
        else:
            print(f"done {lease.key} on {self.config.train.devices} devices", flush=True)


def describe_exit(code: int) -> str:
    """'exit 1', or 'killed by SIGKILL (out of memory?)' for a process a signal ended (the OOM killer sends SIGKILL)."""
    if code >= 0:
        return f"exit {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reslab.sweep.worker", description=__doc__)
    p.add_argument("config", help="the resolved sweep config the coordinator wrote")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--parent-run-id")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    config = load_config(args.config).from_environment()
    guard_streams(config.storage_url, config.tracking.uri)
    print(f"worker {args.index} of sweep {config.name} starting", flush=True)
    try:
        return Worker(config, args.parent_run_id, args.threads, args.config).run()
    except (StorageUnavailable, QueueError) as exc:  # its cell is lost and runs again; the coordinator says the rest
        print(f"worker {args.index} stopped: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
