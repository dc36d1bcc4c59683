"""What a sweep records about its cells' MLflow runs, beside the queue: the result attributes a trial carries, the
run of a lost item marked FAILED, runs whose worker vanished settled by the coordinator.

The queue's COMPLETE transition is the commit point of a cell; MLflow follows it. So a run may be left RUNNING in
two ways, and the coordinator settles both whenever it reconciles: its trial is COMPLETE (the worker was killed
between the commit and marking the run FINISHED; every artifact was written before the commit) -> FINISHED; its
trial is not RUNNING any more (lost, failed, interrupted) -> KILLED.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from reslab.sweep.parent import running_children
from reslab.tags import Metric, Tag
from reslab.tracking import Store


def result_attrs(
    metrics: dict[str, float], params: int, macs: int, wall_s: float, epochs: int, diverged: str | None = None
) -> dict[str, Any]:
    """The attributes a completed trial carries: final metrics, size, wall time (and why it diverged, if it did)."""
    attrs: dict[str, Any] = {k: metrics[k] for k in Metric.RESULTS if k in metrics}
    attrs.update(params=params, macs=macs, wall_s=wall_s, epochs=epochs)
    if diverged:
        attrs[Tag.DIVERGED] = diverged
    return attrs


def mark_lost_run(store: Store) -> Callable[[str | None, str], None]:
    """What to do with the MLflow run of a lost item (if it had started one): FAILED, with why (so it never looks
    finished)."""

    def on_lost(run_id: str | None, why: str) -> None:
        if not run_id:
            return
        try:
            if store.get_run(run_id).info.status == "RUNNING":
                store.finish_run(run_id, "FAILED", f"worker lost: {why}")
        except Exception as exc:  # the store may be briefly unavailable; the report lists the cell as failed anyway
            print(f"could not mark MLflow run {run_id} failed: {exc}", file=sys.stderr)

    return on_lost


def settle_orphans(
    store: Store, experiment: str, parent: str, outcomes: dict[int, tuple[str, str | None]]
) -> tuple[int, int]:
    """Child runs still RUNNING whose worker is gone: FINISHED when their trial committed, KILLED when it is no
    longer RUNNING. `outcomes`: per trial number, its state and run id (`CellQueue.outcomes`). Returns (finished,
    killed)."""
    finished = killed = 0
    for run in running_children(store, experiment, parent):
        state, run_id = outcomes.get(int(run.data.tags.get(Tag.TRIAL, -1)), ("ended", None))
        if state == "running":
            continue
        if state == "done" and run_id == run.info.run_id:
            store.finish_run(run.info.run_id, "FINISHED")
            finished += 1
        else:
            store.finish_run(run.info.run_id, "KILLED", "stopped before its worker recorded it")
            killed += 1
    return finished, killed
