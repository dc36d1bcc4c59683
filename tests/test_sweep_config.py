"""Sweep configs, grid expansion and the queue's exactly-once rules (no training here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from reslab.cli import main
from reslab.sweep import queue as q
from reslab.sweep.config import ConfigError, apply_override, load_config
from reslab.sweep.grid import expand
from reslab.sweep.runner import recipe_changes

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "t", "dataset": {"name": "mnist1d"}, "grid": {"depths": [8, 20]}}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert expand(config.grid) and len(config.cells()) >= len(expand(config.grid))


BAD_CONFIGS = [
    ({**GOOD, "grid": {"depths": [8, 20], "depht": [3]}}, ["grid.depht: unknown key (valid: family, blocks, depths"]),
    ({**GOOD, "train": {"epochs": "many"}}, ["train.epochs: Input should be a valid integer"]),
    (
        {**GOOD, "grid": {"depths": [20, 57]}},
        ["grid.depths[1]: depth 57 is not valid", "nearest valid depths: 56 or 62"],
    ),
    ({**GOOD, "grid": {"depths": []}}, ["grid.depths: List should have at least 1 item"]),
    ({**GOOD, "grid": {"depths": [8], "blocks": []}}, ["grid.blocks: List should have at least 1 item"]),
    ({**GOOD, "dataset": {"name": "imagenet"}}, ["dataset: unknown dataset 'imagenet'; valid: mnist1d"]),
    ({**GOOD, "sweep": {"storage": "redis://localhost"}}, ["sweep.storage: storage scheme 'redis' is not supported"]),
    ({**GOOD, "grid": {"family": "vgg", "depths": [8]}}, ["grid.family: unknown family 'vgg'; valid: resnet, mlp"]),
    ({**GOOD, "name": "my sweep"}, ["name: 'my sweep' must be letters, digits"]),
    ({**GOOD, "tune": {"trials_per_cell": 2}}, ["tune.metric val_error needs a validation split"]),
    ({"grid": {"depths": [8]}}, ["name: required key is missing"]),
]


@pytest.mark.parametrize(("data", "messages"), BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_bad_configs_exit_2_with_every_problem_and_create_nothing(
    in_tmp: Path, data: dict, messages: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(in_tmp / "bad.yaml", data)
    code = main(["sweep", str(path)])  # a real run, not --dry-run: it must still create nothing
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:" in err and "nothing was run" in err
    for message in messages:
        assert message in err
    assert "Traceback" not in err
    assert not (in_tmp / "mlflow.db").exists() and not (in_tmp / "runs").exists()


def test_unreachable_queue_database_exits_2_and_creates_nothing(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid URL whose server is not there (port 1 refuses at once): one clear error, no tracking store made."""
    path = _write(in_tmp / "ok.yaml", {**GOOD, "sweep": {"storage": "postgresql://reslab:secret@127.0.0.1:1/none"}})
    assert main(["sweep", str(path)]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "cannot open sweep storage postgresql://reslab:***@127.0.0.1:1/none" in text
    assert "secret" not in text and "Traceback" not in text
    assert not (in_tmp / "mlflow.db").exists()


def test_all_problems_are_reported_together(in_tmp: Path) -> None:
    data = {"name": "t", "dataset": {"name": "x"}, "grid": {"depths": [9, 57], "widths": [0]}, "train": {"lr": -1}}
    with pytest.raises(ConfigError) as exc:
        load_config(data)
    problems = exc.value.problems
    assert len(problems) == 5, problems
    assert problems[1].startswith("grid.depths[0]: depth 9") and problems[2].startswith("grid.depths[1]: depth 57")


def test_bad_yaml_and_missing_file(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(in_tmp / "broken.yaml", "name: t\ngrid: [depths: 8\n")
    assert main(["sweep", str(path)]) == 2
    assert "not valid YAML at line" in capsys.readouterr().err
    assert main(["sweep", "nope.yaml"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_overrides(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(GOOD, ["train.epochs=5", "grid.depths=[8,20,32]", "dataset.options.num_samples=600"])
    assert config.train.epochs == 5 and config.grid.depths == [8, 20, 32]
    assert config.dataset.options == {"num_samples": 600}
    assert config.tracking.experiment == "t"  # experiment defaults to the sweep's name
    raw: dict = {"train": 3}
    with pytest.raises(ValueError, match="train is not a section"):
        apply_override(raw, "train.epochs=5")
    path = _write(in_tmp / "ok.yaml", GOOD)
    assert main(["sweep", str(path), "--set", "train.epochs", "--dry-run"]) == 2
    assert "expected KEY.PATH=VALUE" in capsys.readouterr().err


def test_grid_expansion() -> None:
    config = load_config({**GOOD, "grid": {"depths": [20, 8], "shortcuts": ["A", "B"], "seeds": [0, 1]}})
    cells = expand(config.grid)
    # plain cells ignore the shortcut: 2 depths x (1 plain + 2 residual) x 2 seeds
    assert len(cells) == 12 and len({c.key for c in cells}) == 12
    # the shortcut varies in this grid, so residual names show it; a plain net has none to show
    assert [c.name for c in cells[:3]] == ["plain-8-w16-s0", "plain-20-w16-s0", "residual-8-w16-A-s0"]
    assert {c.name for c in cells if c.shortcut == "B"} == {"residual-8-w16-B-s0", "residual-20-w16-B-s0",
                                                          "residual-8-w16-B-s1", "residual-20-w16-B-s1"}  # fmt: skip


def test_recipe_changes_ignore_execution_settings() -> None:
    a = load_config(GOOD).recipe()
    b = load_config(GOOD, ["train.threads=1", "train.device=cpu", "train.telemetry_every=50"]).recipe()
    c = load_config(GOOD, ["train.epochs=5"]).recipe()
    assert recipe_changes(a, b) == []
    assert recipe_changes(a, c) == ["train.epochs: 20 -> 5"]


def test_dry_run_lists_and_creates_nothing(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(in_tmp / "ok.yaml", GOOD)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plain-8-w16-s0" in out and "residual-20-w16-s0" in out and "missing" in out
    assert " M " in out and "0 of 4 done" in out
    assert not (in_tmp / "runs").exists() and not (in_tmp / "mlflow.db").exists()


def test_dry_run_of_a_started_sweep_shows_state_lease_and_attempts(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(in_tmp / "ok.yaml", GOOD)
    config = load_config(path)
    cells, items = q.items_of(config)
    queue = q.SweepQueue(q.open_storage(config.storage_url), config.name)
    queue.reconcile(items, retry_failed=True, grace_s=60)
    first = queue.claim(items)
    queue.fail_lost(first, "no heartbeat")
    queue.reconcile(items, retry_failed=False, grace_s=60)  # the lost item goes back to the queue...
    while queue.claim(items) is not None:  # ...and a worker on this machine takes all: the lost one's 2nd attempt
        pass
    capsys.readouterr()
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if f" {cells[q.item_of(first)[0]].name} " in line)
    assert "running" in row and f"{os.uname().nodename} pid {os.getpid()}" in row and " 2 " in row
    assert "0 of 4 done" in out


# -- the queue ---------------------------------------------------------------------------------------------------------

ITEMS = [("cell-a", 0), ("cell-b", 0), ("cell-c", 0)]


@pytest.fixture
def journal(tmp_path: Path) -> str:
    return str(tmp_path / "q.journal")


def test_each_item_is_claimed_once(journal: str) -> None:
    coord = q.SweepQueue(q.open_storage(journal), "s")
    coord.reconcile(ITEMS, retry_failed=True, grace_s=60)
    a, b = q.SweepQueue(q.open_storage(journal), "s"), q.SweepQueue(q.open_storage(journal), "s")
    claimed = [t for t in (a.claim(), b.claim(), a.claim(), b.claim()) if t is not None]
    assert sorted(q.item_of(t) for t in claimed) == ITEMS
    assert coord.reconcile(ITEMS, retry_failed=True, grace_s=60)[ITEMS[0]].state == "running"  # no re-enqueue


def test_items_enqueued_twice_run_once(journal: str) -> None:
    one, two = q.SweepQueue(q.open_storage(journal), "s"), q.SweepQueue(q.open_storage(journal), "s")
    for coordinator in (one, two):  # two machines starting at once both enqueue everything
        for key, slot in ITEMS:
            coordinator.study.enqueue_trial({}, user_attrs={q.CELL: key, q.SLOT: slot})
    claimed = []
    while (t := (one if len(claimed) % 2 else two).claim()) is not None:
        claimed.append(q.item_of(t))
    assert sorted(claimed) == ITEMS
    pruned = one.trials((q.TrialState.PRUNED,))
    assert len(pruned) == 3 and all(q.DUPLICATE_OF in t.user_attrs for t in pruned)


def test_failed_items_are_retried_by_the_next_sweep_not_this_one(journal: str) -> None:
    queue = q.SweepQueue(q.open_storage(journal), "s")
    queue.reconcile(ITEMS[:1], retry_failed=True, grace_s=60)
    queue.fail(queue.claim(), "DivergedError: training loss became nan")
    assert queue.reconcile(ITEMS[:1], retry_failed=False, grace_s=60)[ITEMS[0]].state == "failed"
    status = queue.reconcile(ITEMS[:1], retry_failed=True, grace_s=60)[ITEMS[0]]
    assert status.state == "waiting"
    queue.complete(queue.claim(), 0.25, {"train_error": 0.25})
    assert queue.status(ITEMS[:1])[ITEMS[0]].state == "done"


def test_a_dead_workers_item_is_lost_and_retried(journal: str) -> None:
    queue = q.SweepQueue(q.open_storage(journal), "s")
    queue.reconcile(ITEMS[:1], retry_failed=True, grace_s=60)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    trial = queue.claim()
    queue.set_attrs(trial, {q.PID: child.pid, q.PID_START: q.pid_start(child.pid)})
    assert queue.reconcile(ITEMS[:1], retry_failed=False, grace_s=60)[ITEMS[0]].state == "running"
    child.kill()
    child.wait()
    lost: list[str] = []
    status = queue.reconcile(ITEMS[:1], retry_failed=False, grace_s=60, on_lost=lambda t, why: lost.append(why))
    assert status[ITEMS[0]].state == "waiting"
    assert lost == [f"worker pid {child.pid} on {os.uname().nodename} is gone"]


def test_a_committed_run_left_running_is_finished_and_an_orphan_killed(journal: str, tmp_path: Path) -> None:
    """A worker killed between its commit (trial COMPLETE) and marking its run FINISHED: the coordinator's next
    reconcile finishes the run, so the cell keeps its one result; a run whose trial is no longer RUNNING and never
    committed is KILLED, so no run looks alive that is not."""
    from reslab import tracking
    from reslab.sweep.runs import settle_orphans

    store = tracking.store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store.prepare("t")
    parent = store.start_run("t", "sweep", {})
    queue = q.SweepQueue(q.open_storage(journal), "s")
    queue.reconcile(ITEMS[:3], retry_failed=True, grace_s=60)
    committed, orphan, live = queue.claim(), queue.claim(), queue.claim()
    runs = {}
    for trial in (committed, orphan, live):
        runs[trial.number] = store.start_run("t", str(trial.number), {"reslab.trial": trial.number},
                                             parent_run_id=parent)  # fmt: skip
        queue.set_attrs(trial, {q.RUN_ID: runs[trial.number]})
    assert queue.complete(committed, 0.125, {"train_error": 0.125})
    queue.fail(orphan, "interrupted")
    assert settle_orphans(store, "t", parent, queue.outcomes()) == (1, 1)
    status = {n: store.get_run(r).info.status for n, r in runs.items()}
    assert status == {committed.number: "FINISHED", orphan.number: "KILLED", live.number: "RUNNING"}


def test_a_live_lease_on_a_machine_whose_clock_is_off_is_never_lost(journal: str) -> None:
    """Another node's worker beats with a clock 10 minutes behind (or ahead): its beat changes, so it holds."""
    checker = q.SweepQueue(q.open_storage(journal), "s")
    checker.reconcile(ITEMS[:2], retry_failed=True, grace_s=5)
    behind, ahead = checker.claim(), checker.claim()
    for _ in range(3):
        for trial, offset in ((behind, -600), (ahead, 600)):
            checker.set_attrs(trial, {q.HOST: "elsewhere", q.PID: 1, q.BEAT: time.time() + offset})
        status = checker.reconcile(ITEMS[:2], retry_failed=False, grace_s=5)
        assert {s.state for s in status.values()} == {"running"}
        time.sleep(0.2)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_dead_lease_is_lost_after_grace_on_the_checkers_own_clock(journal: str) -> None:
    queue = q.SweepQueue(q.open_storage(journal), "s")
    queue.reconcile(ITEMS[:1], retry_failed=True, grace_s=60)
    trial = queue.claim()
    queue.set_attrs(trial, {q.HOST: "elsewhere", q.PID: 1, q.BEAT: time.time() + 3600})  # a clock far ahead
    clock = FakeClock()
    queue.leases = q.LeaseJudge(60, clock)
    for step in range(0, 61, 20):  # read every 20 s: beat unchanged, lost once 60 s have passed
        clock.now = 1000.0 + step
        lost = queue.find_lost(60)
        assert bool(lost) == (step >= 60), step
    assert lost[0][1].startswith("no heartbeat from elsewhere for 60 s")


def test_a_claim_whose_worker_died_before_its_lease_was_written_is_lost_on_a_database_too(tmp_path: Path) -> None:
    """A worker killed between taking an item (WAITING -> RUNNING) and writing its lease leaves a trial with no
    holder and no Optuna heartbeat, which Optuna never calls stale: the checker's own clock judges it instead, so
    the item runs again rather than waiting forever."""
    queue = q.SweepQueue(q.open_storage(f"sqlite:///{tmp_path / 'q.db'}"), "s")
    queue.reconcile(ITEMS[:1], retry_failed=True, grace_s=60)
    (waiting,) = queue.trials((q.TrialState.WAITING,))
    assert q.write_trial(queue.storage, waiting._trial_id, {}, q.TrialState.RUNNING)  # and then SIGKILL
    clock = FakeClock()
    queue.leases = q.LeaseJudge(60, clock)
    for step in range(0, 61, 20):
        clock.now = 1000.0 + step
        lost = queue.find_lost(60)
        assert bool(lost) == (step >= 60), step
    status = queue.reconcile(ITEMS[:1], retry_failed=False, grace_s=60)
    assert {s.state for s in status.values()} == {"waiting"}


def test_a_storage_outage_does_not_make_every_lease_look_stale(journal: str) -> None:
    """While the storage cannot be read, no worker can beat either: when it is back, leases get grace_s again."""
    queue = q.SweepQueue(q.open_storage(journal), "s")
    queue.reconcile(ITEMS[:1], retry_failed=True, grace_s=60)
    trial = queue.claim()
    queue.set_attrs(trial, {q.HOST: "elsewhere", q.PID: 1, q.BEAT: 1.0})
    clock = FakeClock()
    queue.leases = q.LeaseJudge(60, clock)
    assert queue.find_lost(60) == []
    clock.now += 10
    queue.leases.read_failed()  # the storage went away for 5 minutes
    clock.now += 300
    for _ in range(3):  # reads every 20 s after the outage: the window starts at the first of them
        assert queue.find_lost(60) == []
        clock.now += 20
    assert len(queue.find_lost(60)) == 1


def test_a_failed_item_whose_last_trial_is_a_pruned_duplicate_is_not_rerun(journal: str) -> None:
    """Two coordinators enqueued the item; the duplicate was pruned at claim; the item then failed for real: it
    stays failed within this sweep (not taken for lost because the duplicate is its newest trial)."""
    one, two = q.SweepQueue(q.open_storage(journal), "s"), q.SweepQueue(q.open_storage(journal), "s")
    for coordinator in (one, two):
        coordinator.study.enqueue_trial({}, user_attrs={q.CELL: ITEMS[0][0], q.SLOT: 0})
    trial = one.claim()
    assert two.claim() is None  # the duplicate, pruned
    one.fail(trial, "OSError: disk full")
    assert one.reconcile(ITEMS[:1], retry_failed=False, grace_s=60)[ITEMS[0]].state == "failed"
    assert one.trials((q.TrialState.WAITING,)) == []


def test_a_waiting_trial_of_an_item_already_complete_is_not_run(journal: str) -> None:
    """A waiting trial enqueued by one coordinator while another's trial of the same item completed: never run."""
    one, two = q.SweepQueue(q.open_storage(journal), "s"), q.SweepQueue(q.open_storage(journal), "s")
    one.study.enqueue_trial({}, user_attrs={q.CELL: ITEMS[0][0], q.SLOT: 0})
    two.study.enqueue_trial({}, user_attrs={q.CELL: ITEMS[0][0], q.SLOT: 0})
    waiting = sorted(one.trials((q.TrialState.WAITING,)), key=lambda t: t.number)
    two.storage.set_trial_state_values(waiting[1]._trial_id, q.TrialState.RUNNING)  # the newer one runs first
    assert two.complete(two.storage.get_trial(waiting[1]._trial_id), 0.5, {})
    assert one.claim() is None
    assert one.storage.get_trial(waiting[0]._trial_id).state == q.TrialState.PRUNED


def test_a_shrunk_grid_prunes_stale_waiting_items_instead_of_crashing(journal: str) -> None:
    queue = q.SweepQueue(q.open_storage(journal), "s")
    queue.reconcile(ITEMS, retry_failed=True, grace_s=60)
    kept = ITEMS[:2]
    claimed = [queue.claim(kept), queue.claim(kept), queue.claim(kept)]
    assert sorted(q.item_of(t) for t in claimed if t is not None) == kept and claimed[2] is None
    stale = queue.trials((q.TrialState.PRUNED,))
    assert len(stale) == 1 and q.STALE in stale[0].user_attrs


def test_the_commit_is_fenced_by_the_queue(journal: str) -> None:
    """A worker whose trial another process failed as lost cannot commit, set attributes, or fail it: each says
    so (False) instead of raising, and the item keeps the other worker's result."""
    mine, theirs = q.SweepQueue(q.open_storage(journal), "s"), q.SweepQueue(q.open_storage(journal), "s")
    mine.reconcile(ITEMS[:1], retry_failed=True, grace_s=60)
    trial = mine.claim()
    assert theirs.fail_lost(theirs.trials()[0], "no heartbeat")
    assert not mine.set_attrs(trial, {q.RUN_ID: "r"})
    assert not mine.complete(trial, 0.1, {"train_error": 0.1})
    assert not mine.fail(trial, "interrupted")
    assert theirs.storage.get_trial(trial._trial_id).state == q.TrialState.FAIL


def test_shipped_default_config_is_the_issue_grid() -> None:
    config = load_config(ROOT / "configs" / "default.yaml")
    assert (config.dataset.name, config.grid.family, config.grid.blocks) == ("mnist1d", "resnet", ["plain", "residual"])
    assert (config.grid.depths, config.grid.widths, config.grid.seeds) == ([8, 20, 32, 56], [8], [0, 1])
    t = config.train
    assert (t.epochs, t.lr, t.schedule, t.warmup_epochs, t.batch_size, t.weight_decay) == (
        20,
        0.1,
        "cosine",
        2,
        128,
        1e-4,
    )
    assert config.grid.shortcuts == ["A"] and len(expand(config.grid)) == 16


def test_config_text_roundtrip(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        name: rt
        grid: {family: mlp, depths: [4, 10], widths: [32]}
        dataset: {name: synthetic, options: {shape: [1, 8]}}
        """
    )
    config = load_config(_write(tmp_path / "rt.yaml", text))
    again = load_config(config.resolved())
    assert again == config


def test_where_to_look_next_names_the_sweeps_own_store(in_tmp: Path) -> None:
    from reslab.sweep.runner import Coordinator

    server = Coordinator(load_config(GOOD, ["tracking.uri=http://127.0.0.1:5000"]))._next_steps()
    assert "open http://127.0.0.1:5000 in a browser" in server
    assert "reslab report t --tracking-uri http://127.0.0.1:5000" in server
    local = Coordinator(load_config(GOOD))._next_steps()
    assert f"mlflow ui --backend-store-uri sqlite:///{in_tmp / 'mlflow.db'}" in local
    assert "reslab report t    ->" in local


def test_more_workers_than_gpus_share_them_and_none_is_left_without() -> None:
    from reslab.sweep.runner import WorkerPlan, gpus_of_worker

    assert [gpus_of_worker(WorkerPlan(2, None, ["0", "1", "2", "3"]), i) for i in range(2)] == [["0", "1"], ["2", "3"]]
    assert [gpus_of_worker(WorkerPlan(3, None, ["0", "1"]), i) for i in range(3)] == [["0"], ["1"], ["0"]]


def test_the_resume_command_keeps_the_queue_store_and_workers() -> None:
    from reslab.cli import _source, build_parser

    args = build_parser().parse_args(["sweep", "c.yaml", "--set", "train.epochs=5", "--workers", "2", "--storage",
                                      "postgresql://u@h/db", "--tracking-uri", "http://h:5000"])  # fmt: skip
    assert _source(args) == ("c.yaml --set train.epochs=5 --workers 2 --storage postgresql://u@h/db "
                             "--tracking-uri http://h:5000", "")  # fmt: skip


def test_the_resume_command_names_the_environment_instead_of_a_password() -> None:
    from reslab.cli import _source, build_parser

    args = build_parser().parse_args(["sweep", "c.yaml", "--set", "sweep.storage=postgresql://u:s3cret@h/q",
                                      "--workers", "2", "--tracking-uri", "postgresql://u:s3cret@h/m"])  # fmt: skip
    command, hint = _source(args)
    assert command == "c.yaml --workers 2"
    assert "s3cret" not in hint
    assert "RESLAB_STORAGE=postgresql://u:***@h/q" in hint and "MLFLOW_TRACKING_URI=postgresql://u:***@h/m" in hint


def test_ctrl_c_in_the_middle_of_a_claim_leaves_no_trial_running(tmp_path: Path, monkeypatch) -> None:
    """An interrupt after the claim's RUNNING transition but before the worker holds the trial: it is still
    failed as interrupted, so the next run reruns it at once instead of waiting for its lease to expire."""
    from reslab.sweep.worker import Worker

    config = load_config({**GOOD, "sweep": {"storage": str(tmp_path / "q.journal")},
                          "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})  # fmt: skip
    _, items = q.items_of(config)
    queue = q.SweepQueue(q.open_storage(config.storage_url), config.name)
    queue.reconcile(items, retry_failed=True, grace_s=60)

    def interrupted(*args: object) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "lease_attrs", interrupted)  # the claim's lease, written after its RUNNING transition
    handler = signal.getsignal(signal.SIGINT)
    assert Worker(config, None, None).run() == 130
    assert signal.getsignal(signal.SIGINT) is handler  # else every process this one starts would ignore Ctrl-C
    assert not queue.trials((q.TrialState.RUNNING,))
    (failed,) = queue.trials((q.TrialState.FAIL,))
    assert failed.user_attrs[q.FAILURE] == "interrupted"


@pytest.mark.parametrize("family", ["resnet", "mlp", "convnet", "transformer"])
def test_a_grid_cell_is_the_net_reslab_train_builds(family: str) -> None:
    """A grid that leaves widths, shortcuts and norms out takes the family's defaults, as `reslab train` does."""
    from reslab.cli import build_parser
    from reslab.cli_options import net_specs
    from reslab.models.catalog import FAMILY_INFO

    depth = FAMILY_INFO[family].default_depth
    dataset = {"name": FAMILY_INFO[family].default_dataset}  # the transformer reads text, as `reslab train` does
    cells = expand(load_config({"name": "d", "dataset": dataset, "grid": {"family": family, "depths": [depth]}}).grid)
    (alone,) = net_specs(build_parser().parse_args(["train", "--family", family]))
    assert [c.spec() for c in cells if c.block == "residual"] == [alone]
