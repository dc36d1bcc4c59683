"""Training: the recipe, gradient telemetry, one run recorded in MLflow and read back, determinism, failures."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from reslab.cli import main
from reslab.models import Block, NetSpec, build_net
from reslab.train.config import DataConfig, TrackingConfig, TrainConfig
from reslab.train.schedule import lr_lambda
from reslab.train.telemetry import GradientProbe

SYNTH = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 256, "test_size": 64})
TINY = TrainConfig(epochs=2, batch_size=64, warmup_epochs=0.5, telemetry_every=2, threads=1)

# -- the recipe -------------------------------------------------------------------------------------------------------


def test_cosine_with_linear_warmup() -> None:
    f = lr_lambda(TrainConfig(epochs=10, warmup_epochs=2, warmup_start_factor=0.1), steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1)
    assert f(10) == pytest.approx(0.55)
    assert f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 79 / 80)))


def test_he2015_step_schedule_in_iterations() -> None:
    cfg = TrainConfig(max_steps=64_000, schedule="step", milestones=(32_000, 48_000), warmup_epochs=0)
    f = lr_lambda(cfg, steps_per_epoch=352)
    assert [f(0), f(31_999), f(32_000), f(47_999), f(48_000), f(63_999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    fractions = lr_lambda(TrainConfig(epochs=4, schedule="step", milestones=(0.5, 0.75), warmup_epochs=0), 25)
    assert (fractions(49), fractions(50), fractions(75)) == pytest.approx((1, 0.1, 0.01))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_no_warmup_means_the_first_step_is_at_the_peak_rate(optimizer: str) -> None:
    """`warmup_epochs=0` is no warm-up at all: not one step below the peak, whatever the warm-up's start factor."""
    from reslab.train.objective import build_optimizer

    constant = TrainConfig(epochs=3, warmup_epochs=0, warmup_start_factor=0.01, schedule="constant", lr=0.02,
                           optimizer=optimizer)  # fmt: skip
    assert [lr_lambda(constant, 10)(step) for step in range(30)] == [1.0] * 30
    cosine = lr_lambda(constant.model_copy(update={"schedule": "cosine"}), 10)
    assert cosine(0) == 1.0 and cosine(15) == pytest.approx(0.5)  # the decay starts at once: halfway at half
    opt = build_optimizer(torch.nn.Linear(2, 2), constant, "cpu")
    torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(constant, 10))
    assert opt.param_groups[0]["lr"] == 0.02  # what the first step uses


def test_a_sweep_recorded_before_the_optimiser_fields_resumes_as_the_same_recipe() -> None:
    """A recipe recorded before `optimizer`, `betas` and `eps` existed ran SGD: resuming it with the defaults is
    the same recipe, asking for AdamW is not."""
    from reslab.sweep.runner import recipe_changes

    recipe = {"train": TrainConfig().model_dump(mode="json")}
    older = {"train": {k: v for k, v in recipe["train"].items() if k not in ("optimizer", "betas", "eps")}}
    assert recipe_changes(older, recipe) == []
    adam = {"train": TrainConfig(optimizer="adamw").model_dump(mode="json")}
    assert recipe_changes(older, adam) == ["train.optimizer: 'sgd' -> 'adamw'"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": -1}, "lr"),
        ({"milestones": (0.75, 0.5)}, "milestones"),
        ({"epochs": 0}, "epochs"),
        ({"lr_max": 1}, "lr_max"),
    ],
)
def test_bad_recipe_is_refused_with_its_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        TrainConfig(**kwargs)
    assert field in str(exc.value)


def test_data_config_names_valid_datasets_and_options() -> None:
    with pytest.raises(ValidationError, match="valid: mnist1d"):
        DataConfig(name="imagenet")
    with pytest.raises(ValidationError, match="unknown option"):
        DataConfig(name="digits", options={"shape": [1]})


# -- gradient telemetry -----------------------------------------------------------------------------------------------


def _probe_once(spec: NetSpec) -> tuple[GradientProbe, torch.nn.Module]:
    torch.manual_seed(0)
    net = build_net(spec, (1, 32), 10)
    probe = GradientProbe(every=1)
    probe.blocks = [m for m in net.modules() if isinstance(m, Block)]
    probe.arm()
    net(torch.randn(8, 1, 32)).logsumexp(1).mean().backward()
    values = dict(probe._current)
    probe.disarm()
    probe._current = values
    return probe, net


def test_rezero_at_init_branch_gradient_is_zero_and_shortcut_carries_the_output_gradient() -> None:
    probe, _ = _probe_once(NetSpec("resnet", "rezero", 14, 8))
    assert len(probe.blocks) == 6
    identity = [i for i, b in enumerate(probe.blocks) if isinstance(b.shortcut, torch.nn.Identity)]
    assert identity == [0, 1, 3, 5]  # the others subsample and zero-pad (option A)
    for i in range(len(probe.blocks)):
        assert probe._current[f"grad_branch/b{i:03d}"].item() == 0.0
        shortcut, out = probe._current[f"grad_shortcut/b{i:03d}"], probe._current[f"grad_out/b{i:03d}"]
        if i in identity:
            torch.testing.assert_close(shortcut, out)
        else:
            assert 0 < shortcut.item() <= out.item()  # the padded channels' gradient does not reach the input
    assert all(b.tap is None for b in probe.blocks) and not probe._handles  # disarmed: no hooks left behind


def test_residual_blocks_get_both_gradients_and_plain_blocks_only_the_branch() -> None:
    probe, _ = _probe_once(NetSpec("resnet", "residual", 8, 8))
    assert all(probe._current[f"grad_branch/b{i:03d}"] > 0 for i in range(3))
    assert all(probe._current[f"grad_shortcut/b{i:03d}"] > 0 for i in range(3))
    probe, _ = _probe_once(NetSpec("resnet", "plain", 8, 8))
    assert not any(k.startswith("grad_shortcut") for k in probe._current)
    assert all(probe._current[f"grad_branch/b{i:03d}"] > 0 for i in range(3))



def test_each_block_output_rms_is_recorded_as_the_residual_stream() -> None:
    """`act/bNNN` is the root mean square of the block's output, computed here from a forward hook of our own."""
    torch.manual_seed(0)
    net = build_net(NetSpec("mlp", "preact", 10, 16, norm="none"), (1, 32), 10)
    blocks = [m for m in net.modules() if isinstance(m, Block)]
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, a, out: outputs.append(out.detach())) for b in blocks]
    probe = GradientProbe(every=1)
    probe.blocks = blocks
    probe.arm()
    net(torch.randn(8, 1, 32)).logsumexp(1).mean().backward()
    for h in handles:
        h.remove()
    assert len(outputs) == len(blocks) == 4
    for i, out in enumerate(outputs):
        assert probe._current[f"act/b{i:03d}"].item() == pytest.approx(out.pow(2).mean().sqrt().item(), rel=1e-5)
    probe.disarm()

# -- one run, end to end ----------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_run_is_recorded_in_mlflow_and_reads_back(store: str) -> None:
    from mlflow.tracking import MlflowClient

    from reslab.train.run import run_one

    spec = NetSpec("resnet", "rezero", 8, 4)
    data = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 256, "test_size": 64, "val_size": 64})
    train = TrainConfig(epochs=3, batch_size=32, warmup_epochs=0.5, telemetry_every=4, threads=1, seed=3)
    track = TrackingConfig(uri=store, experiment="e2e", system_metrics_interval_s=0.1)
    # MLflow's system-metrics thread publishes a sample only after it has opened its own client on the store and
    # read the run back (about a second on sqlite): an epoch lasting 0.6 s more gives it the time on any machine.
    result = run_one(spec, data, train, track, on_epoch=lambda epoch, metrics: time.sleep(0.6))

    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "rezero-8-w4-s3"
    tags = run.data.tags
    for key, value in {"family": "resnet", "block": "rezero", "depth": "8", "width": "4", "shortcut": "A",
                       "seed": "3", "dataset": "synthetic"}.items():  # fmt: skip
        assert tags[key] == value
    assert tags["reslab.git_commit"] and tags["reslab.device"].startswith("cpu")
    assert {"reslab.version.torch", "reslab.version.lightning", "reslab.version.mlflow"} <= set(tags)
    # how the step ran and the backend's numerics settings (on a GPU they decide whether a rerun agrees)
    assert tags["reslab.compile"] == "off" and tags["reslab.channels_last"] == "False"
    assert tags["reslab.backend.deterministic_algorithms"] == "True"  # the CPU default
    assert tags["reslab.backend.cudnn.benchmark"] == "False"
    assert {"reslab.backend.cudnn.allow_tf32", "reslab.backend.float32_matmul_precision"} <= set(tags)
    params = run.data.params
    assert params["net.depth"] == "8" and params["net.block"] == "rezero" and params["train.lr"] == "0.1"
    assert params["data.name"] == "synthetic" and params["data.val_size"] == "64"
    assert params["net.params"] == str(result.params)
    from reslab.train.run import flat_params, resolved_config

    resolved = flat_params(resolved_config(spec, data, train))  # every default too, dataset options included
    assert {"data.num_classes", "data.seed", "train.momentum", "train.schedule", "net.shortcut"} <= set(resolved)
    assert set(resolved) <= set(params)
    per_epoch = ["train_error", "train_loss", "val_error", "val_loss", "test_error", "test_loss", "lr",
                 "epoch_time_s", "train_images_per_s"]  # fmt: skip
    for key in per_epoch:
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3], key
        if key.endswith("error"):
            assert all(0 <= m.value <= 1 for m in history)
    assert run.data.metrics["train_error"] == pytest.approx(result.metrics["train_error"])
    keys = set(run.data.metrics)
    summaries = {k for k in keys if k.startswith("telemetry/")}
    assert summaries == {f"telemetry/{k}" for k in ("grad_out_first", "grad_out_middle", "grad_out_last",
                         "shortcut_share_last", "grad_weight_first", "grad_weight_last", "gate_mean")}  # fmt: skip
    assert not any(k.split("/")[0] in ("grad_branch", "grad_shortcut", "grad_out", "gate", "grad_weight", "act")
                   for k in keys)  # fmt: skip
    gate_mean = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "telemetry/gate_mean"))
    assert [step for step, _ in gate_mean] == [0, 4, 8, 12, 16, 20]  # 8 steps an epoch, 3 epochs, every 4
    assert any(k.startswith("system/cpu_utilization") for k in keys)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "model_summary.txt", "final_metrics.json", "telemetry.csv"} <= artifacts
    import pandas as pd

    tele = pd.read_csv(client.download_artifacts(result.run_id, "telemetry.csv", str(Path.cwd())))
    for key in ("grad_branch/b000", "grad_shortcut/b002", "grad_out/b001", "gate/b000", "grad_weight/000.stem.0",
                "act/b002"):
        assert sorted(tele.loc[tele["key"] == key, "step"]) == [0, 4, 8, 12, 16, 20], key
    gates = tele[tele["key"].str.startswith("gate/")].groupby("step")["value"].mean()
    assert [v for _, v in gate_mean] == pytest.approx(gates.tolist())
    last = max(int(k[len("grad_out/b") :]) for k in tele["key"] if k.startswith("grad_out/"))
    out_last = tele[tele["key"] == f"grad_out/b{last:03d}"].sort_values("step")["value"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "telemetry/grad_out_last"))
    assert [v for _, v in history] == pytest.approx(out_last.tolist())
    final = json.loads(client.download_artifacts(result.run_id, "final_metrics.json", str(Path.cwd())) and
                       Path("final_metrics.json").read_text())  # fmt: skip
    assert final["metrics"]["test_error"] == pytest.approx(result.metrics["test_error"])


@pytest.mark.slow
def test_same_command_twice_gives_the_same_final_metrics(tmp_path: Path) -> None:
    """The issue's determinism check, as a user would run it: the same `reslab train` command in two processes."""
    import subprocess

    cmd = [sys.executable, "-m", "reslab.cli", "train", "--dataset", "mnist1d", "--depth", "8", "--width", "4",
           "--epochs", "2", "--json", "--no-tracking"]  # fmt: skip
    outs = [json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path).stdout)
            for _ in range(2)]  # fmt: skip
    for key in ("train_error", "train_loss", "test_error", "test_loss"):
        assert outs[0][key] == pytest.approx(outs[1][key], abs=1e-6), key


def test_same_run_twice_gives_the_same_metrics() -> None:
    from reslab.train.run import run_one

    spec = NetSpec("resnet", "residual", 8, 4)
    a = run_one(spec, SYNTH, TINY, None)
    b = run_one(spec, SYNTH, TINY, None)
    for key in ("train_error", "train_loss", "test_error", "test_loss"):
        assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-6)
    assert len(a.history) == 2


def test_run_restores_the_thread_count() -> None:
    from reslab.train.run import run_one

    before = torch.get_num_threads()
    run_one(NetSpec("mlp", "residual", 4, 8), SYNTH, TINY.model_copy(update={"threads": before + 1}), None)
    assert torch.get_num_threads() == before


def test_max_steps_ending_mid_epoch_still_evaluates() -> None:
    """He et al. stop at 64k iterations, mid-epoch: the last epoch must still carry its test error."""
    from reslab.train.run import run_one

    steps_per_epoch = 256 // 64
    train = TINY.model_copy(update={"max_steps": 2 * steps_per_epoch + 1})
    result = run_one(NetSpec("mlp", "residual", 4, 8), SYNTH, train, None)
    assert len(result.history) == 3
    assert all("test_error" in epoch for epoch in result.history)
    assert result.to_json()["test_error"] is not None


def test_epoch_time_counts_training_batches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """epoch_time_s and train_images_per_s measure training; evaluation (here made slow on purpose) is not in them."""
    import time

    from reslab.train.module import ResLabModule
    from reslab.train.run import run_one

    evaluate = ResLabModule.validation_step

    def slow_evaluation(self, *args, **kwargs):
        time.sleep(0.25)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(ResLabModule, "validation_step", slow_evaluation)
    data = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 64, "test_size": 400})
    train = TINY.model_copy(update={"epochs": 1, "eval_batch_size": 100})  # 1 training step, 4 slow eval batches
    t0 = time.perf_counter()
    result = run_one(NetSpec("mlp", "residual", 4, 8), data, train, None)
    assert time.perf_counter() - t0 > 1.0
    assert result.metrics["epoch_time_s"] < 0.5
    assert result.metrics["train_images_per_s"] == pytest.approx(64 / result.metrics["epoch_time_s"])


def test_runs_and_the_overhead_benchmark_train_with_one_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lightning step the benchmarks time is the one sweeps run: both trainers come from `make_trainer`."""
    from reslab import perf
    from reslab.data.registry import load_dataset
    from reslab.train import trainer as trainer_module
    from reslab.train.run import run_one

    built = []
    make = trainer_module.make_trainer

    def recording(*args, **kwargs):
        built.append(make(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(trainer_module, "make_trainer", recording)
    spec = NetSpec("mlp", "residual", 4, 8)
    run_one(spec, SYNTH, TINY, None)
    perf.lightning_step_times(spec, load_dataset(SYNTH.name, SYNTH.options), TINY, steps=2, warmup=1)
    ran, timed = built
    for trainer in built:
        assert [type(c).__name__ for c in trainer.callbacks][:1] == ["GradientProbe"]
        assert trainer.logger is None  # no tracking asked for: run_one attaches none either
    assert type(ran.accelerator) is type(timed.accelerator) and type(ran.strategy) is type(timed.strategy)
    assert ran.precision == timed.precision and ran.num_sanity_val_steps == timed.num_sanity_val_steps == 0
    assert (ran.max_steps, ran.max_epochs, ran.limit_val_batches) == (-1, 2, 1.0)
    assert (timed.max_steps, timed.max_epochs, timed.limit_val_batches) == (3, -1, 0)


def test_lightning_does_not_end_the_run_before_reslab_does(store: str) -> None:
    """The run stays RUNNING until its final metrics are written: a crash in between must not look finished."""
    from reslab import tracking

    mlflow_store = tracking.store(store)
    mlflow_store.prepare("finalize")
    run_id = mlflow_store.start_run("finalize", "r", {})
    mlflow_store.lightning_logger(run_id).finalize("success")
    assert mlflow_store.get_run(run_id).info.status == "RUNNING"


def test_divergence_is_a_result_not_a_failure(store: str) -> None:
    """A loss that becomes NaN ends training early; the run is FINISHED, tagged with why, its epoch recorded."""
    from mlflow.tracking import MlflowClient

    from reslab.train.run import run_one

    result = run_one(NetSpec("mlp", "plain", 4, 8, norm="none"), SYNTH, TINY.model_copy(update={"lr": 1e12}),
                     TrackingConfig(uri=store, experiment="diverge", system_metrics=False))  # fmt: skip
    assert result.diverged.startswith("training loss became") and len(result.history) == 1
    (run,) = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("diverge").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["reslab.diverged"] == result.diverged


def test_an_interrupt_after_the_commit_still_finishes_the_run(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a sweep has committed a run's result, Ctrl-C before the run is marked FINISHED must not leave it
    KILLED: the queue holds its result, so it is the cell's one finished run."""
    from reslab import tracking
    from reslab.train.run import run_one

    statuses: list[str] = []
    real = tracking.Store.finish_run

    def finish_run(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        statuses.append(status)
        if len(statuses) == 1:
            raise KeyboardInterrupt  # Ctrl-C right between the commit and marking the run FINISHED
        real(self, run_id, status, reason)

    monkeypatch.setattr(tracking.Store, "finish_run", finish_run)
    committed: list[float] = []
    with pytest.raises(KeyboardInterrupt):
        run_one(NetSpec("mlp", "residual", 4, 8), SYNTH, TINY,
                TrackingConfig(uri=store, experiment="commit", system_metrics=False),
                commit=lambda result: committed.append(result.metrics["train_error"]))  # fmt: skip
    assert committed and statuses == ["FINISHED", "FINISHED"]
    (run,) = tracking.store(store).search_runs("commit")
    assert run.info.status == "FINISHED"


def test_train_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--dataset", "synthetic", "--depth", "8", "--width", "4", "--epochs", "1", "--threads", "1",
                 "--no-tracking", "--json"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"run_id", "train_error", "test_error", "train_loss", "params", "wall_s"} <= set(out)
    assert out["run_id"] is None and 0 <= out["train_error"] <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "lr: Input should be greater than 0"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--data-option", "size"], "expected KEY=VALUE"),
        (["--data-option", "size=3"], "unknown option(s) size for dataset 'mnist1d'"),
        (["--depth", "21"], "nearest valid depths: 20 or 26"),
        (["--dataset", "synthetic", "--data-option", "num_classes=1"], "num_classes must be at least 2"),
        (["--dataset", "synthetic", "--strategy", "warp-drive"], "warp-drive"),
        *([(["--device", "cuda"], "no CUDA device")] if not torch.cuda.is_available() else []),
    ],
)
def test_train_cli_bad_input(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(["train", "--no-tracking", *args]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("block", "depth", "bound"),
    [("plain", 20, ("<=", 0.03)), ("plain", 56, (">=", 0.20)), ("residual", 56, ("<=", 0.01))],
)
def test_degradation_on_mnist1d(block: str, depth: int, bound: tuple[str, float]) -> None:
    """He et al.'s effect on this CPU (issue acceptance): width 8, 20 epochs, the default recipe."""
    from reslab.train.run import run_one

    result = run_one(NetSpec("resnet", block, depth, 8), DataConfig(), TrainConfig(), None)
    op, value = bound
    error = result.metrics["train_error"]
    assert error <= value if op == "<=" else error >= value, f"{block}-{depth}: train_error {error:.4f}"


def test_gradient_clipping_is_a_recipe_setting_off_by_default() -> None:
    from reslab.train.trainer import make_trainer

    assert make_trainer(TrainConfig(), "cpu").gradient_clip_val is None  # the papers' recipes do not clip
    clipped = make_trainer(TrainConfig(clip_grad_norm=5.0), "cpu")
    assert (clipped.gradient_clip_val, clipped.gradient_clip_algorithm) == (5.0, "norm")
    with pytest.raises(ValueError, match="greater than 0"):
        TrainConfig(clip_grad_norm=0)


def test_a_run_flushes_subnormal_floats_on_the_cpu_and_restores_torch_s_default() -> None:
    """Subnormal floats cost x86 CPUs a slow path per operation (a collapsed deep net trained 6x slower); a run
    flushes them to zero while it trains and leaves the process as torch's default has it."""
    from reslab.models import NetSpec
    from reslab.train.config import DataConfig, TrainConfig
    from reslab.train.run import run_one

    def subnormal_survives() -> bool:
        return float(torch.tensor([1e-39]) * 1.5) != 0.0

    seen: list[bool] = []
    data = DataConfig(name="synthetic", options={"shape": [1, 8], "train_size": 64, "test_size": 16})
    train = TrainConfig(epochs=1, batch_size=32, warmup_epochs=0, probe=False, threads=1)
    assert subnormal_survives()
    run_one(NetSpec("mlp", "residual", 4, 8), data, train, None, on_epoch=lambda *_: seen.append(subnormal_survives()))
    assert seen == [False] and subnormal_survives()
