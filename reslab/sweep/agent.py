"""One agent of a sweep: the workers of one allocation, started by a scheduler (`reslab sweep --launcher slurm`
submits one per array task).

`reslab sweep` has prepared the sweep before any agent starts (the queue, its cells, the MLflow parent run); an
agent only works: it sizes its workers by what it was given (`reslab.devices`: CPUs, memory, GPUs), claims cells
until none is left, and ends the parent run FINISHED when the last cell is done, whichever agent ran it. SIGTERM
(a time limit, preemption, `scancel`, `scontrol requeue`) reaches its workers, which give their cells back to the
queue at once; a requeued agent simply claims again.

    python -m reslab.sweep.agent runs/<name>/config.resolved.yaml
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from reslab.interrupts import EXIT_TERMINATED, Terminated, raise_terminated
from reslab.redact import guard_streams


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reslab.sweep.agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("config", help="the resolved sweep config `reslab sweep` wrote (runs/<name>/config.resolved.yaml)")
    p.add_argument("--label", help="names this agent's worker logs (default: the SLURM array task, else the pid)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_terminated)
    from reslab import tracking
    from reslab.sweep.config import load_config
    from reslab.sweep.queue import QueueError, StorageUnavailable
    from reslab.sweep.runner import EXIT_USAGE, Coordinator, make_console

    config = load_config(args.config).from_environment()
    guard_streams(config.storage_url, config.tracking.uri)
    label = args.label or os.environ.get("SLURM_ARRAY_TASK_ID") or str(os.getpid())
    coordinator = Coordinator(config, make_console(), source=config.name)
    try:
        return coordinator.agent(label)
    except Terminated as exc:
        print(f"agent {label}: {exc} before its workers started", flush=True)
        return EXIT_TERMINATED
    except (QueueError, tracking.TrackingError) as exc:
        print(f"agent {label}: error: {exc}", flush=True)
        return EXIT_USAGE
    except StorageUnavailable as exc:  # its workers' cells are lost and run again, on any agent
        print(f"agent {label} stopped: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
