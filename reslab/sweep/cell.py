"""One multi-device cell in a process of its own: `train.devices > 1` (DDP) inside a sweep.

Lightning's DDP launcher starts the other ranks by running this process's command again, so that command must
train exactly this cell, not loop over the queue as a worker does: the worker runs this module for such cells and
reads back the result file that rank 0 writes. Ranks other than 0 train and record nothing. Rank 0 commits the
cell's result to the queue itself, fenced as a worker does (a refused commit ends the run KILLED, superseded), and
every rank dies with the process that started it, so a killed worker leaves no cell training on behind it.

    python -m reslab.sweep.cell runs/<sweep>/config.resolved.yaml --trial-id 7 --result out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from reslab import tracking
from reslab.atomic import write_atomic
from reslab.redact import guard_streams, redact
from reslab.sweep.config import load_config
from reslab.sweep.lifeline import die_with_parent
from reslab.sweep.queue import CellQueue


def main(argv: list[str] | None = None) -> int:
    expected = os.environ.get("RESLAB_PARENT_PID")
    die_with_parent(int(expected) if expected else None)
    os.environ["RESLAB_PARENT_PID"] = str(os.getpid())  # the DDP ranks this process starts watch it in turn

    from reslab.sweep.worker import fenced_callbacks, item_tags
    from reslab.train.run import Superseded, is_rank_zero, run_one

    p = argparse.ArgumentParser(prog="python -m reslab.sweep.cell", description=__doc__)
    p.add_argument("config")
    p.add_argument("--trial-id", type=int, required=True, help="the queue's handle of the worker's lease")
    p.add_argument("--parent-run-id")
    p.add_argument("--threads", type=int)
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)
    config = load_config(args.config).from_environment()
    guard_streams(config.storage_url, config.tracking.uri)
    lease = CellQueue(config, create=False).reattach(args.trial_id)
    cell = lease.cell
    train = cell.recipe(config.train.model_copy(update={"threads": args.threads}) if args.threads else config.train)
    uri = tracking.resolve_uri(config.tracking.uri)
    on_start, on_commit = fenced_callbacks(lease, "train_error")
    try:
        result = run_one(
            cell.spec(), config.dataset, train, config.tracking.model_copy(update={"uri": uri}),
            run_name=cell.name, parent_run_id=args.parent_run_id,
            extra_tags=item_tags(config, lease),
            on_start=on_start, commit=on_commit,
        )  # fmt: skip
    except Superseded as lost:
        if is_rank_zero():
            write_atomic(args.result, json.dumps({"superseded": str(lost)}))
        return 0
    except Exception as exc:
        if is_rank_zero():
            write_atomic(args.result, json.dumps({"error": redact(f"{type(exc).__name__}: {exc}")}))
        return 1
    if is_rank_zero():
        outcome = {"metrics": result.metrics, "params": result.params, "macs": result.macs, "wall_s": result.wall_s,
                   "epochs": len(result.history)}  # fmt: skip
        write_atomic(args.result, json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
