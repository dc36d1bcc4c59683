"""A real (tiny) remedies sweep with a learning-rate axis, end to end: the runs in MLflow carry their remedy and
rate, the report has the leaderboard with a verdict per remedy, and `reslab.load_sweep` gives a notebook the same
cells grouped the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import sweep_with_report

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "tinyremedies",
    "dataset": {"name": "synthetic", "options": {"shape": [1, 16], "train_size": 256, "test_size": 64}},
    "grid": {"family": "resnet", "remedies": ["none", "fixup", "tat"], "blocks": ["plain", "residual"],
             "depths": [8, 14], "widths": [4], "lr": [0.1, 0.02], "seeds": [0]},
    "train": {"epochs": 2, "batch_size": 64, "warmup_epochs": 0.5, "clip_grad_norm": 5.0},
    "tracking": {"system_metrics": False},
    "sweep": {"workers": 2},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("remedies")
    sweep_with_report(workdir, CONFIG)
    return workdir


def test_every_run_carries_its_remedy_and_learning_rate(swept: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{swept / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinyremedies")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("reslab.role") != "sweep"]
    assert len(runs) == 4 * 2 * 2 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.info.run_name for r in runs}) == len(runs)
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert f"-lr{float(params['train.lr']):g}-" in run.info.run_name
        if tags["remedy"] == "tat":
            assert (tags["block"], tags["norm"], tags["init"], tags["activation"]) == (
                "plain", "none", "delta_orthogonal", "tat")  # fmt: skip
            assert params["net.remedy"] == "tat"
        if tags["remedy"] == "fixup":
            assert (tags["block"], tags["norm"], tags["init"]) == ("residual", "none", "fixup")


def test_the_report_has_the_leaderboard_and_a_verdict_per_remedy(swept: Path) -> None:
    markdown = (swept / "reports" / "tinyremedies" / "report.md").read_text()
    assert "## Remedies leaderboard" in markdown and "### Per remedy at depth 14" in markdown
    board = markdown.split("## Remedies leaderboard")[1].split("## Training")[0]
    header = next(line for line in board.splitlines() if line.startswith("| remedy | depth"))
    assert header == ("| remedy | depth | best lr | train @ lr 0.1 | test @ lr 0.1 | train @ best | test @ best | "
                      "seeds |")  # fmt: skip
    for remedy in ("plain", "residual", "fixup", "tat"):
        rows = [line for line in board.splitlines() if line.startswith(f"| {remedy} | ")]
        assert len(rows) == 3, (remedy, rows)  # two depths, and the remedy's verdict
        assert re.search(r"\| (trains|does not train) at depth 14 \(", rows[-1]), rows[-1]
    assert "(Zhang et al. 2019)" in board and "(He et al. 2015)" in board
    html = (swept / "reports" / "tinyremedies" / "index.html").read_text()
    assert "id='leaderboard'" in html


def test_load_sweep_groups_cells_as_the_report_does(swept: Path) -> None:
    import reslab
    from reslab.report.render import at_best_lr

    sweep = reslab.load_sweep("tinyremedies", tracking_uri=f"sqlite:///{swept / 'mlflow.db'}")
    assert set(sweep.cells["variant"]) == {"plain", "residual", "fixup", "tat"}
    assert set(sweep.cells["lr"]) == {0.1, 0.02}
    best = at_best_lr(sweep)
    assert len(best.cells) == 4 * 2  # one rate per net and depth
    assert set(best.epochs["run_id"]) == set(best.cells["run_id"])
