"""The CLI answers at once: `--help`, argument errors and config errors import none of torch, Lightning, MLflow
(importing torch alone takes seconds on a small machine), and `reslab summary` imports torch but neither Lightning
nor MLflow. Checked through `sys.modules` in a fresh interpreter, as a user's shell starts it. The timings are
measured by `python benchmarks/cli_latency.py`, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "mlflow", "optuna", "pandas", "matplotlib", "sklearn")

PROBE = """
import contextlib, io, json, sys
from reslab.cli import main
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "err": err.getvalue(), "loaded": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def probe(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--help"], 0, ""),
        (["sweep", "--help"], 0, ""),
        (["train", "--depth", "57"], 2, "depth 57 is not valid"),
        (["train", "--block", "banana"], 2, "invalid choice: 'banana'"),
        (["train", "--devices", "banana"], 2, "devices 'banana' is not one Lightning accepts"),
        (["train", "--width", "100000"], 2, "needs about"),
        (["train", "--family", "transformer", "--data-option", "path=no-such.txt"], 2, "path=no-such.txt: no such"),
        (["sweep", "configs/default.yaml", "--set", "grid.depths=[57]"], 2, "depth 57 is not valid"),
        (["sweep", "configs/default.yaml", "--set", "sweep.heartbeat_s=0.001"], 2, "greater than or equal to 1"),
        (["sweep", "configs/default.yaml", "--set", "grid.widths=[100000]", "--dry-run"], 2, "needs about"),
        (["sweep", "configs/default.yaml", "--workers", "500"], 2, "more than 4 per core"),
        (["sweep", "configs/no-such.yaml"], 2, "no such config file"),
        (["report", "it's"], 2, "is not a sweep name"),
        (["report", "s", "--out", "pyproject.toml"], 2, "is a file, not a folder"),
        (["sweep", "configs/default.yaml", "--set", "sweep.runs_dir=pyproject.toml"], 2, "is a file, not a folder"),
        (["sweep", "configs/default.yaml", "--set", f"grid.seeds={list(range(10_000))}"], 2, "80,000 cells"),
    ],
)
def test_help_and_every_error_import_nothing_heavy(argv: list[str], code: int, message: str) -> None:
    result = probe(*argv)
    assert result["code"] == code, result
    assert message in result["err"], result["err"]
    assert result["loaded"] == [], f"{' '.join(argv)} imported {result['loaded']}"


def test_summary_needs_torch_but_not_lightning_or_mlflow() -> None:
    result = probe("summary", "--family", "resnet", "--depth", "20")
    assert result["code"] == 0
    assert "torch" in result["loaded"] and not {"lightning", "mlflow", "optuna"} & set(result["loaded"])
