"""How fast the CLI answers when it has nothing to train: `reslab --help`, an argument error and a config error,
each in a fresh interpreter as a user's shell starts it, best of 3. Target: under 0.5 s each on a 2-core machine
(the commands import neither torch, Lightning nor MLflow; `tests/test_cli_imports.py` holds that).

    python benchmarks/cli_latency.py      # exits 1 if any is over the target
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5
COMMANDS = {
    "reslab --help": ["--help"],
    "argument error (train --depth 57)": ["train", "--depth", "57"],
    "config error (sweep --set grid.depths=[57])": ["sweep", "configs/default.yaml", "--set", "grid.depths=[57]"],
    "impossible request (sweep --workers 500)": ["sweep", "configs/default.yaml", "--workers", "500"],
}


def best_of(argv: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "reslab.cli", *argv], cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    worst = 0.0
    for what, argv in COMMANDS.items():
        seconds = best_of(argv)
        worst = max(worst, seconds)
        print(f"{what:<48} {seconds:5.2f} s")
    print(f"target: each under {TARGET_S} s -> {'ok' if worst < TARGET_S else 'TOO SLOW'}")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
