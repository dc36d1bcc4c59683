"""The learning-rate transfer report on made-up sweeps whose answer is known: the best lr per depth from a quadratic
in log2(lr), the slope of log2(best lr) against log2(depth) with its interval, the penalty of reusing the
shallowest depth's rate, and diverged cells drawn, not dropped; the depth coordinate check beside it."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from reslab.report.coordinate import coordinate_figure, coordinate_points, coordinate_sentence
from reslab.report.transfer import analyse, best_log2_lr, has_transfer, transfer_figure, transfer_sentence

LRS = [2.0**k for k in range(-8, -1)]  # 7 rates spanning 2^6
DEPTHS = [4, 8, 16, 32]


def sweep(moves: dict[str, float], seeds: int = 3, diverged: dict[str, int] | None = None) -> pd.DataFrame:
    """Cells whose loss is a parabola in log2(lr) with its minimum at -5 - slope·log2(depth / 4), plus seed noise;
    `diverged[panel]` makes every lr of that depth diverge."""
    rng = np.random.default_rng(0)
    rows = []
    for param, slope in moves.items():
        for depth in DEPTHS:
            centre = -5.0 + slope * np.log2(depth / 4)
            for lr in LRS:
                for seed in range(seeds):
                    loss = 0.5 + 0.05 * (np.log2(lr) - centre) ** 2 + rng.normal(0, 0.002)
                    gone = (diverged or {}).get(param) == depth
                    rows.append({"status": "FINISHED", "parametrization": param, "branch_layers": "none",
                                 "depth": depth, "lr": lr, "seed": seed, "train_loss": np.nan if gone else loss,
                                 "diverged": "training loss became nan" if gone else ""})  # fmt: skip
    return pd.DataFrame(rows)


def test_a_rate_that_never_moves_has_a_zero_width_interval_and_an_edge_is_said() -> None:
    cells = sweep({"sp": 0.0}, seeds=1)
    cells["train_loss"] = 1.0 - 0.01 * np.log2(cells["lr"])  # always best at the grid's highest rate
    (sp,) = analyse(cells)
    assert sp.slope == pytest.approx(0.0) and sp.ci == pytest.approx((0.0, 0.0)) and sp.at_edge == tuple(DEPTHS)
    assert "at the edge of the grid at depth 4, 8, 16, 32" in transfer_sentence([sp])


def test_the_vertex_of_the_quadratic_is_the_best_rate() -> None:
    x = np.arange(-4.0, 3.0)
    assert best_log2_lr(x, (x - 1.3) ** 2) == pytest.approx(1.3)
    assert best_log2_lr(x, (x + 9.0) ** 2) == pytest.approx(-4.0)  # kept inside the grid
    assert best_log2_lr(x, np.full(len(x), np.nan)) is None


def test_a_moving_rate_has_a_slope_and_a_penalty_and_a_fixed_one_neither() -> None:
    cells = sweep({"sp": -1.0, "depth_mup": 0.0})
    assert has_transfer(cells)
    sp, mup = analyse(cells)
    assert (sp.panel, mup.panel) == ("sp", "depth_mup")
    assert sp.slope == pytest.approx(-1.0, abs=0.05) and sp.ci[0] < -0.9 and sp.ci[1] > -1.1 and sp.ci[1] < -0.8
    assert mup.slope == pytest.approx(0.0, abs=0.05) and mup.ci[0] <= 0.0 <= mup.ci[1]
    assert sp.grid_steps == pytest.approx(3.0, abs=0.2) and mup.grid_steps < 1.0
    assert sp.penalty == pytest.approx(0.05 * 9, rel=0.1) and mup.penalty < 0.01  # 3 steps off: 0.05·3²
    sentence = transfer_sentence([sp, mup])
    assert "sp: the best learning rate moved" in sentence and "depth_mup: the best learning rate held" in sentence


def test_a_depth_where_every_rate_diverged_is_named_and_drawn() -> None:
    cells = sweep({"sp": -1.0}, seeds=2, diverged={"sp": 32})
    (sp,) = analyse(cells)
    assert sp.diverged == (32,) and sorted(sp.best) == [4, 8, 16]
    assert sp.slope == pytest.approx(-1.0, abs=0.1) and sp.ci is not None  # 2 seeds: the fit's interval
    assert "every learning rate diverged at depth 32" in transfer_sentence([sp])
    fig = transfer_figure(cells, [sp])
    (ax,) = fig.axes
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == len(LRS)  # the x marks, at the top
    assert "slope -1.0" in ax.get_title()


def telemetry_of(cells: pd.DataFrame, growth: dict[str, float], step: int = 10) -> pd.DataFrame:
    """Block-output RMS rows of each cell: at step 0, (depth / 4)^growth[panel] at the last block; at `step`, twice
    that times lr / 2^-5; the blocks before the last always 1."""
    rows = []
    for _, cell in cells.iterrows():
        last = cell["depth"] // 2 - 1
        init = (cell["depth"] / 4) ** growth[cell["parametrization"]]
        for at, value in ((0, init), (step, 2 * init * cell["lr"] / 2.0**-5), (2 * step, 99.0)):
            rows += [{"run_id": cell["run_id"], "kind": "act", "index": i, "step": at,
                      "value": value if i == last else 1.0} for i in range(last + 1)]  # fmt: skip
        rows.append({"run_id": cell["run_id"], "kind": "grad_out", "index": last, "step": 0, "value": 5.0})
    return pd.DataFrame(rows)


def test_the_coordinate_check_compares_the_last_block_across_depths() -> None:
    cells = sweep({"sp": -1.0, "depth_mup": 0.0})
    cells["run_id"] = [f"r{i}" for i in range(len(cells))]
    pts = coordinate_points(telemetry_of(cells, {"sp": 0.5, "depth_mup": 0.0}), cells)
    assert sorted(pts["step"].unique()) == [0, 10]  # initialisation and the first probed step after it
    assert len(pts) == 2 * len(cells)  # the last block only
    sentence = coordinate_sentence(pts, analyse(cells))
    # depth 32 over depth 4: sqrt(8) under sp, 1 under depth-muP, at init and after 10 steps at the tuned rate
    assert "depth 32 over depth 4" in sentence
    assert "sp x2.83 at initialisation, x2.83 after 10 steps at lr 0.0312" in sentence
    assert "depth_mup x1.00 at initialisation, x1.00 after 10 steps at lr 0.0312" in sentence
    fig = coordinate_figure(pts, analyse(cells))
    sp_ax = fig.axes[0]
    assert len(sp_ax.get_lines()) == len(LRS) + 1  # a line per rate after 10 steps, one at initialisation
    assert coordinate_points(cells.iloc[0:0], cells).empty and coordinate_figure(pd.DataFrame(), []) is None


def test_the_report_shows_the_transfer_figure_and_sentence(tmp_path) -> None:
    from reslab.models import NetSpec
    from reslab.models.spec import spec_values
    from reslab.report.collect import FINAL_KEYS, SweepData
    from reslab.report.render import write_report

    rows = []
    for i, r in sweep({"sp": -1.0, "depth_mup": 0.0}, seeds=2).iterrows():
        spec = NetSpec("mlp", "preact", int(r["depth"]), 8, norm="none", parametrization=r["parametrization"])
        rows.append({**dict.fromkeys(FINAL_KEYS, 0.1), **r.to_dict(), **spec_values(spec), "run_id": f"r{i}",
                     "cell": f"c{i}", "name": f"n{i}", "variant": "preact", "params": 100, "macs": 100,
                     "train_images_per_s": None, "epoch_time_s": 1.0, "failure": "", "attempts": 1})  # fmt: skip
    cells = pd.DataFrame(rows)
    data = SweepData(name="transfer", uri="sqlite:///none.db", experiment="transfer", parent={},
                     config={"grid": {"lr": LRS}}, runs=cells, cells=cells, epochs=pd.DataFrame(),
                     telemetry=pd.DataFrame())  # fmt: skip
    paths = write_report(data, tmp_path / "report", log_to_mlflow=False)
    assert "transfer" in paths.figures
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Learning-rate transfer." in page and "sp: the best learning rate moved" in page
    assert "the best learning rate held" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_a_tiny_real_sweep_reports_the_transfer(tmp_path) -> None:
    """A real sweep of a few seconds (two parametrizations, three depths, three rates): its report has the figure
    and, for each panel, the slope with its interval and the penalty."""
    from tests.helpers import sweep_with_report

    config = {
        "name": "tinytransfer",
        "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 256, "test_size": 64}},
        "grid": {"family": "mlp", "blocks": ["preact"], "norms": ["none"], "widths": [8], "depths": [4, 6, 8],
                 "parametrizations": ["sp", "depth_mup"], "lr": [0.003, 0.03, 0.3], "seeds": [0]},
        "train": {"optimizer": "adamw", "epochs": 2, "batch_size": 64, "warmup_epochs": 0, "telemetry_every": 2},
        "tracking": {"system_metrics": False},
        "sweep": {"workers": 1},
    }  # fmt: skip
    sweep_with_report(tmp_path, config)
    report = tmp_path / "reports" / "tinytransfer"
    assert (report / "figures" / "transfer.png").is_file()
    assert (report / "figures" / "coordinate_check.png").is_file()
    page = (report / "index.html").read_text()
    found = re.search(r"Coordinate check \(the residual stream&#x27;s RMS at the last block, depth 8 over depth 4\): "
                      r"sp x[0-9.]+ at initialisation, x[0-9.]+ after 2 steps at lr [0-9.]+; depth_mup x", page)
    assert found, page[page.find("Coordinate check"):][:400]
    for panel in ("sp", "depth_mup"):
        found = re.search(rf"{panel}: the best learning rate (held|moved) \([0-9.]+ grid steps over depths 4-8\), "
                          rf"slope of log2\(best lr\) vs log2\(depth\) [+-][0-9.]+ \(95 % CI [+-][0-9.]+ to "
                          rf"[+-][0-9.]+\); reusing depth 4&#x27;s rate at depth 8 costs [0-9.]+ in loss", page)
        assert found, page[page.find("Learning-rate transfer"):][:800]
