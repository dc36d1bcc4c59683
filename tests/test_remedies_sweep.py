"""Remedies and learning rates as grid axes, their run names and errors, and the leaderboard computed from cells."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reslab.report.leaderboard import best_lr, is_remedy_sweep, leaderboard
from reslab.sweep.config import ConfigError, load_config
from reslab.sweep.grid import expand
from reslab.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "t", "dataset": {"name": "mnist1d"}, "grid": {"depths": [8, 20]}}


def test_the_remedies_config_is_every_remedy_and_both_norms_at_three_rates() -> None:
    config = load_config(ROOT / "configs" / "remedies.yaml")
    cells = expand(config.grid)
    # per depth and rate: plain/residual x batch/none, fixup, skipinit, scaled x batch/none, tat
    assert len(cells) == 9 * 3 * 3
    labels = {(c.remedy, c.block, c.norm) for c in cells}
    assert labels == {
        (None, "plain", "batch"), (None, "plain", "none"), (None, "residual", "batch"), (None, "residual", "none"),
        ("fixup", "residual", "none"), ("skipinit", "rezero", "none"), ("scaled", "residual", "batch"),
        ("scaled", "residual", "none"), ("tat", "plain", "none"),
    }  # fmt: skip
    assert {c.lr for c in cells} == {0.1, 0.02, 0.005}
    assert len({c.name for c in cells}) == len(cells) and len({c.key for c in cells}) == len(cells)
    names = {c.name for c in cells}
    assert {"fixup-110-w8-lr0.02-s0", "plain-56-w8-normnone-lr0.1-s0", "scaled-20-w8-normbatch-lr0.005-s0"} <= names
    tat = next(c for c in cells if c.remedy == "tat")
    assert tat.spec().init == "delta_orthogonal" and tat.spec().activation == "tat"


def test_cells_of_grids_without_the_new_axes_keep_their_keys() -> None:
    cells = expand(load_config(GOOD).grid)
    assert [c.key for c in cells][:2] == ["resnet-plain-8-w16-A-batch-s0", "resnet-plain-20-w16-A-batch-s0"]
    assert cells[0].name == "plain-8-w16-s0"


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_run_names_are_unique_in_every_shipped_sweep(config: str) -> None:
    cells = load_config(ROOT / "configs" / config).cells()  # the grid's and every arm's
    assert len({c.name for c in cells}) == len(cells) == len({c.key for c in cells})


def test_a_cells_recipe_takes_its_seed_and_learning_rate() -> None:
    cells = expand(load_config({**GOOD, "grid": {"depths": [8], "lr": [0.3, 0.01], "seeds": [4]}}).grid)
    recipes = [c.recipe(TrainConfig(lr=0.1)) for c in cells]
    assert sorted({(r.lr, r.seed) for r in recipes}) == [(0.01, 4), (0.3, 4)]
    plain = expand(load_config(GOOD).grid)[0]
    assert plain.recipe(TrainConfig(lr=0.1)).lr == 0.1


@pytest.mark.parametrize(
    ("grid", "tune", "message"),
    [
        ({"depths": [8], "lr": [0.1]}, {"trials_per_cell": 2}, "grid.lr and tune both choose the learning rate"),
        ({"depths": [8], "lr": [0.1, 0.1]}, None, "learning rates repeat"),
        ({"depths": [8], "lr": [0, 0.1]}, None, "learning rates must be positive"),
        ({"depths": [8], "remedies": ["bogus"]}, None, "'bogus' is not valid"),
        ({"family": "convnet", "depths": [7], "remedies": ["fixup"]}, None,
         "remedy 'fixup' applies to the families resnet, mlp, not 'convnet'"),
    ],
)  # fmt: skip
def test_bad_remedy_grids_are_one_line_each(grid: dict, tune: dict | None, message: str) -> None:
    raw = {**GOOD, "grid": grid, **({"tune": tune} if tune else {})}
    with pytest.raises(ConfigError, match=message) as err:
        load_config(raw)
    assert len(err.value.problems) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--remedy", "fixup", "--norm", "batch"], "remedy fixup .* sets norm none, but norm batch"),
        (["summary", "--remedy", "tat", "--block", "residual"], "sets block plain, but block residual"),
        (["summary", "--family", "convnet", "--remedy", "skipinit"], "applies to the families resnet, mlp"),
        (["summary", "--activation", "tat"], "activation tat .* needs block plain and norm none"),
        (["train", "--remedy", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_invalid_combinations_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "reslab.cli", *args, "--no-tracking"] if args[0] == "train" else
                          [sys.executable, "-m", "reslab.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing recorded


# -- the leaderboard ----------------------------------------------------------------------------------------------


def cells(rows: list[tuple[str, int, float, int, float]]) -> pd.DataFrame:
    """(variant, depth, lr, seed, train_error) -> the columns `collect` gives the report."""
    return pd.DataFrame([{"variant": v, "block": v.split("-")[0], "depth": d, "width": 8, "lr": lr, "seed": s,
                          "train_error": e, "test_error": e + 0.02, "status": "FINISHED", "diverged": "",
                          "run_id": f"{v}-{d}-{lr}-{s}"} for v, d, lr, s, e in rows])  # fmt: skip


def test_best_lr_is_the_lowest_mean_training_error_per_net_and_depth() -> None:
    df = cells([("tat", 110, 0.1, 0, 0.9), ("tat", 110, 0.02, 0, 0.05), ("tat", 110, 0.02, 1, 0.07),
                ("tat", 110, 0.1, 1, 0.9), ("tat", 20, 0.1, 0, 0.01), ("tat", 20, 0.02, 0, 0.02)])  # fmt: skip
    best = best_lr(df)
    assert sorted(zip(best["depth"], best["lr"], best["seed"], strict=True)) == [(20, 0.1, 0), (110, 0.02, 0),
                                                                                 (110, 0.02, 1)]  # fmt: skip


def test_leaderboard_verdicts_and_agreement_with_the_papers() -> None:
    rows = [("residual", 20, 0.1, 0, 0.0), ("residual", 110, 0.1, 0, 0.01), ("residual", 110, 0.02, 0, 0.03),
            ("plain", 20, 0.1, 0, 0.02), ("plain", 110, 0.1, 0, 0.7), ("plain", 110, 0.02, 0, 0.6),
            ("fixup", 20, 0.1, 0, 0.0), ("fixup", 110, 0.1, 0, 0.04),
            ("tat", 20, 0.02, 0, 0.01), ("tat", 110, 0.1, 0, 0.9), ("tat", 110, 0.02, 0, 0.30)]  # fmt: skip
    board = leaderboard(cells(rows), recipe_lr=0.1)
    assert board.deepest == 110 and board.recipe_lr == 0.1
    t = board.table.set_index(["remedy", "depth"])
    assert t.loc[("tat", 110), "best lr"] == "0.02"
    assert t.loc[("tat", 110), "train @ lr 0.1"] == "90.0 %" and t.loc[("tat", 110), "train @ best"] == "30.0 %"
    r = board.remedies.set_index("remedy")
    assert r.loc["fixup", "verdict"].startswith("trains at depth 110 (4.0 % at lr 0.1; +3.0 points vs residual)")
    assert r.loc["plain", "verdict"].startswith("does not train at depth 110")
    assert r.loc["plain", "agreement"] == "agrees"  # He et al.: plain nets degrade
    assert r.loc["fixup", "agreement"] == "agrees"
    assert r.loc["tat", "agreement"].startswith("seed 0 alone disagrees: run a second seed")
    assert r.loc["plain", "change 20 → 110"] == "+58.0 points"
    assert list(board.remedies["remedy"])[:2] == ["plain", "residual"]


def test_a_disagreement_is_stated_when_two_seeds_agree_and_not_when_they_differ() -> None:
    base = [("residual", 110, 0.1, s, 0.01) for s in (0, 1)]
    both = leaderboard(cells([*base, ("tat", 110, 0.1, 0, 0.5), ("tat", 110, 0.1, 1, 0.4)]), 0.1)
    assert both.remedies.set_index("remedy").loc["tat", "agreement"] == (
        "disagrees with Zhang et al. 2022: does not train at depth 110 with each of 2 seeds"
    )
    split = leaderboard(cells([*base, ("tat", 110, 0.1, 0, 0.5), ("tat", 110, 0.1, 1, 0.02)]), 0.1)
    verdict = split.remedies.set_index("remedy").loc["tat"]
    assert verdict["agreement"] == "seeds disagree with each other: no conclusion"


def test_which_sweeps_get_a_leaderboard() -> None:
    assert is_remedy_sweep({"grid": {"remedies": ["none", "fixup"]}})
    assert is_remedy_sweep({"grid": {"lr": [0.1, 0.01]}})
    assert not is_remedy_sweep({"grid": {"remedies": ["none"]}}) and not is_remedy_sweep({})


@pytest.mark.parametrize("remedy", ["fixup", "skipinit", "scaled", "tat"])
def test_summary_takes_a_remedy(remedy: str) -> None:
    from reslab.models import NetSpec
    from reslab.models.estimate import estimate

    proc = subprocess.run([sys.executable, "-m", "reslab.cli", "summary", "--remedy", remedy, "--depth", "20",
                           "--width", "8", "--input", "1x40", "--json"], capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    summary = json.loads(proc.stdout)
    spec = NetSpec("resnet", depth=20, width=8, remedy=remedy)
    assert summary["params"] == estimate(spec, (1, 40), 10).params
    kinds = {layer["type"] for layer in summary["layers"]}
    assert ("ScalarBias" in kinds) == (remedy == "fixup") and ("TailoredLeakyReLU" in kinds) == (remedy == "tat")
