"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def interruptible() -> None:
    """`preexec_fn` of a process a test interrupts: Ctrl-C (SIGINT) at its default, whatever the test runner's own
    disposition. A shell starts a background job (`cmd &`) with SIGINT ignored, every child inherits that, and
    Python then leaves it ignored instead of raising KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(predicate: Callable[[], bool], timeout: float = 180.0, what: str = "the sweep to get there") -> None:
    """Poll `predicate` (exceptions count as not yet: a store may be mid-write) until true or `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def record_durability(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record, in order, every fsync of a file or a directory and every rename, as a durable write makes them."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def sweep_in_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, blocks: list[str]):
    """A fresh sqlite store holding sweep `name`'s parent run (a grid of `blocks` at depth 8, width 4)."""
    import yaml

    from reslab import tracking
    from reslab.sweep.parent import ensure_sweep_run

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = tracking.store(uri)
    store.prepare(name)
    config = {"name": name, "dataset": {"name": "mnist1d"},
              "grid": {"family": "resnet", "blocks": blocks, "depths": [8], "widths": [4]}}  # fmt: skip
    parent, _ = ensure_sweep_run(store, name, name, yaml.safe_dump(config), {})
    return uri, store, config, parent


def sweep_with_report(workdir: Path, config: dict) -> str:
    """`reslab sweep tiny.yaml --report` on `config` in `workdir`, in a fresh process with the default store
    (./mlflow.db); asserts it succeeded and returns its stdout."""
    import subprocess
    import sys

    import yaml

    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "reslab.cli", "sweep", "tiny.yaml", "--report"], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run `reslab argv`: exit 2, one line on stderr naming each of `needles`, no traceback."""
    from reslab.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"reslab {argv[0]}: error: "), err
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in err, err
    return err
