"""The CUDA code path (run where a GPU is present; skipped elsewhere): every family on the device, bf16 autocast,
data and augmentation living on the GPU, and `run_one` training there."""

from __future__ import annotations

import pytest
import torch

from reslab.data.registry import load_dataset
from reslab.data.tensors import DeviceBatches, pad_crop_flip
from reslab.models import BLOCK_KINDS, FAMILIES, NetSpec, build_net
from reslab.models.registry import example_input
from reslab.train.config import DataConfig, TrainConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("block", BLOCK_KINDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_backward_on_cuda_fp32_and_bf16(family: str, block: str) -> None:
    fam = FAMILIES[family]
    shape = (3, 32, 32) if 3 in fam.input_ranks else fam.default_input  # the transformer: a window of token ids
    net = build_net(NetSpec(family, block), shape, 10).cuda()
    x = example_input(net, shape, 8, random=True, device="cuda")
    for dtype in (None, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        assert out.shape == ((8, shape[0], 10) if fam.tokens else (8, 10)) and out.device.type == "cuda"
        out.float().square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        net.zero_grad(set_to_none=True)


def test_resnet_1202_trains_a_step_on_cuda() -> None:
    net = build_net(NetSpec("resnet", "residual", 1202, 16)).cuda()
    torch.cuda.reset_peak_memory_stats()
    net(torch.randn(128, 3, 32, 32, device="cuda")).logsumexp(1).mean().backward()
    assert torch.cuda.max_memory_allocated() > 0
    assert torch.isfinite(net.stem[0].weight.grad).all()


def test_batches_and_augmentation_stay_on_the_gpu() -> None:
    splits = load_dataset("synthetic", {"shape": [3, 32, 32], "train_size": 256, "test_size": 64}).to("cuda")
    batches = DeviceBatches(splits.train, 64, shuffle=True, seed=0)
    x, y = next(iter(batches))
    assert x.device.type == "cuda" and y.device.type == "cuda"
    images = torch.rand(16, 3, 32, 32)
    on_cpu = pad_crop_flip(images, torch.Generator().manual_seed(1))
    on_gpu = pad_crop_flip(images.cuda(), torch.Generator().manual_seed(1))
    assert torch.equal(on_cpu, on_gpu.cpu())  # same seed, same crops and flips on either device


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_run_one_trains_on_cuda(precision: str) -> None:
    from reslab.train.run import run_one

    data = DataConfig(name="synthetic", options={"shape": [3, 32, 32], "train_size": 1024, "test_size": 256})
    train = TrainConfig(epochs=3, batch_size=128, device="cuda", precision=precision, telemetry_every=2)
    result = run_one(NetSpec("resnet", "residual", 20, 16), data, train, None)
    assert result.device.startswith("cuda (")
    assert len(result.history) == 3 and all(0 <= h["train_error"] <= 1 for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert any(k.startswith("grad_branch/") for k, _, _ in result.telemetry)


def test_the_fast_cuda_step_compiles_without_fallback_and_never_syncs_between_telemetry_steps() -> None:
    """On CUDA `auto` compiles the step (CUDA graphs), 2-D nets run channels-last and the step never waits for the
    device: torch.cuda.set_sync_debug_mode("error") raises on any synchronising call inside it."""
    import warnings

    import lightning.pytorch as pl

    from reslab.train import trainer as trainer_module
    from reslab.train.fast import CompileFallbackWarning
    from reslab.train.run import run_one

    every = 5
    checked: list[int] = []

    class NoSync(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.armed = trainer.global_step % every != 0 and trainer.global_step > 2  # past the compilation
            if self.armed:
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.armed:
                torch.cuda.set_sync_debug_mode("default")
                checked.append(trainer.global_step)

    original = trainer_module.make_trainer

    def make_trainer(train, device, *, callbacks=(), **kw):
        return original(train, device, callbacks=[*callbacks, NoSync()], **kw)

    data = DataConfig(name="synthetic", options={"shape": [3, 32, 32], "train_size": 2048, "test_size": 256})
    train = TrainConfig(epochs=2, batch_size=128, device="cuda", precision="bf16-mixed", telemetry_every=every)
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("error", CompileFallbackWarning)
        mp.setattr(trainer_module, "make_trainer", make_trainer)
        result = run_one(NetSpec("resnet", "residual", 20, 16), data, train, None)
    torch.cuda.set_sync_debug_mode("default")
    assert len(checked) > 10
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.slow
def test_a_pack_trains_on_cuda_in_bf16_and_each_member_matches_its_solo_start() -> None:
    """Packing on the GPU: the stacked members' first bf16 losses equal their solo nets' (same weights, same batch,
    up to bf16 rounding), fused SGD steps them, and they keep training apart."""
    from benchmarks.pack import PackTraining, SoloTraining
    from reslab.data.synthetic import load_synthetic

    spec = NetSpec("resnet", "residual", 20, 16)
    splits = load_synthetic((3, 32, 32), train_size=512, test_size=64)
    cfg = TrainConfig(batch_size=64, max_steps=20, precision="bf16-mixed", device="cuda")
    pack = PackTraining(spec, [0, 1, 2, 3], splits, cfg, "cuda")
    assert pack.opt.defaults["fused"] is True
    first = pack.step()
    solo = [SoloTraining(spec, seed, splits, cfg, "cuda").step() for seed in (0, 1, 2, 3)]
    assert torch.allclose(first, torch.stack(solo), rtol=2e-2)
    losses = torch.stack([pack.step() for _ in range(19)])
    assert torch.isfinite(losses).all() and (losses[-5:].mean(0) < first).all()
