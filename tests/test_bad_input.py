"""Every input that names or creates a file or folder is judged before anything runs: a config that is not UTF-8,
a folder or unreadable; a queue, tracking store, runs folder, dataset cache, report or probe folder that cannot be
created; a sweep name too long for its folder; a benchmark JSON that is not one; and a grid too large to expand.
Each answers with exit code 2 and one line on stderr that names the path and what is wrong, creates nothing, and
leaves what earlier runs made as it was. Each is in-process (`reslab.cli.main`), so none needs a second Python.

Permissions do not bind root, who runs these tests on CI machines: a folder that must not be writable is made
read-only, and where the process is root, `os.access` is told so as well (the check asks nothing else)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from reslab import paths
from reslab.sweep.config import MAX_CELLS, grid_size_problem
from tests.helpers import refused

CONFIG = {
    "name": "bad",
    "dataset": {"name": "mnist1d"},
    "grid": {"family": "resnet", "blocks": ["residual"], "depths": [8], "widths": [8]},
    "train": {"epochs": 1},
}
LONG = "a" * 300


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "RESLAB_STORAGE", "RESLAB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "a-folder").mkdir()
    return tmp_path


def made(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir())


BEFORE = ["a-file", "a-folder", "bad.yaml"]


def read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`folder`, made unwritable (told to `os.access` too where the tests run as root)."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs) -> bool:
            if mode & os.W_OK and Path(path) == folder:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    return folder


# -- the config file ---------------------------------------------------------------------------------------------------


def test_a_config_that_is_not_utf8(workdir: Path, capsys) -> None:
    (workdir / "latin1.yaml").write_bytes("name: café\n".encode("latin-1"))
    refused(["sweep", "latin1.yaml"], capsys, "latin1.yaml: not UTF-8 text (byte 0xe9 at line 1, column 10)",
            "save it as UTF-8", "nothing was run")  # fmt: skip


def test_a_config_that_is_a_folder(workdir: Path, capsys) -> None:
    refused(["sweep", "a-folder"], capsys, "a-folder: a folder, not a file; name the YAML file, e.g. configs/")


def test_a_config_that_cannot_be_read(workdir: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = workdir / "locked.yaml"
    locked.write_text(yaml.safe_dump(CONFIG))
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: the refusal the kernel gives everyone else
        real = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self.name == "locked.yaml":
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    refused(["sweep", "locked.yaml"], capsys, "locked.yaml: cannot be read (permission denied)")


# -- what a sweep creates ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_storage_under_a_regular_file(workdir: Path, capsys, dry_run: bool) -> None:
    refused(["sweep", "bad.yaml", "--storage", "a-file/x.journal", *(["--dry-run"] * dry_run)], capsys,
            "sweep.storage a-file/x.journal:", "a-file is a file, so nothing can be created under it")  # fmt: skip
    assert made(workdir) == BEFORE


def test_a_storage_in_a_read_only_folder(workdir: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = read_only(workdir / "locked", monkeypatch)
    refused(["sweep", "bad.yaml", "--storage", "locked/q/x.journal"], capsys,
            f"{locked} is not writable (permission denied), so {locked / 'q'} cannot be created")  # fmt: skip
    assert made(workdir) == [*BEFORE, "locked"] and not any(locked.iterdir())


def test_a_storage_that_is_a_folder(workdir: Path, capsys) -> None:
    refused(["sweep", "bad.yaml", "--storage", "a-folder"], capsys,
            "a-folder is a folder, not a file: name a file in it, e.g.", "optuna.journal")  # fmt: skip


def test_a_storage_from_the_environment(workdir: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESLAB_STORAGE", "a-file/x.journal")
    refused(["sweep", "bad.yaml"], capsys, "$RESLAB_STORAGE a-file/x.journal:", "a-file is a file")


def test_a_sweep_name_too_long_for_a_folder(workdir: Path, capsys) -> None:
    refused(["sweep", "bad.yaml", "--set", f"name={LONG}"], capsys,
            "is 300 characters, but it names the folder runs/<name>/", "choose a shorter name")  # fmt: skip
    assert made(workdir) == BEFORE


def test_a_runs_dir_that_cannot_be_created(workdir: Path, capsys) -> None:
    refused(["sweep", "bad.yaml", "--set", "sweep.runs_dir=a-file/runs"], capsys,
            "sweep.runs_dir a-file/runs:", "a-file is a file, so nothing can be created under it")  # fmt: skip
    refused(["sweep", "bad.yaml", "--set", "sweep.runs_dir=a-file"], capsys, "a-file is a file, not a folder")
    assert made(workdir) == BEFORE


def test_a_runs_dir_on_a_read_only_filesystem(workdir: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = read_only(workdir / "mnt", monkeypatch)
    real = os.statvfs

    def statvfs(path):
        found = real(path)
        if Path(path) == locked:  # what a read-only mount reports
            return os.statvfs_result((*found[:8], found.f_flag | os.ST_RDONLY, *found[9:]))
        return found

    monkeypatch.setattr(os, "statvfs", statvfs)
    refused(["sweep", "bad.yaml", "--set", "sweep.runs_dir=mnt/runs"], capsys,
            f"{locked} is on a read-only filesystem")  # fmt: skip


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite:///a-file/x/mlflow.db", "a-file is a file, so nothing can be created under it"),
        ("sqlite:///a-folder", "a-folder is a folder, not a file: name a file in it"),
        ("sqlite:///", "names no database file"),
    ],
    ids=["under-a-file", "a-folder", "no-file"],
)
def test_a_tracking_store_that_cannot_be_made(workdir: Path, capsys, uri: str, message: str) -> None:
    refused(["sweep", "bad.yaml", "--tracking-uri", uri], capsys, f"--tracking-uri {uri}: ", message)
    assert made(workdir) == BEFORE


def test_a_tracking_store_named_in_the_config(workdir: Path, capsys) -> None:
    refused(["sweep", "bad.yaml", "--set", "tracking.uri=sqlite:///a-folder"], capsys,
            "tracking.uri sqlite:///a-folder:", "is a folder, not a file")  # fmt: skip
    assert made(workdir) == BEFORE


def test_a_data_dir_named_in_the_config(workdir: Path, capsys) -> None:
    refused(["sweep", "bad.yaml", "--set", "dataset.data_dir=a-file"], capsys,
            "dataset.data_dir a-file:", "a-file is a file, not a folder")  # fmt: skip
    assert made(workdir) == BEFORE


def test_a_report_folder_the_sweep_cannot_write(workdir: Path, capsys) -> None:
    (workdir / "reports").write_text("a file where the folder goes\n")
    refused(["sweep", "bad.yaml", "--report"], capsys, "--report writes reports/bad:", "reports is a file")
    assert made(workdir) == sorted([*BEFORE, "reports"])


def test_nothing_already_done_is_lost(workdir: Path, capsys) -> None:
    """A sweep refused for a bad path leaves the queue and runs folder of earlier runs exactly as they were."""
    run_dir = workdir / "runs" / "bad"
    run_dir.mkdir(parents=True)
    journal = run_dir / "optuna.journal"
    journal.write_bytes(b'{"op_code": 0, "worker_id": "w", "study_name": "bad", "directions": [1]}\n')
    before = journal.read_bytes()
    refused(["sweep", "bad.yaml", "--tracking-uri", "sqlite:///a-folder"], capsys, "is a folder, not a file")
    assert journal.read_bytes() == before and sorted(p.name for p in run_dir.iterdir()) == ["optuna.journal"]


# -- the grid's size -----------------------------------------------------------------------------------------------


def test_a_grid_too_large_is_refused_from_its_lists_lengths(workdir: Path, capsys, monkeypatch) -> None:
    """120,000 cells: said from the product of the lists' lengths, before the lists are validated value by value,
    a cell is made, a network specified or a memory estimate taken."""
    import reslab.limits
    import reslab.sweep.grid
    from reslab.sweep.config import SweepConfig

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("per-cell work before the grid's size was judged")

    monkeypatch.setattr(reslab.sweep.grid, "expand", forbidden)
    monkeypatch.setattr(reslab.sweep.grid.Cell, "spec", forbidden)
    monkeypatch.setattr(reslab.limits, "memory_problem", forbidden)
    monkeypatch.setattr(SweepConfig, "model_validate", forbidden)
    seeds = list(range(3000))
    depths = [6 * n + 2 for n in range(1, 21)]
    refused(["sweep", "bad.yaml", "--set", f"grid.seeds={seeds}", "--set", f"grid.depths={depths}",
             "--set", "grid.blocks=[plain,residual]", "--dry-run"], capsys,
            "grid: its lists make 120,000 cells (3000 seeds x 20 depths x 2 blocks)",
            f"more than the {MAX_CELLS:,} one sweep may hold", "shorten grid.seeds")  # fmt: skip
    assert made(workdir) == BEFORE


def test_the_grid_limit_is_the_product_of_every_list() -> None:
    """Every list-valued field counts, given or defaulted (blocks default to two); at the limit is allowed."""
    at_limit = {"depths": [8], "seeds": list(range(MAX_CELLS // 2))}
    assert grid_size_problem(at_limit) is None
    over = {**at_limit, "norms": ["bn", "none"]}
    assert grid_size_problem(over) is not None and f"{MAX_CELLS * 2:,} cells" in grid_size_problem(over)
    assert grid_size_problem({"depths": "8"}) is None and grid_size_problem(None) is None  # validation says those


# -- the other commands ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "s", "--out", "a-file"], "--out a-file: {cwd}/a-file is a file, not a folder; choose another"),
        (["report", "s", "--out", "a-file/r"], "--out a-file/r: {cwd}/a-file is a file, so nothing can be created"),
        (["report", LONG], f"report folder reports/{LONG}: the name {LONG[:24]}... is 300 bytes long"),
        (["probe", "--depth", "8", "--out", "a-file"], "--out a-file: {cwd}/a-file is a file, not a folder"),
        (["probe", "--depth", "8", "--data-dir", "a-file"], "--data-dir a-file: {cwd}/a-file is a file, not a folder"),
        (["train", "--depth", "8", "--data-dir", "a-file/d"], "--data-dir a-file/d: {cwd}/a-file is a file, so"),
        (["train", "--depth", "8", "--tracking-uri", "sqlite:///a-folder"], "sqlite:///a-folder: {cwd}/a-folder is"),
        (["ui", "--tracking-uri", "sqlite:///a-file/m.db"], "--tracking-uri sqlite:///a-file/m.db: {cwd}/a-file is"),
    ],
    ids=["report-out-file", "report-out-under-file", "report-name-too-long", "probe-out", "probe-data-dir",
         "train-data-dir", "train-tracking", "ui-tracking"],
)
def test_a_folder_or_store_a_command_cannot_use(workdir: Path, capsys, argv: list[str], message: str) -> None:
    refused(argv, capsys, message.format(cwd=workdir))
    assert made(workdir) == BEFORE


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "a folder, not a file"),
        (b"\xff\xfe{}", "not UTF-8 text (byte 0xff at line 1, column 1)"),
        (b'{"benchmarks": [', "not JSON (Expecting value at line 1, column 17)"),
        (b"[1, 2]", "not a pytest-benchmark JSON (no `benchmarks` list)"),
    ],
    ids=["folder", "not-utf8", "not-json", "not-a-benchmark"],
)
def test_a_benchmark_json_that_is_not_one(workdir: Path, capsys, content: bytes | None, message: str) -> None:
    path = workdir / "a-folder"
    if content is not None:
        path = workdir / "bench.json"
        path.write_bytes(content)
    refused(["bench-report", path.name], capsys, f"benchmark JSON {path.name}: {message}")
    refused(["report", "s", "--bench", path.name], capsys, f"--bench {path.name}: {message}")
    assert not (workdir / "reports").exists()


def test_bench_report_figures_where_they_cannot_go(workdir: Path, capsys) -> None:
    (workdir / "bench.json").write_text(json.dumps({"benchmarks": []}))
    refused(["bench-report", "bench.json", "--out", "a-file/figs"], capsys,
            "--out a-file/figs:", "a-file is a file, so nothing can be created under it")  # fmt: skip


def test_a_check_only_looks(workdir: Path) -> None:
    """The checks create nothing, not even the folders they find creatable."""
    assert paths.folder_problem(workdir / "x" / "y") is None
    assert paths.file_problem(workdir / "q" / "optuna.journal") is None
    assert paths.store_problem("sqlite:///" + str(workdir / "s" / "mlflow.db")) is None
    assert made(workdir) == BEFORE
