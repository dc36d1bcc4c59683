"""Every run is probed at step 0: the per-block rows in its telemetry.csv, at most five `probe/` metrics in MLflow,
the same numbers `reslab probe` gives for the same net and seed, and a training that is bit for bit the one it would
have been without the probe. The probe setting is an execution setting: a sweep may be resumed with it changed."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from reslab import tracking
from reslab.models import NetSpec
from reslab.train.config import DataConfig, TrackingConfig, TrainConfig

SYNTH = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 256, "test_size": 64})
#: 4 steps an epoch, 2 epochs: the running statistics the test error is measured with still carry 0.9^8 of their
#: initial values, so a probe that moved them (or drew from the RNG the data order comes from) would show.
TINY = TrainConfig(epochs=2, batch_size=64, warmup_epochs=0.5, telemetry_every=2, threads=1)


def _results(metrics: dict[str, float]) -> dict[str, float]:
    """What a run computed, without how long it took."""
    return {k: v for k, v in metrics.items() if k not in ("epoch_time_s", "train_images_per_s")}


@pytest.mark.slow
def test_final_metrics_are_identical_with_and_without_the_probe(tmp_path: Path, monkeypatch) -> None:
    from reslab.probe.measure import probe_spec
    from reslab.train.run import run_one

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = NetSpec("resnet", "residual", 8, 4)
    track = TrackingConfig(uri=uri, experiment="probe", system_metrics=False)
    probed = run_one(spec, SYNTH, TINY, track)
    plain = run_one(spec, SYNTH, TINY.model_copy(update={"probe": False}))
    assert _results(probed.metrics) == _results(plain.metrics)  # exactly: every float of the last epoch
    assert [_results(e) for e in probed.history] == [_results(e) for e in plain.history]
    assert "train_error" in probed.metrics and "test_error" in probed.metrics
    assert [r for r in probed.telemetry if not r[0].startswith("probe")] == plain.telemetry

    store = tracking.store(uri)
    metrics = store.get_run(probed.run_id).data.metrics
    probe_keys = sorted(k for k in metrics if k.startswith("probe/"))
    assert 0 < len(probe_keys) <= 5, probe_keys
    table = pd.read_csv(io.StringIO(store.read_artifact_text(probed.run_id, "telemetry.csv")))
    at_init = table[table["key"].str.startswith("probe")]
    assert set(at_init["step"]) == {0}
    assert {k.split("/")[0] for k in at_init["key"]} == {"probe_net", "probe_act", "probe_grad_in", "probe_grad_out",
                                                          "probe_share", "probe_cmap", "probe_wgrad"}  # fmt: skip
    assert at_init["key"].str.startswith("probe_share/").sum() == 3  # one row per block

    # `reslab probe` builds the same net at the same initialisation and probes the same batch
    from reslab.data.registry import load_dataset

    again = probe_spec(spec, load_dataset(SYNTH.name, SYNTH.options), TINY.batch_size, TINY.seed)
    assert dict(zip(at_init["key"], at_init["value"], strict=True)) == pytest.approx(
        {k: v for k, v, _ in again.telemetry_rows()}, rel=1e-6, nan_ok=True)  # fmt: skip


def test_the_probe_is_an_execution_setting() -> None:
    from reslab.sweep.runner import recipe_changes

    recipe = {"train": TINY.model_dump()}
    assert recipe_changes(recipe, {"train": TINY.model_copy(update={"probe": False}).model_dump()}) == []
    older = {"train": {k: v for k, v in TINY.model_dump().items() if k != "probe"}}  # recorded before it existed
    assert recipe_changes(older, recipe) == []
