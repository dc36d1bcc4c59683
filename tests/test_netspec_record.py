"""`NetSpec` is the one description of a network: each of its fields is a CLI option, a grid axis (unless it is one of
the fields that are set, not swept), an MLflow tag and param of every run, and a `load_sweep` column, all derived
from `dataclasses.fields(NetSpec)`, so a field added to the spec cannot be forgotten anywhere. And the cells of
every shipped config keep the keys and run names their stored sweeps were recorded under."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from reslab.cli import build_parser, main
from reslab.models.spec import NetSpec, spec_from_values, spec_values
from reslab.report.collect import CELL_COLUMNS
from reslab.sweep.config import GridConfig, load_config
from reslab.sweep.grid import expand
from reslab.train.config import DataConfig, TrainConfig
from reslab.train.run import flat_params, resolved_config, run_tags

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(NetSpec)]
#: The fields that are set, not swept (the README says so): one family per sweep, since families have different
#: depth rules, the convnet's structured stages, and the transformer's heads (width must stay a multiple) and context
#: (the data's window decides it).
NOT_SWEPT = {"family", "stages", "heads", "context"}
#: Two values of each swept field that make valid resnet cells at depth 8 with a residual block (the block and
#: remedy fix what they need).
TWO_VALUES = {"block": ["plain", "residual"], "depth": [8, 14], "width": [4, 8], "shortcut": ["A", "B"],
              "norm": ["batch", "none"], "init": ["kaiming", "delta_orthogonal"],
              "branch_scale": ["none", "inv_sqrt_branches"], "remedy": ["none", "skipinit"],
              "activation": ["relu", "tat"], "parametrization": ["sp", "depth_mup"], "base_depth": [8, 14],
              "branch_layers": [1, 2]}  # fmt: skip
#: Fields that need others set to take two values: TAT needs a plain net without norm, a depth parametrization
#: pre-activation blocks without batch norm, only a depth parametrization uses a base depth, and only the mlp has
#: a number of layers per branch.
GRIDS = {"activation": {"depths": [8], "blocks": ["plain"], "norms": ["none"]},
         "parametrization": {"depths": [20], "blocks": ["preact"], "norms": ["none"]},
         "base_depth": {"depths": [20], "blocks": ["preact"], "norms": ["none"], "parametrizations": ["depth_mup"]},
         "branch_layers": {"family": "mlp", "depths": [10], "blocks": ["residual"]}}


def options_of(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for action in sub._actions for s in action.option_strings}


@pytest.mark.parametrize("command", ["summary", "train", "probe"])
@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_an_option_of_the_commands_that_build_a_net(command: str, name: str) -> None:
    assert "--" + name.replace("_", "-") in options_of(command)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_a_grid_axis_unless_it_is_set_not_swept(name: str) -> None:
    if name in NOT_SWEPT:
        assert name in GridConfig.model_fields  # set once for the whole grid
        return
    plural = dataclasses.fields(NetSpec)[FIELDS.index(name)].metadata["plural"]
    assert plural in GridConfig.model_fields
    grid = {**GRIDS.get(name, {"depths": [8], "blocks": ["residual"]}), plural: TWO_VALUES[name]}
    cells = expand(load_config({"name": "axis", "grid": grid}).grid)
    assert len({getattr(c.net, name) for c in cells}) == 2
    assert len({c.key for c in cells}) == len({c.name for c in cells}) == len(cells)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_a_run_tag_a_run_param_and_a_load_sweep_column(name: str) -> None:
    spec = NetSpec("convnet")
    assert name in run_tags(spec, 0, "synthetic")
    assert f"net.{name}" in flat_params(resolved_config(spec, DataConfig(name="synthetic"), TrainConfig()))
    assert name in CELL_COLUMNS


@pytest.mark.parametrize("spec", [NetSpec(), NetSpec("convnet", stages=((8, True), (16, False)), depth=5),
                                  NetSpec("mlp", remedy="fixup"), NetSpec(remedy="tat", depth=56)])
def test_a_run_s_tags_give_back_its_spec(spec: NetSpec) -> None:
    """The report rebuilds each run's net from its tags (text), so the tags must describe it exactly."""
    assert spec_from_values({k: str(v) for k, v in spec_values(spec).items()}) == spec


#: sha256 of the (key, run name) list of every shipped config, as the code before the grid was derived from
#: NetSpec's fields wrote them: the queue and MLflow find a sweep's cells by these, so they never change.
GOLDEN = {"cifar10-he2015.yaml": "724122bfd1d3ff2f", "cifar10-preact.yaml": "c48c290d3bf56532",
          "default.yaml": "9167aa5204423a78", "mlp-depth.yaml": "4a1517b9bcdbdf62",
          "remedies.yaml": "e4a294770396eb82", "rezero.yaml": "91de9d097ceb6099",
          "widths.yaml": "a366aba54a34901b"}  # fmt: skip


@pytest.mark.parametrize("config", sorted(GOLDEN))
def test_the_cells_of_shipped_configs_keep_their_keys_and_names(config: str) -> None:
    cells = [[c.key, c.name] for c in expand(load_config(ROOT / "configs" / config).grid)]
    assert hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16] == GOLDEN[config]


def test_a_grid_over_inits_doubles_the_default_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    args = ["sweep", str(ROOT / "configs/default.yaml"), "--set", "grid.inits=[kaiming,delta_orthogonal]", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sweep default: 32 runs (" in out
    assert "residual-56-w8-init-delta_orthogonal-s1" in out and "plain-8-w8-init-kaiming-s0" in out


def test_a_grid_combination_no_family_builds_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", str(ROOT / "configs/default.yaml"), "--set", "grid.inits=[fixup]", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "init fixup (Zhang et al. 2019)" in err and "needs block residual and norm none" in err


@pytest.mark.slow
def test_a_real_sweep_over_init_records_every_field(tmp_path: Path) -> None:
    """The acceptance path: a short real sweep over `init` finishes, and `load_sweep` has an `init` column with
    both values; every run carries every field as a tag and as a `net.` param."""
    from reslab import load_sweep
    from tests.helpers import sweep_with_report

    config = {"name": "inits", "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 256,
                                                                             "test_size": 64}},
              "grid": {"blocks": ["residual"], "depths": [8], "widths": [4], "inits": ["kaiming", "delta_orthogonal"]},
              "train": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0, "probe": False},
              "tracking": {"system_metrics": False}, "sweep": {"workers": 2}}  # fmt: skip
    sweep_with_report(tmp_path, config)
    data = load_sweep("inits", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(data.cells["init"]) == ["delta_orthogonal", "kaiming"]
    assert set(data.cells["status"]) == {"FINISHED"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_id in data.cells["run_id"]:
        run = client.get_run(run_id)
        for name in FIELDS:
            assert name in run.data.tags and f"net.{name}" in run.data.params, name
