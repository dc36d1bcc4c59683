"""`reslab status NAME`: where a sweep stands, from its queue and its MLflow runs, on any machine that can reach
them; nothing is changed. What a user of a cluster sweep (`reslab sweep --launcher slurm --detach`) checks instead
of logging into the nodes: cells done, running (on which host and process, for how long), waiting and failed (with
why), and the parent and child runs in MLflow."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reslab import tracking
from reslab.redact import redact, redact_uri
from reslab.sweep.queue import (
    PARENT_RUN,
    QueueError,
    SweepQueue,
    group_by_item,
    is_rdb,
    open_storage,
    status,
    study_exists,
)


@dataclass
class SweepStatus:
    name: str
    queue: str
    counts: dict[str, int]
    running: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    tracking: str = ""
    experiment: str | None = None
    parent_run: str | None = None
    parent_status: str | None = None
    runs: dict[str, int] = field(default_factory=dict)

    @property
    def cells(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"sweep {self.name}: {c.get('done', 0)} of {self.cells} cells done, {c.get('running', 0)} running, "
               f"{c.get('waiting', 0)} waiting, {c.get('failed', 0)} failed",
               f"  queue  {self.queue}"]  # fmt: skip
        if self.parent_run is None:
            out.append(f"  mlflow {self.tracking}: no parent run recorded yet")
        else:
            runs = ", ".join(f"{n} {s}" for s, n in sorted(self.runs.items())) or "none yet"
            out.append(f"  mlflow {self.tracking} (experiment {self.experiment}): parent run {self.parent_run} "
                       f"{self.parent_status}; child runs: {runs}")  # fmt: skip
        out += [f"  running {r['cell']} on {r['holder']}, {r['for_s']:.0f} s" for r in self.running]
        out += [f"  failed  {f['cell']}: {f['reason']}" for f in self.failed]
        return out

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cells": self.cells}


def sweep_status(name: str, storage: str, tracking_uri: str) -> SweepStatus:
    """`name`'s status from the queue at `storage` and the MLflow store at `tracking_uri`."""
    if not is_rdb(storage) and not Path(storage).exists():
        raise QueueError(f"no sweep queue at {storage}: pass the sweep's --storage (or set $RESLAB_STORAGE), or run "
                         f"this where the sweep was started")  # fmt: skip
    backend = open_storage(storage, create=False)
    if not study_exists(backend, name):
        raise QueueError(f"no sweep named {name!r} in the queue at {redact_uri(storage)}: check the name (the "
                         f"config's `name`) and --storage")  # fmt: skip
    queue = SweepQueue(backend, name, create=False)
    grouped = group_by_item(queue.trials())
    statuses = status(list(grouped), grouped)
    now = time.time()
    running = [{"cell": key, "holder": st.holder, "for_s": max(0.0, now - (st.started or now))}
               for (key, _), st in sorted(statuses.items()) if st.state == "running"]  # fmt: skip
    failed = [{"cell": key, "reason": redact(st.reason)} for (key, _), st in sorted(statuses.items())
              if st.state == "failed"]  # fmt: skip
    result = SweepStatus(name, redact_uri(storage), dict(Counter(st.state for st in statuses.values())), running,
                         failed, redact_uri(tracking_uri))  # fmt: skip
    result.parent_run = queue.study.user_attrs.get(PARENT_RUN)
    if result.parent_run is not None:
        from reslab.sweep.parent import find_sweep, sweep_runs

        store = tracking.store(tracking_uri)
        result.experiment, parent = find_sweep(store, name)
        if parent is not None:
            parent, children = sweep_runs(store, result.experiment, name)
            result.parent_status = parent.info.status
            result.parent_run = parent.info.run_id
            result.runs = dict(Counter(r.info.status for r in children))
    return result
