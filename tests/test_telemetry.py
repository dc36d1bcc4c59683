"""Gradient telemetry at any depth: a few summary series in MLflow, every per-block value in `telemetry.csv`,
written however the run ends; the report reads the artifact, and old runs' metric histories still."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from reslab import tracking
from reslab.models import NetSpec
from reslab.report.collect import CELL_COLUMNS, _telemetry, parse_telemetry_key
from reslab.train.config import DataConfig, TrackingConfig, TrainConfig
from reslab.train.telemetry import summarize_step

SYNTH = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 256, "test_size": 64})
TINY = TrainConfig(epochs=3, batch_size=64, warmup_epochs=0.5, telemetry_every=2, threads=1)  # 4 steps an epoch


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _csv(store: tracking.Store, run_id: str) -> pd.DataFrame:
    text = store.read_artifact_text(run_id, "telemetry.csv")
    assert text is not None, "no telemetry.csv"
    return pd.read_csv(io.StringIO(text))


# -- the summaries ----------------------------------------------------------------------------------------------------


def test_summaries_of_a_residual_step() -> None:
    values = {"grad_branch/b000": 1.0, "grad_shortcut/b000": 3.0, "grad_out/b000": 4.0,
              "grad_branch/b001": 2.0, "grad_shortcut/b001": 6.0, "grad_out/b001": 7.0,
              "grad_branch/b002": 1.0, "grad_out/b002": 9.0,  # the last block's shortcut gradient was not recorded
              "grad_weight/000.stem.0": 0.5, "grad_weight/001.stages.0.0.branch.0": 0.7,
              "grad_weight/002.head": 2.5}  # fmt: skip
    assert summarize_step(values, 3) == {
        "telemetry/grad_out_first": 4.0, "telemetry/grad_out_middle": 7.0, "telemetry/grad_out_last": 9.0,
        "telemetry/shortcut_share_last": 0.75, "telemetry/grad_weight_first": 0.5, "telemetry/grad_weight_last": 2.5,
    }  # fmt: skip


def test_summaries_leave_out_what_a_net_does_not_have() -> None:
    plain = {"grad_branch/b000": 1.0, "grad_out/b000": 2.0, "grad_branch/b001": 1.0, "grad_out/b001": 3.0}
    assert set(summarize_step(plain, 2)) == {"telemetry/grad_out_first", "telemetry/grad_out_middle",
                                             "telemetry/grad_out_last"}  # fmt: skip
    rezero = {"grad_branch/b000": 0.0, "grad_shortcut/b000": 0.0, "gate/b000": 0.0, "gate/b001": 0.5}
    assert summarize_step(rezero, 2) == {"telemetry/gate_mean": 0.25}  # no gradient at all: no share of it


# -- runs: few keys at any depth, the artifact however the run ends ---------------------------------------------------


@pytest.mark.slow
def test_a_1202_layer_run_logs_few_metric_keys_and_every_value_in_the_artifact(uri: str) -> None:
    from reslab.train.run import run_one

    data = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 32, "test_size": 16})
    train = TrainConfig(max_steps=3, batch_size=16, warmup_epochs=0, telemetry_every=1, threads=1)  # 2 epochs
    track = TrackingConfig(uri=uri, experiment="deep", system_metrics_interval_s=0.1)
    result = run_one(NetSpec("resnet", "residual", 1202, 4), data, train, track)

    store = tracking.store(uri)
    run = store.get_run(result.run_id)
    keys = set(run.data.metrics)
    assert run.info.status == "FINISHED"
    assert len(keys) < 100, sorted(keys)
    assert any(k.startswith("system/") for k in keys)  # counted as real runs have them
    assert not any(parse_telemetry_key(k) for k in keys)
    assert {"telemetry/grad_out_first", "telemetry/grad_out_last", "telemetry/shortcut_share_last"} <= keys
    assert [s for s, _ in store.metric_history(result.run_id, "telemetry/grad_out_first")] == [0, 1, 2]
    tele = _csv(store, result.run_id)
    assert sorted(tele["step"].unique()) == [0, 1, 2]
    at_init = tele["key"].str.startswith("probe")  # the probe of the signal at initialisation, step 0 (test_probe*)
    assert set(tele[at_init]["step"]) == {0}
    per_step = tele[~at_init].groupby("step")["key"].nunique()
    # 600 blocks x (branch, shortcut and output gradients, the output's RMS) + 1202 weighted layers
    assert (per_step == 600 * 4 + 1202).all()
    frame = _telemetry(store, {"run_id": result.run_id, **dict.fromkeys(CELL_COLUMNS)})
    assert frame[frame["kind"] == "grad_out"]["index"].max() == 599


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("raised", "expected", "status"),
    [
        (_Boom("boom in step 5"), _Boom, "FAILED"),
        (KeyboardInterrupt(), KeyboardInterrupt, "KILLED"),
        ("stop", None, "KILLED"),  # StopRun, a tuner's pruning
    ],
)
def test_a_run_cut_short_mid_epoch_keeps_the_telemetry_of_every_step_before(
    raised: BaseException | str, expected: type[BaseException] | None, status: str, uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from reslab.train.module import ResLabModule
    from reslab.train.run import StopRun, run_one

    if raised == "stop":
        raised, expected = StopRun("pruned at step 5"), StopRun
    step = ResLabModule.training_step

    def failing_step(self, batch, batch_idx):
        if self.trainer.global_step == 5:  # in the second epoch, after the probe recorded step 4
            raise raised
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ResLabModule, "training_step", failing_step)
    with pytest.raises(expected):
        run_one(NetSpec("resnet", "residual", 8, 4), SYNTH, TINY, TrackingConfig(uri=uri, experiment="cut",
                system_metrics=False))  # fmt: skip
    store = tracking.store(uri)
    (run,) = store.search_runs("cut")
    assert run.info.status == status
    tele = _csv(store, run.info.run_id)
    assert sorted(tele["step"].unique()) == [0, 2, 4]  # step 4 was still pending when step 5 failed
    assert set(tele.loc[tele["step"] == 4, "key"]) >= {"grad_branch/b002", "grad_shortcut/b000", "grad_out/b001"}
    assert [s for s, _ in store.metric_history(run.info.run_id, "telemetry/grad_out_last")] == [0, 2]


def test_an_artifact_that_cannot_be_written_does_not_hide_the_failure(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reslab.train.module import ResLabModule
    from reslab.train.run import run_one

    step, log_text = ResLabModule.training_step, tracking.Store.log_text

    def failing_step(self, batch, batch_idx):
        if self.trainer.global_step == 5:
            raise _Boom("the real error")
        return step(self, batch, batch_idx)

    def refusing_log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        if artifact_file == "telemetry.csv":
            raise OSError("artifact store full")
        log_text(self, run_id, text, artifact_file)

    monkeypatch.setattr(ResLabModule, "training_step", failing_step)
    monkeypatch.setattr(tracking.Store, "log_text", refusing_log_text)
    with pytest.raises(_Boom, match="the real error"):
        run_one(NetSpec("resnet", "residual", 8, 4), SYNTH, TINY, TrackingConfig(uri=uri, experiment="full",
                system_metrics=False))  # fmt: skip
    (run,) = tracking.store(uri).search_runs("full")
    assert run.info.status == "FAILED" and "the real error" in run.data.tags["reslab.failure"]
    lines = [line for line in capsys.readouterr().err.splitlines() if "telemetry.csv" in line]
    assert len(lines) == 1 and "artifact store full" in lines[0]


# -- the report reads the artifact, or an old run's metrics ----------------------------------------------------------


def test_report_reads_the_artifact_and_falls_back_to_old_runs_metrics(uri: str) -> None:
    store = tracking.store(uri)
    store.prepare("old")
    cell = dict.fromkeys(CELL_COLUMNS)
    old = store.start_run("old", "old", {})  # recorded before telemetry.csv: every value a metric
    store.log_metrics(old, [("grad_out/b001", 2.0, 0), ("grad_out/b001", 1.5, 10), ("gate/b000", 0.1, 10),
                            ("grad_weight/003.head", 0.25, 0), ("train_error", 0.5, 1)])  # fmt: skip
    frame = _telemetry(store, {"run_id": old, **cell}).sort_values(["kind", "step"])
    assert list(zip(frame["kind"], frame["index"], frame["step"], frame["value"], strict=True)) == [
        ("gate", 0, 10, 0.1), ("grad_out", 1, 0, 2.0), ("grad_out", 1, 10, 1.5), ("grad_weight", 3, 0, 0.25)
    ]  # fmt: skip
    assert frame.loc[frame["kind"] == "grad_weight", "layer"].tolist() == ["head"]

    new = store.start_run("old", "new", {})
    store.log_metrics(new, [("telemetry/grad_out_first", 9.0, 0)])
    store.log_text(new, "step,key,value\n0,grad_out/b000,3.0\n0,grad_branch/b000,1.0\n", "telemetry.csv")
    frame = _telemetry(store, {"run_id": new, **cell})
    assert sorted(zip(frame["kind"], frame["value"], strict=True)) == [("grad_branch", 1.0), ("grad_out", 3.0)]
