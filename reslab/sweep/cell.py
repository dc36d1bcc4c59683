"""One multi-device cell in a process of its own: `train.devices > 1` (DDP) inside a sweep.

Lightning's DDP launcher starts the other ranks by running this process's command again, so that command must
train exactly this cell, not loop over the queue as a worker does: the worker runs this module for such cells and
reads back the result file that rank 0 writes. Ranks other than 0 train and record nothing.

    python -m reslab.sweep.cell runs/<sweep>/config.resolved.yaml --cell KEY --slot 0 --trial-id 7 --result out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reslab import tracking
from reslab.sweep.config import load_config
from reslab.sweep.queue import RUN_ID, open_storage


def main(argv: list[str] | None = None) -> int:
    from reslab.sweep.worker import item_tags, items_of
    from reslab.train.run import is_rank_zero, run_one

    p = argparse.ArgumentParser(prog="python -m reslab.sweep.cell", description=__doc__)
    p.add_argument("config")
    p.add_argument("--cell", required=True)
    p.add_argument("--slot", type=int, default=0)
    p.add_argument("--trial-id", type=int, required=True)
    p.add_argument("--trial-number", type=int, required=True)
    p.add_argument("--parent-run-id")
    p.add_argument("--threads", type=int)
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)
    config = load_config(args.config)
    cells, _ = items_of(config)
    cell = cells[args.cell]
    train = config.train.model_copy(update={"seed": cell.seed, **({"threads": args.threads} if args.threads else {})})
    uri = tracking.resolve_uri(config.tracking.uri)
    storage = open_storage(config.storage_url, config.sweep.heartbeat_s, config.sweep.grace_s)
    try:
        result = run_one(
            cell.spec(), config.dataset, train, config.tracking.model_copy(update={"uri": uri}),
            run_name=cell.name, parent_run_id=args.parent_run_id,
            extra_tags=item_tags(config, args.cell, args.slot, args.trial_number),
            on_start=lambda run_id: storage.set_trial_user_attr(args.trial_id, RUN_ID, run_id) if run_id else None,
        )  # fmt: skip
    except Exception as exc:
        if is_rank_zero():
            Path(args.result).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    if is_rank_zero():
        outcome = {"metrics": result.metrics, "params": result.params, "macs": result.macs, "wall_s": result.wall_s,
                   "epochs": len(result.history)}  # fmt: skip
        Path(args.result).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
