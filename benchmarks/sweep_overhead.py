"""The default sweep vs the same trainings in a plain PyTorch loop, in one run, and the ratio between them.

    python benchmarks/sweep_overhead.py                 # configs/default.yaml, all 16 cells
    python benchmarks/sweep_overhead.py --check         # ... and exit 1 unless the targets below hold
    python benchmarks/sweep_overhead.py --set grid.depths=[8,20]

The floor is one process, all CPU threads, no Lightning, no MLflow, no Optuna: for each cell, build the net, then
per epoch a shuffled pass with SGD + warm-up/cosine per iteration and an evaluation of the test set (what the sweep
records). The sweep is `reslab sweep` as a user runs it, from a fresh store: start-up, orchestration, Lightning,
MLflow logging and telemetry included. Targets: sweep / floor <= 1.25, the sweep under 6 minutes, and
in its MLflow runs (mean over seeds) plain-56 minus plain-20 train_error >= 0.20 and residual-56 <= residual-20 +
0.01. `--check` tests all four and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def plain_floor(config) -> tuple[float, list[dict]]:
    from reslab.data.registry import load_dataset
    from reslab.data.tensors import DeviceBatches
    from reslab.models import build_net
    from reslab.sweep.grid import expand
    from reslab.train.schedule import lr_lambda

    splits = load_dataset(config.dataset.name, config.dataset.options)
    cfg = config.train
    results = []
    t0 = time.perf_counter()
    for cell in expand(config.grid):
        torch.manual_seed(cell.seed)
        net = build_net(cell.spec(), splits.input_shape, splits.num_classes)
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        batches = DeviceBatches(splits.train, cfg.batch_size, shuffle=True, seed=cell.seed)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, len(batches)))
        for _ in range(cfg.epochs):
            net.train()
            wrong = n = 0
            for x, y in batches:
                logits = net(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                wrong += int((logits.argmax(1) != y).sum())
                n += len(y)
            net.eval()
            with torch.no_grad():
                test_wrong = int((net(splits.test.x).argmax(1) != splits.test.y).sum())
        results.append({"cell": cell.name, "train_error": wrong / n, "test_error": test_wrong / len(splits.test)})
    return time.perf_counter() - t0, results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--set", action="append", default=[], help="config override, as for reslab sweep")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 unless every target holds (see the module docstring)")
    args = p.parse_args()

    from reslab.sweep.config import load_config

    config = load_config(args.config, args.set)
    floor_s, floor_results = plain_floor(config)
    print(f"plain PyTorch loop, one process, {torch.get_num_threads()} threads: {floor_s:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "reslab.cli", "sweep", str(Path(args.config).resolve())]
        cmd += [f"--set={s}" for s in args.set]
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        sweep_s = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"the sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        errors = final_train_errors(f"sqlite:///{Path(tmp) / 'mlflow.db'}", config.name)
    ratio = sweep_s / floor_s
    print(f"reslab sweep (fresh store, all included):     {sweep_s:.1f} s")
    print(f"ratio sweep / floor: {ratio:.2f}  (target <= 1.25; sweep target <= 360 s)")
    checks = {
        "sweep <= 360 s": sweep_s <= 360,
        "sweep / floor <= 1.25": ratio <= 1.25,
    }
    if {("plain", 20), ("plain", 56), ("residual", 20), ("residual", 56)} <= set(errors):
        gap = errors["plain", 56] - errors["plain", 20]
        print(f"MLflow, mean over seeds: plain-56 - plain-20 train_error = {gap:+.4f} (target >= 0.20); "
              f"residual-56 {errors['residual', 56]:.4f} vs residual-20 {errors['residual', 20]:.4f} (target <= +0.01)")
        checks["plain-56 - plain-20 >= 0.20"] = gap >= 0.20
        checks["residual-56 <= residual-20 + 0.01"] = errors["residual", 56] <= errors["residual", 20] + 0.01
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"floor_s": floor_s, "sweep_s": sweep_s, "ratio": ratio, "floor": floor_results,
             "sweep_train_error": {f"{b}-{d}": e for (b, d), e in errors.items()},
             "checks": checks}, indent=2))  # fmt: skip
    failed = [name for name, ok in checks.items() if not ok]
    print("checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in checks.items()))
    if args.check and failed:
        sys.exit(1)


def final_train_errors(uri: str, sweep: str) -> dict[tuple[str, int], float]:
    """(block, depth) -> final train_error, mean over seeds, read back from the sweep's MLflow runs."""
    from reslab.report import collect

    cells = collect(uri, sweep).cells
    done = cells[cells["status"] == "FINISHED"]
    means = done.groupby(["block", "depth"])["train_error"].mean()
    return {(str(b), int(d)): float(v) for (b, d), v in means.items()}


if __name__ == "__main__":
    main()
