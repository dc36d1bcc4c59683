"""The coordinator and the worker see the sweep's queue through its interface alone: no Optuna, and from
`reslab.sweep.queue` only the names it lists in `__all__` (cells in, cells out), so the engine of record can change
without touching them."""

from __future__ import annotations

import ast
import os
import signal
from pathlib import Path

import pytest

from reslab.sweep import queue

SWEEP = Path(queue.__file__).parent


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, at any depth (function-level imports included)."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


@pytest.mark.parametrize("module", ["runner.py", "worker.py"])
def test_sees_the_queue_through_its_interface_only(module: str) -> None:
    found = imports(SWEEP / module)
    assert not [m for m, _ in found if m == "optuna" or m.startswith("optuna.")]
    from_queue = [name for m, names in found if m == "reslab.sweep.queue" for name in names]
    assert from_queue, "the module no longer uses the queue: update this test"
    assert set(from_queue) <= set(queue.__all__), sorted(set(from_queue) - set(queue.__all__))
    assert not [m for m, names in found if m == "reslab.sweep" and "queue" in names]  # no way around the names
    assert not [m for m, _ in found if m in ("reslab.sweep.retry", "reslab.sweep.journal", "reslab.sweep.lease")]


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from optuna.trial import TrialState\n    from reslab.sweep.queue import SweepQueue\n")
    assert imports(bad) == [("optuna.trial", ["TrialState"]), ("reslab.sweep.queue", ["SweepQueue"])]
    assert "SweepQueue" not in queue.__all__


# -- the verbs, as the coordinator and a worker use them ----------------------------------------------------------


def config_in(tmp_path: Path, **extra: object):
    from reslab.sweep.config import load_config

    data = {"name": "t", "dataset": {"name": "mnist1d"}, "grid": {"depths": [8], "blocks": ["residual"]},
            "sweep": {"storage": str(tmp_path / "q.journal")}, **extra}  # fmt: skip
    return load_config(data)


def test_a_lease_lost_cannot_commit_and_its_item_runs_again(tmp_path: Path) -> None:
    lost: list[tuple[str | None, str]] = []
    coordinator = queue.CellQueue(config_in(tmp_path), on_lost=lambda run, why: lost.append((run, why)))
    assert {s.state for s in coordinator.settle(retry_failed=True).values()} == {"waiting"}
    worker = queue.CellQueue(config_in(tmp_path), create=False)
    lease = worker.claim()
    assert lease is not None and lease.attempt == 1 and lease.name == lease.cell.name
    assert lease.record_run("run-1")
    coordinator._queue.fail_lost(coordinator._queue.storage.get_trial(lease.trial_id), "no heartbeat")
    assert not lease.record_run("run-2") and not lease.commit(0.5, {"train_error": 0.5})  # fenced
    statuses = coordinator.settle(retry_failed=False)
    item = (lease.key, lease.slot)
    assert statuses[item].state == "waiting" and statuses[item].attempts == 1
    again = worker.claim()
    assert again is not None and (again.key, again.slot) == item and again.attempt == 2
    assert again.commit(0.25, {"train_error": 0.25})
    assert not again.fail("too late") and not again.lose("too late")  # a committed item stays done
    done = coordinator.status()[item]
    assert done.state == "done" and done.value == 0.25 and done.attrs["train_error"] == 0.25
    assert lost == []  # failed by hand above, not found lost by the coordinator's judge


def test_a_worker_that_dies_gives_its_items_back_with_the_reason(tmp_path: Path) -> None:
    lost: list[tuple[str | None, str]] = []
    coordinator = queue.CellQueue(config_in(tmp_path), on_lost=lambda run, why: lost.append((run, why)))
    coordinator.settle(retry_failed=True)
    worker = queue.CellQueue(config_in(tmp_path), create=False, on_lost=lambda run, why: lost.append((run, why)))
    lease = worker.claim()
    assert lease is not None and lease.record_run("run-1")
    coordinator.worker_exited(os.getpid() + 10**6, {})  # not this item's holder: nothing happens
    assert coordinator.status()[(lease.key, lease.slot)].state == "running"
    assert lease.lose("the cell's process was killed by SIGKILL")
    assert lost == [("run-1", "the cell's process was killed by SIGKILL")]
    assert coordinator.settle(retry_failed=False)[(lease.key, lease.slot)].state == "waiting"


def test_ctrl_c_in_the_middle_of_a_claim_gives_the_item_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C that lands just after the storage made an item RUNNING, before the worker knew it held it: the
    worker still fails that item as interrupted, so no item is left RUNNING with nobody to finish it."""
    coordinator = queue.CellQueue(config_in(tmp_path))
    coordinator.settle(retry_failed=True)
    worker = queue.CellQueue(config_in(tmp_path), create=False)
    real = queue.write_trial

    def write_then_ctrl_c(storage, trial_id, attrs, state=None, values=None):
        written = real(storage, trial_id, attrs, state, values)
        if state == queue.TrialState.RUNNING:
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, delivered at the worst moment
        return written

    monkeypatch.setattr(queue, "write_trial", write_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: a test runner's
    try:  # worker process may ignore SIGINT
        with pytest.raises(KeyboardInterrupt):
            worker.claim()
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    worker.interrupted()
    (status,) = coordinator.status().values()
    assert (status.state, status.reason) == ("failed", "interrupted")


def test_sigterm_in_the_middle_of_a_claim_gives_the_item_back_for_another_worker_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """SIGTERM (a scheduler's time limit or preemption) just after the RUNNING write: it waits until the worker
    knows what it holds, then raises `Terminated`; the item is lost with the reason and waiting again at the next
    settle, for any worker, without waiting for a judge or the next `reslab sweep`."""
    from reslab.interrupts import Terminated, raise_terminated

    coordinator = queue.CellQueue(config_in(tmp_path))
    coordinator.settle(retry_failed=True)
    lost: list[tuple[str | None, str]] = []
    worker = queue.CellQueue(config_in(tmp_path), create=False, on_lost=lambda run, why: lost.append((run, why)))
    real = queue.write_trial

    def write_then_sigterm(storage, trial_id, attrs, state=None, values=None):
        written = real(storage, trial_id, attrs, state, values)
        if state == queue.TrialState.RUNNING:
            os.kill(os.getpid(), signal.SIGTERM)
        return written

    monkeypatch.setattr(queue, "write_trial", write_then_sigterm)
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with pytest.raises(Terminated):
            worker.claim()
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert worker.give_back("its worker was terminated by SIGTERM")
    assert lost == [(None, "its worker was terminated by SIGTERM")]
    assert not worker.give_back("again")  # nothing held any more
    (status,) = coordinator.settle(retry_failed=False).values()
    assert status.state == "waiting"


def test_the_recipe_is_recorded_once_and_a_tuned_sweep_names_its_slots(tmp_path: Path) -> None:
    config = config_in(tmp_path, grid={"depths": [8, 20]}, tune={"trials_per_cell": 2, "metric": "test_error"})
    coordinator = queue.CellQueue(config)
    assert coordinator.recorded_recipe({"a": 1}) is None and coordinator.recorded_recipe({"a": 2}) == {"a": 1}
    names = [coordinator.name_of(item) for item in coordinator.items]
    assert len(names) == 2 * len(coordinator.cells) and len(set(names)) == len(names)
    assert all(name.endswith(("-t0", "-t1")) for name in names)
    assert queue.CellQueue.existing(config_in(tmp_path / "none")) is None


def test_a_sweep_without_tune_gets_the_recipe_as_is_and_a_tuned_one_samples_and_prunes(tmp_path: Path) -> None:
    from reslab.sweep.tuner import NoTuner, tuner_for
    from reslab.train.run import StopRun

    plain = config_in(tmp_path / "plain")
    cq = queue.CellQueue(plain)
    cell = next(iter(cq.cells.values()))
    none = tuner_for(plain, cq, cell, 0)
    assert type(none) is NoTuner and none.suggest(plain.train) is plain.train and none.metric == "train_error"
    none.on_epoch(1, {"train_error": 0.9})  # never prunes

    tune = {"trials_per_cell": 4, "metric": "test_error", "lr": [0.01, 0.3], "pruner_startup_trials": 1,
            "pruner_warmup_epochs": 0}  # fmt: skip
    tuned = config_in(tmp_path / "tuned", tune=tune)
    cq = queue.CellQueue(tuned)
    first = tuner_for(tuned, cq, cell, 0)
    assert 0.01 <= first.suggest(tuned.train).lr <= 0.3 and first.tags() and first.attrs()["lr"] == first.lr
    first.on_epoch(1, {"test_error": 0.1})
    first.done(0.1)
    second = tuner_for(tuned, cq, cell, 1)
    with pytest.raises(StopRun, match="pruned after epoch 1"):
        second.on_epoch(1, {"test_error": 0.9})  # worse than the median of the cell's earlier trials
    assert second.pruned() == 0.9
