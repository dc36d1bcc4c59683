"""The training step's execution settings (`reslab.train.fast`): compilation off on the CPU and its fallback, the
memory format, no device read-back inside a step, and the settings each run records."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from reslab.devices import compile_mode
from reslab.models import NetSpec
from reslab.train.config import DataConfig, TrainConfig
from reslab.train.fast import CompileFallbackWarning, TrainingForward, uses_channels_last
from reslab.train.objective import loss_and_wrong

SYNTH = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 256, "test_size": 64})
IMAGES = DataConfig(name="synthetic", options={"shape": [3, 8, 8], "train_size": 128, "test_size": 32})
TINY = TrainConfig(epochs=2, batch_size=64, warmup_epochs=0.5, telemetry_every=3, threads=1)
SPEC = NetSpec("resnet", "residual", 8, 4)


@pytest.mark.parametrize(
    ("setting", "device", "mode"),
    [("auto", "cpu", None), ("auto", "mps", None), ("auto", "cuda", "reduce-overhead"), ("off", "cuda", None),
     ("default", "cpu", "default"), ("max-autotune", "cuda", "max-autotune")],
)  # fmt: skip
def test_compile_is_off_on_the_cpu_unless_asked_for(setting: str, device: str, mode: str | None) -> None:
    assert compile_mode(setting, device) == mode


def test_an_unknown_compile_mode_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: auto, off, default, reduce-overhead"):
        compile_mode("fastest", "cuda")
    from reslab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--no-tracking", "--compile", "fastest"])
    assert exc.value.code == 2


def test_compile_and_memory_format_are_execution_settings() -> None:
    from reslab.sweep.runner import recipe_changes

    recipe = {"train": TINY.model_dump()}
    faster = TINY.model_copy(update={"compile": "reduce-overhead", "channels_last": True})
    assert recipe_changes(recipe, {"train": faster.model_dump()}) == []
    older = {"train": {k: v for k, v in TINY.model_dump().items() if k not in ("compile", "channels_last")}}
    assert recipe_changes(older, recipe) == []


def test_a_cpu_run_trains_eagerly_by_default() -> None:
    from reslab.train.module import ResLabModule
    from reslab.train.run import run_one

    seen: list[ResLabModule] = []
    real = ResLabModule.on_fit_start

    def on_fit_start(self: ResLabModule) -> None:
        real(self)
        seen.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResLabModule, "on_fit_start", on_fit_start)
        run_one(SPEC, SYNTH, TINY, None)
    (module,) = seen
    assert TINY.compile == "auto" and not module._forward.compiled and module.compile_fallback is None


def _failing_backend(gm: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("this backend cannot compile anything")


def test_a_failed_compilation_warns_once_and_the_run_goes_on_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that fails (no compiler on the machine, an op it cannot lower) must cost a run its speed, never its
    result: one warning, then the same training as an eager run, to the bit."""
    import reslab.train.fast as fast
    from reslab.train.run import run_one

    calls = []

    def compile_callable(fn, mode):
        calls.append(mode)
        return torch.compile(fn, backend=_failing_backend, dynamic=False)

    monkeypatch.setattr(fast, "compile_callable", compile_callable)
    eager = run_one(SPEC, SYNTH, TINY.model_copy(update={"compile": "off"}), None)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fell_back = run_one(SPEC, SYNTH, TINY.model_copy(update={"compile": "default"}), None)
    fallbacks = [w for w in caught if issubclass(w.category, CompileFallbackWarning)]
    assert calls == ["default"] and len(fallbacks) == 1
    assert "this backend cannot compile anything" in str(fallbacks[0].message)
    assert "--compile off" in str(fallbacks[0].message)
    assert fell_back.history == [{**h, "epoch_time_s": g["epoch_time_s"], "train_images_per_s": g["train_images_per_s"]}
                                 for h, g in zip(eager.history, fell_back.history, strict=True)]  # fmt: skip


def test_a_fallback_is_recorded_on_the_run(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    import reslab.train.fast as fast
    from reslab.train.config import TrackingConfig
    from reslab.train.run import run_one

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fast, "compile_callable", lambda fn, mode: torch.compile(fn, backend=_failing_backend))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileFallbackWarning)
        result = run_one(SPEC, SYNTH, TINY.model_copy(update={"compile": "default", "epochs": 1}),
                         TrackingConfig(uri=store, experiment="fallback", system_metrics=False))  # fmt: skip
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags["reslab.compile"] == "off"
    assert tags["reslab.compile_fallback"].startswith("BackendCompilerFailed")


def test_a_compiled_forward_computes_what_the_eager_one_does() -> None:
    """torch.compile (eager backend: the graph capture and guards without code generation, fast on any machine)
    gives the eager loss and wrong count, and the telemetry's eager steps bypass it."""
    from reslab.models import build_net

    torch.manual_seed(0)
    net = build_net(SPEC, (1, 16), 10)
    x, y = torch.randn(32, 1, 16), torch.randint(0, 10, (32,))
    captured = TrainingForward(net, None, "cpu")
    captured._compiled = torch.compile(lambda a, b: loss_and_wrong(net(a), b), backend="eager")
    loss, wrong = captured(x, y)
    ref_loss, ref_wrong = TrainingForward(net, None, "cpu")(x, y)
    assert torch.allclose(loss, ref_loss) and wrong == ref_wrong and captured.fallback is None
    calls = []
    captured._compiled = lambda a, b: calls.append(1)
    captured(x, y, eager=True)
    assert calls == []


@pytest.mark.parametrize(("setting", "device", "expected"), [(None, "cpu", False), (None, "cuda", True),
                                                             (True, "cpu", True), (False, "cuda", False)])  # fmt: skip
def test_channels_last_is_for_2d_nets_on_cuda_by_default(setting, device: str, expected: bool) -> None:
    from reslab.models import build_net

    conv2d = build_net(NetSpec("resnet", "residual", 8, 4), (3, 8, 8), 10)
    conv1d = build_net(NetSpec("resnet", "residual", 8, 4), (1, 16), 10)
    assert uses_channels_last(setting, device, conv2d) is expected
    assert uses_channels_last(setting, device, conv1d) is False


def test_a_channels_last_run_trains_in_that_format_and_to_the_same_numbers() -> None:
    from reslab.train.module import ResLabModule
    from reslab.train.run import run_one

    seen: list[ResLabModule] = []
    real = ResLabModule.training_step

    def training_step(self, batch, batch_idx):
        seen.append(self)
        return real(self, batch, batch_idx)

    spec = NetSpec("resnet", "residual", 8, 4)
    plain = run_one(spec, IMAGES, TINY, None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResLabModule, "training_step", training_step)
        nhwc = run_one(spec, IMAGES, TINY.model_copy(update={"channels_last": True}), None)
    module = seen[0]
    assert module.channels_last
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain.history, nhwc.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)


# -- no read-back from the device inside a training step ------------------------------------------------------------

#: Tensor methods that copy a value to the host, and so wait for the device to finish (a sync on CUDA).
READ_BACKS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "nonzero", "__format__",
              "__repr__"}  # fmt: skip
#: Copies that read back only from another device (on the CPU they are no-ops: torch's own gradient clipping
#: moves each norm "to" the device it is on).
COPIES = {"to", "cpu"}


class ReadBackCounter(TorchFunctionMode):
    """Records every torch function a step calls that reads a tensor's value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        to_host = name == "cpu" or any(str(a) == "cpu" for a in [*args[1:], *(kwargs or {}).values()])
        if name in READ_BACKS or (name in COPIES and to_host and source is not None and source.device.type != "cpu"):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _read_backs_per_step(module_cls=None) -> dict[int, list[str]]:
    """Train TINY and return, per step that records no telemetry, the read-backs from batch start to batch end
    (the forward, loss, backward, clipping and optimizer step: everything Lightning runs for one batch)."""
    import lightning.pytorch as pl

    from reslab.train import run as run_module

    per_step: dict[int, list[str]] = {}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.mode, self.step = None, trainer.global_step
            if trainer.global_step % TINY.telemetry_every:
                self.mode = ReadBackCounter()
                self.mode.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.mode is not None:
                self.mode.__exit__(None, None, None)
                per_step[self.step] = self.mode.calls

    from reslab.train import trainer as trainer_module

    original = trainer_module.make_trainer

    def make_trainer(train, device, *, callbacks=(), **kw):
        return original(train, device, callbacks=[*callbacks, Watch()], **kw)

    with pytest.MonkeyPatch.context() as mp:  # run_one imports both when it runs: it gets the patched ones
        mp.setattr(trainer_module, "make_trainer", make_trainer)
        if module_cls is not None:
            import reslab.train.module as module_module

            mp.setattr(module_module, "ResLabModule", module_cls)
        run_module.run_one(SPEC, SYNTH, TINY.model_copy(update={"clip_grad_norm": 1.0}), None)
    return per_step


def test_a_training_step_reads_nothing_back_from_the_device() -> None:
    """Between telemetry steps the host never waits for the device: sums stay on it and are read once an epoch.
    On CUDA a value read back inside the step stalls the launch queue every step (the GPU test checks the same
    with torch.cuda.set_sync_debug_mode)."""
    per_step = _read_backs_per_step()
    assert len(per_step) >= 4
    assert {step: calls for step, calls in per_step.items() if calls} == {}


def test_the_read_back_check_sees_a_read_back() -> None:
    from reslab.train.module import ResLabModule

    class Chatty(ResLabModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.last_loss = loss.item()  # what a progress line per step would do
            return loss

    per_step = _read_backs_per_step(Chatty)
    assert per_step and all("item" in calls for calls in per_step.values())


@pytest.mark.slow
def test_a_compiled_run_on_the_cpu_trains_to_the_eager_numbers() -> None:
    """torch.compile with Inductor (C++ code generation on the CPU, ~30 s for this net): the compiled step, with the
    telemetry's eager steps between compiled ones and a smaller last batch each epoch, trains the same net to the
    eager run's losses up to float rounding, without falling back."""
    from torch._dynamo.utils import counters

    from reslab.train.run import run_one

    data = DataConfig(name="synthetic", options={"shape": [1, 16], "train_size": 200, "test_size": 64})
    eager = run_one(SPEC, data, TINY.model_copy(update={"compile": "off"}), None)
    torch._dynamo.reset()
    counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        compiled = run_one(SPEC, data, TINY.model_copy(update={"compile": "default"}), None)
    assert counters["stats"]["unique_graphs"] >= 2  # the full batch and the epoch's last, smaller one
    for a, b in zip(eager.history, compiled.history, strict=True):
        for key in ("train_loss", "test_loss", "train_error"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert len(compiled.telemetry) == len(eager.telemetry)


def test_the_train_command_passes_the_execution_settings_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import reslab.train.run as run_module
    from reslab.cli import main

    seen: list[TrainConfig] = []

    def run_one(spec, data, train, tracking, **kw):
        seen.append(train)
        raise SystemExit(0)

    monkeypatch.setattr(run_module, "run_one", run_one)
    with pytest.raises(SystemExit):
        main(["train", "--no-tracking", "--compile", "max-autotune", "--channels-last", "--depth", "8"])
    with pytest.raises(SystemExit):
        main(["train", "--no-tracking", "--no-channels-last", "--depth", "8"])
    assert (seen[0].compile, seen[0].channels_last) == ("max-autotune", True)
    assert (seen[1].compile, seen[1].channels_last) == ("auto", False)
