"""A sweep's arms: more cells than the grid's product, each trained with some recipe settings changed, kept apart
from the grid's own cells in keys, run names, recipes and report labels; a bad arm is one line before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reslab.sweep.config import ConfigError, SweepConfig, load_config

BASE = {
    "name": "arms",
    "dataset": {"name": "synthetic", "options": {"shape": [1, 16]}},
    "grid": {"family": "mlp", "blocks": ["plain", "residual", "preact"], "depths": [4, 10], "widths": [8],
             "seeds": [0, 1]},
    "train": {"epochs": 2, "warmup_epochs": 0},
}  # fmt: skip
WARMUP = {"grid": {"blocks": ["residual"]}, "train": {"warmup_epochs": 1}}


def config(*arms: dict) -> SweepConfig:
    return SweepConfig.model_validate({**BASE, "arms": list(arms)})


def test_an_arm_adds_its_cells_with_their_settings_in_key_name_and_recipe() -> None:
    plain = config()
    sweep = config(WARMUP)
    cells = sweep.cells()
    assert len(plain.cells()) == 12 and len(cells) == 12 + 4  # residual at two depths and two seeds, warmed up
    arm = [c for c in cells if c.train]
    assert {c.block for c in arm} == {"residual"} and all(c.train == (("warmup_epochs", 1),) for c in arm)
    assert {c.key for c in arm}.isdisjoint(c.key for c in plain.cells())
    assert {c.name for c in arm} == {"mlp-residual-4-w8-warmup_epochs1-s0", "mlp-residual-10-w8-warmup_epochs1-s0",
                                     "mlp-residual-4-w8-warmup_epochs1-s1", "mlp-residual-10-w8-warmup_epochs1-s1"}
    assert [c.key for c in plain.cells()] == [c.key for c in cells if not c.train]  # the grid's cells keep theirs
    recipe = arm[0].recipe(sweep.train)
    assert recipe.warmup_epochs == 1 and recipe.seed == arm[0].seed and recipe.epochs == 2
    assert next(c for c in cells if not c.train).recipe(sweep.train).warmup_epochs == 0


def test_an_arm_without_settings_adds_grid_cells_once() -> None:
    cells = config({"grid": {"blocks": ["residual", "preact"], "depths": [4, 16]}}).cells()
    assert len(cells) == 12 + 2 * 2  # residual and preact at depth 16; their depth-4 cells are the grid's already
    assert not any(c.train for c in cells) and len({c.key for c in cells}) == len(cells)


def test_two_arms_and_an_arm_of_its_own_depths() -> None:
    cells = config(WARMUP, {"grid": {"blocks": ["plain"], "depths": [20]}, "train": {"lr": 0.01, "epochs": 3}}).cells()
    own = [c for c in cells if dict(c.train).get("lr") == 0.01]
    assert {(c.block, c.depth) for c in own} == {("plain", 20)}
    assert own[0].name.endswith("-epochs3-lr0.01-s0") and own[0].recipe(config().train).lr == 0.01


@pytest.mark.parametrize(
    ("arm", "message"),
    [
        ({"train": {"seed": 3}}, r"arms\[0\]\.train\.seed: the grid's seeds choose it"),
        ({"train": {"warmup": 1}}, r"arms\[0\]\.train\.warmup: not a training setting; valid: epochs"),
        ({"train": {"warmup_epochs": -1}}, r"arms\[0\]\.warmup_epochs: Input should be greater than or equal to 0"),
        ({"grid": {"blocks": ["bogus"]}, "train": {"epochs": 1}}, r"arms\[0\]\.blocks\[0\]: 'bogus' is not valid"),
        ({"grid": {"family": "resnet"}, "train": {"epochs": 1}}, r"keeps the sweep's family"),
    ],
)
def test_a_bad_arm_is_one_line_naming_it(tmp_path: Path, arm: dict, message: str) -> None:
    path = tmp_path / "arms.yaml"
    path.write_text(yaml.safe_dump({**BASE, "arms": [arm]}))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert len(str(err.value).strip().splitlines()) <= 2  # the file, then its one problem


def test_an_lr_arm_cannot_share_a_grid_that_sweeps_lr() -> None:
    with pytest.raises(ValueError, match=r"arms\[0\]\.train\.lr: grid\.lr sweeps the learning rate"):
        SweepConfig.model_validate({**BASE, "grid": {**BASE["grid"], "lr": [0.1, 0.01]},
                                    "arms": [{"train": {"lr": 0.5}}]})  # fmt: skip
