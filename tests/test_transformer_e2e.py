"""A real (tiny) transformer sweep, end to end: every recipe (no shortcut, post-norm, pre-norm, ReZero, DeepNorm)
at two depths with both inits, a warm-up arm for the post-norm nets, trained with AdamW on text; the runs carry bits
per character in MLflow, and the report judges and draws them in bits per character."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import sweep_with_report

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "tinytransformer",
    "dataset": {"name": "text", "options": {"seq_len": 16, "steps_per_epoch": 6}},
    "grid": {"family": "transformer", "blocks": ["plain", "residual", "preact", "rezero"],
             "remedies": ["none", "deepnorm"], "inits": ["default", "gpt2"], "depths": [1, 3], "widths": [16],
             "heads": 2, "context": 16, "seeds": [0]},
    "arms": [{"grid": {"blocks": ["residual"], "inits": ["default"]}, "train": {"warmup_epochs": 1}}],
    "train": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0,
              "warmup_epochs": 0},
    "tracking": {"system_metrics": False},
    "sweep": {"workers": 2},
}  # fmt: skip
#: 4 blocks x 2 inits, DeepNorm (its own init), the warm-up arm's post-norm and DeepNorm nets: at two depths each.
CELLS = (4 * 2 + 1 + 2) * 2


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("transformer")
    sweep_with_report(workdir, CONFIG)
    return workdir


def test_every_recipe_ran_and_logged_bits_per_character(swept: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{swept / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tinytransformer")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("reslab.role") != "sweep"]
    assert len(runs) == CELLS and all(r.info.status == "FINISHED" for r in runs)
    assert all(0 < r.data.metrics["train_bpc"] < 8 for r in runs)
    by_name = {r.info.run_name: r for r in runs}
    warm = by_name["transformer-residual-3-w16-init-default-warmup_epochs1-s0"]
    assert warm.data.params["train.warmup_epochs"] == "1" and warm.data.tags["reslab.arm"] == "-warmup_epochs1"
    deepnorm = by_name["transformer-deepnorm-3-w16-s0"]
    assert (deepnorm.data.tags["block"], deepnorm.data.tags["init"], deepnorm.data.tags["branch_scale"]) == (
        "residual", "deepnorm", "deepnorm")  # fmt: skip
    rezero = by_name["transformer-rezero-1-w16-init-gpt2-s0"]
    assert rezero.data.tags["norm"] == "none" and rezero.data.params["data.vocab_size"] == "103"


def test_the_report_judges_in_bits_per_character(swept: Path) -> None:
    import reslab

    markdown = (swept / "reports" / "tinytransformer" / "report.md").read_text()
    assert "bits training loss" in markdown and "Every net, shallowest to deepest:" in markdown
    assert "## Final loss vs depth" in markdown and "Remedies leaderboard" not in markdown
    assert r"residual-warmup\_epochs1-1 " in markdown  # the arm is a net of its own in the verdict
    sweep = reslab.load_sweep("tinytransformer", tracking_uri=f"sqlite:///{swept / 'mlflow.db'}")
    assert len(sweep.cells) == CELLS and sweep.cells["train_bpc"].notna().all()
    assert {"residual-warmup_epochs1", "deepnorm", "plain", "rezero-init-gpt2"} <= set(sweep.cells["variant"])
    probe = sweep.telemetry[sweep.telemetry["kind"] == "probe_wgrad"]  # Xiong et al.'s gradient, at initialisation
    gated = probe["block"] == "rezero"
    assert (probe[~gated]["value"] > 0).all() and (probe[gated]["value"] == 0).all()  # a gate at 0 passes none
