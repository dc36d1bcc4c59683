"""Impossible requests are refused before any work: exit 2, one line that says what is wrong and what is valid, no
traceback, and nothing created (no queue, no MLflow store, no files). Memory is judged from closed-form estimates
(`reslab.models.estimate`), so a 600002-layer grid is refused without building a single module."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reslab.cli import main
from reslab.devices import usable_cores
from reslab.limits import WORKERS_PER_CORE

BASE = {
    "name": "imp",
    "dataset": {"name": "mnist1d"},
    "grid": {"family": "resnet", "blocks": ["residual"], "depths": [8], "widths": [8]},
    "train": {"epochs": 1},
}
CORES = usable_cores()

IMPOSSIBLE = [
    ("grid.depths=[600002]", "grid cell residual-600002-w8 needs about"),
    ("grid.widths=[100000]", "grid cell residual-8-w100000 needs about"),
    (f"sweep.workers={WORKERS_PER_CORE * CORES + 1}", f"more than {WORKERS_PER_CORE} per core; valid: 1 to"),
    ("sweep.workers=500", "workers for"),
    ("sweep.heartbeat_s=0.001", "sweep.heartbeat_s: Input should be greater than or equal to 1"),
    ("sweep.grace_s=1", "grace_s 1 is less than 3 x heartbeat_s (15)"),
    ("train.devices=banana", "devices 'banana' is not one Lightning accepts; valid: a count >= 1"),
    ("train.devices=0", "devices 0 is not one Lightning accepts"),
    ("train.strategy=banana", "unknown strategy 'banana'; valid: auto, ddp"),
    ("dataset.options.bogus=1", "unknown option(s) bogus for dataset 'mnist1d'; valid: num_samples"),
    ("dataset.options.num_samples=many", "option(s) of the wrong type: num_samples='many' (expected a number)"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RESLAB_STORAGE", raising=False)
    (tmp_path / "imp.yaml").write_text(yaml.safe_dump(BASE))
    return tmp_path


@pytest.fixture
def nothing_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a network (or a summary of one) fails the test: the checks and the dry run must not need it."""
    import reslab.models.registry as registry
    import reslab.models.summary as summary

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network was built")

    monkeypatch.setattr(registry, "build_net", forbidden)
    monkeypatch.setattr(summary, "build_net", forbidden)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(("override", "message"), IMPOSSIBLE, ids=[o for o, _ in IMPOSSIBLE])
def test_an_impossible_sweep_is_one_line_exit_2_and_creates_nothing(
    workdir: Path, override: str, message: str, dry_run: bool, capsys, nothing_is_built
) -> None:
    code = main(["sweep", "imp.yaml", "--set", override, *(["--dry-run"] if dry_run else [])])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("reslab sweep: error: imp.yaml"), err
    assert "nothing was run" in err and "Traceback" not in out + err
    assert sorted(p.name for p in workdir.iterdir()) == ["imp.yaml"]  # no store, no queue, no runs folder


def test_every_problem_of_a_sweep_is_listed_at_once(workdir: Path, capsys, nothing_is_built) -> None:
    code = main(["sweep", "imp.yaml", "--set", "grid.widths=[100000]", "--set", "grid.blocks=[plain,residual]",
                 "--workers", "500", "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "3 problems; nothing was run" in err
    assert "plain-8-w100000" in err and "residual-8-w100000" in err and "workers for" in err


def test_the_dry_run_of_a_1202_layer_grid_lists_it_without_building_it(workdir: Path, capsys, nothing_is_built) -> None:
    """He et al.'s deepest net at four times its width: the estimates give its size, nothing is built."""
    code = main(["sweep", "imp.yaml", "--set", "grid.depths=[20,1202]", "--set", "grid.widths=[64]",
                 "--set", "grid.blocks=[plain,residual]", "--dry-run"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "residual-1202-w64-s0" in out and "plain-1202-w64-s0" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["imp.yaml"]


def test_an_impossible_training_is_refused_before_it_starts(workdir: Path, capsys, nothing_is_built) -> None:
    code = main(["train", "--depth", "8", "--width", "100000", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "residual-8-w100000 needs about" in err and "GiB" in err and "Traceback" not in err
    assert sorted(p.name for p in workdir.iterdir()) == ["imp.yaml"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--devices", "banana"], "devices 'banana' is not one Lightning accepts"),
        (["--strategy", "banana"], "unknown strategy 'banana'"),
        (["--data-option", "bogus=1"], "unknown option(s) bogus for dataset 'mnist1d'"),
    ],
)
def test_bad_training_options_are_one_line(workdir: Path, argv: list[str], message: str, capsys) -> None:
    code = main(["train", "--depth", "8", "--epochs", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in workdir.iterdir()) == ["imp.yaml"]


def test_adamw_keeps_one_more_copy_of_the_parameters_than_sgd() -> None:
    """AdamW's two moment estimates against SGD's one momentum buffer: the memory check counts the difference."""
    from reslab.limits import net_estimate, training_bytes
    from reslab.models import NetSpec
    from reslab.train.config import DataConfig, TrainConfig

    spec, data = NetSpec("resnet", "residual", 20, 16), DataConfig()
    sgd, _ = training_bytes(spec, data, TrainConfig())
    adamw, split = training_bytes(spec, data, TrainConfig(optimizer="adamw"))
    assert adamw - sgd == 4 * net_estimate(spec, data).params and "AdamW moments" in split


def test_the_strategy_names_are_lightnings() -> None:
    """The config refuses a strategy without importing Lightning: its list must stay Lightning's."""
    from lightning.pytorch.strategies import StrategyRegistry

    from reslab.train.config import STRATEGIES

    assert set(STRATEGIES) == {"auto", *StrategyRegistry.available_strategies()}


@pytest.mark.parametrize("devices", [1, 2, -1, "auto", "2", "0,1", "1,", [0, 1]])
def test_the_devices_kept_are_ones_lightning_parses(devices: object) -> None:
    from lightning.fabric.utilities.device_parser import _check_data_type, _normalize_parse_gpu_string_input

    from reslab.train.config import TrainConfig

    value = TrainConfig(devices=devices).devices
    if value != "auto":  # Lightning's own syntax checks take what the config keeps
        _check_data_type(value)
        _normalize_parse_gpu_string_input(value)


def test_a_gpu_machine_is_judged_by_its_fullest_gpu_without_a_cuda_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine the limit is the least free memory over the GPUs, read through NVML (no CUDA context in a
    coordinator that never trains), else each GPU's total memory."""
    import sys
    import types

    import torch

    from reslab import devices, limits
    from reslab.models.spec import NetSpec
    from reslab.train.config import DataConfig, TrainConfig

    gib = 1024**3
    free = {0: 8 * gib, 1: 3 * gib}
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda i: types.SimpleNamespace(free=free[i]),
    )  # fmt: skip
    monkeypatch.setattr(devices, "nvidia_driver", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: pytest.fail("a CUDA context was created"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert limits.training_device("auto") == limits.Device("cuda", 3 * gib, 2)
    assert limits.training_device("cpu").kind == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")  # NVML's numbering is not the visible one: totals instead
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=80 * gib))
    assert limits.training_device("cuda") == limits.Device("cuda", 80 * gib, 2)
    wide = NetSpec("resnet", "residual", 8, 100000)
    cifar = DataConfig(name="cifar10")
    too_big = limits.memory_problem("grid cell x", wide, cifar, TrainConfig(), limits.training_device("cuda"))
    assert too_big is not None and "the GPU has 80.0 GiB free" in too_big
