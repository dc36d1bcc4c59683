"""What the sweep's queue costs per cell and in database connections, on a journal file and on PostgreSQL.

    python benchmarks/queue_overhead.py                                   # the journal only
    python benchmarks/queue_overhead.py --postgres postgresql://u@host/db  # ... and PostgreSQL (a scratch database)

1. Per cell: what a worker does to the queue around one training, timed for `--cells` cells one after the other:
   claim (the WAITING -> RUNNING write, its checks, the lease's host/pid/heartbeat), naming the MLflow run, one
   heartbeat, and the fenced commit. Median and 90th percentile in milliseconds.
2. Connections (PostgreSQL only): a real `reslab sweep` of tiny cells with 1 and then 2 workers on the queue (the
   tracking store is SQLite, so every connection counted is the queue's), sampling pg_stat_activity every 0.1 s;
   the most seen at once, and per worker (the difference). What PostgreSQL's `max_connections` (or a pgbouncer
   pool) must hold for N agents is agents x (agent + workers x per worker).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

CONFIG = {
    "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 256, "test_size": 64}},
    "grid": {"family": "resnet", "blocks": ["plain", "residual"], "depths": [8, 14], "widths": [4], "seeds": [0, 1]},
    "train": {"epochs": 3, "batch_size": 64, "threads": 1},
    "tracking": {"system_metrics": False},
}


def per_cell(storage: str, cells: int) -> list[float]:
    """Milliseconds of queue work per cell (claim, run id, one beat, commit), `cells` cells in a fresh sweep."""
    from reslab.sweep.config import load_config
    from reslab.sweep.queue import CellQueue

    config = load_config({"name": f"overhead{os.getpid()}{int(time.time())}", **CONFIG,
                          "grid": {**CONFIG["grid"], "seeds": list(range(cells // 4))},
                          "sweep": {"storage": storage}})  # fmt: skip
    CellQueue(config).settle(retry_failed=True)
    worker = CellQueue(config, create=False)
    times = []
    while True:
        t0 = time.perf_counter()
        lease = worker.claim()
        if lease is None:
            break
        lease.record_run("run")
        lease.renew()
        lease.commit(0.5, {"train_error": 0.5, "wall_s": 1.0})
        times.append(1000 * (time.perf_counter() - t0))
    return times


def connections(storage: str, workers: int) -> int:
    """The most connections to the queue's database seen at once during a real sweep with `workers` workers."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(storage)
    admin = url.set(database="postgres").render_as_string(hide_password=False).replace("+psycopg", "")
    most, stop = 0, threading.Event()

    def sample() -> None:
        nonlocal most
        with psycopg.connect(admin, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("select count(*) from pg_stat_activity where datname = %s", (url.database,))
                most = max(most, int(row.fetchone()[0]))
                time.sleep(0.1)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.yaml"
        cfg.write_text(yaml.safe_dump({"name": f"conn{workers}x{int(time.time())}", **CONFIG}))
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        cmd = [sys.executable, "-m", "reslab.cli", "sweep", str(cfg), "--storage", storage, "--workers", str(workers)]
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        stop.set()
        thread.join()
        if proc.returncode != 0:
            sys.exit(f"the sweep failed:\n{proc.stdout[-2000:]}")
    return most


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres", help="a scratch PostgreSQL database URL (its tables are Optuna's)")
    p.add_argument("--cells", type=int, default=40)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("journal", str(Path(tmp) / "q.journal"))] + ([("postgresql", args.postgres)] if args.postgres
                                                                     else [])  # fmt: skip
        for name, storage in backends:
            times = per_cell(storage, args.cells)
            p90 = statistics.quantiles(times, n=10)[-1]
            print(f"{name}: queue work per cell (claim + run id + beat + commit), {len(times)} cells: median "
                  f"{statistics.median(times):.1f} ms, p90 {p90:.1f} ms")  # fmt: skip
    if args.postgres:
        one, two = connections(args.postgres, 1), connections(args.postgres, 2)
        print(f"postgresql: connections at once, 1 worker {one}, 2 workers {two}: {two - one} per worker, "
              f"{one - (two - one)} for the coordinator (agent)")  # fmt: skip


if __name__ == "__main__":
    main()
