"""One training loss and one optimiser builder (`reslab.train.objective`) for every loop: Lightning's module, the
signal probe, the benchmarks' plain loop and packs; the sequence loss in bits per character; AdamW beside SGD; and
the import direction that keeps the benchmark helpers out of training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reslab.models import NetSpec, build_net
from reslab.train.config import TrainConfig
from reslab.train.objective import (
    BITS_PER_NAT,
    adamw,
    build_optimizer,
    loss_and_wrong,
    sgd,
    training_loss,
    wrong_predictions,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_loss_is_cross_entropy_over_classes_and_bce_for_a_one_unit_head() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert torch.equal(training_loss(logits, y), F.cross_entropy(logits, y))
    assert torch.equal(training_loss(logits, y, reduction="none"), F.cross_entropy(logits, y, reduction="none"))
    assert wrong_predictions(logits, y) == (logits.argmax(1) != y).sum()
    logit, labels = torch.randn(16, 1), torch.randint(0, 2, (16,))
    assert torch.equal(training_loss(logit, labels), F.binary_cross_entropy_with_logits(logit[:, 0], labels.float()))
    assert wrong_predictions(logit, labels) == ((logit[:, 0] > 0).long() != labels).sum()
    loss, wrong = loss_and_wrong(logit, labels)
    assert torch.equal(loss, training_loss(logit, labels)) and torch.equal(wrong, wrong_predictions(logit, labels))


@pytest.mark.parametrize("classes", [10, 1])
def test_bf16_logits_give_the_loss_autocast_computes(classes: int) -> None:
    """Outside an autocast region (a pack's loss, after its forward) the loss equals the one Lightning computes
    inside it, where autocast runs these losses in fp32."""
    torch.manual_seed(0)
    logits = torch.randn(16, classes).bfloat16()
    y = torch.randint(0, max(classes, 2), (16,))
    outside = training_loss(logits, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = training_loss(logits, y)
        if classes > 1:
            assert torch.equal(inside, F.cross_entropy(logits, y))
    assert outside.dtype == inside.dtype == torch.float32 and torch.equal(outside, inside)


def test_sgd_takes_the_recipe_and_each_remedys_lr_factors() -> None:
    net = build_net(NetSpec("resnet", depth=8, width=4, remedy="fixup"), (1, 16), 10)
    cfg = TrainConfig(lr=0.2, momentum=0.8, nesterov=True, weight_decay=5e-4)
    opt = sgd(net, cfg, "cpu")
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.02])  # Fixup's scalars at a tenth
    assert {(g["momentum"], g["nesterov"], g["weight_decay"]) for g in opt.param_groups} == {(0.8, True, 5e-4)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    assert not opt.defaults["fused"]  # the default implementation off CUDA
    stacked = [{"params": [torch.zeros(2, 3, requires_grad=True)], "lr": 0.4}]
    assert sgd(stacked, cfg, torch.device("cpu")).param_groups[0]["lr"] == 0.4  # ready-made groups kept


def test_a_sequence_loss_averages_every_position() -> None:
    """Logits (B, T, V) against next tokens (B, T): the mean cross-entropy over all B x T predictions, each
    position's with reduction none; wrong predictions counted per position. A sequence of length 1 is still a
    sequence (not a one-unit head)."""
    torch.manual_seed(0)
    logits, y = torch.randn(4, 7, 11), torch.randint(0, 11, (4, 7))
    each = torch.stack([torch.stack([F.cross_entropy(logits[b, t], y[b, t]) for t in range(7)]) for b in range(4)])
    torch.testing.assert_close(training_loss(logits, y, reduction="none"), each)
    torch.testing.assert_close(training_loss(logits, y), each.mean())
    wrong = sum(int(logits[b, t].argmax() != y[b, t]) for b in range(4) for t in range(7))
    assert wrong_predictions(logits, y) == wrong
    one = torch.randn(3, 1, 5)
    assert training_loss(one, torch.zeros(3, 1, dtype=torch.long)).shape == ()
    uniform = torch.zeros(2, 3, 8)  # every one of 8 characters equally likely: 3 bits each
    assert float(training_loss(uniform, torch.zeros(2, 3, dtype=torch.long))) * BITS_PER_NAT == pytest.approx(3.0)


def test_bf16_sequence_logits_give_the_fp32_loss() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(2, 5, 9).bfloat16(), torch.randint(0, 9, (2, 5))
    loss = training_loss(logits, y)
    assert loss.dtype == torch.float32 and torch.equal(loss, training_loss(logits.float(), y))


def test_adamw_takes_the_recipe_and_each_remedys_lr_factors() -> None:
    net = build_net(NetSpec("resnet", depth=8, width=4, remedy="fixup"), (1, 16), 10)
    cfg = TrainConfig(optimizer="adamw", lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    opt = build_optimizer(net, cfg, "cpu")
    assert type(opt) is torch.optim.AdamW
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-3, 3e-4])  # Fixup's scalars at a tenth
    assert {(g["betas"], g["eps"], g["weight_decay"]) for g in opt.param_groups} == {((0.8, 0.95), 1e-6, 0.1)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    assert not opt.defaults["fused"]
    assert type(build_optimizer(net, TrainConfig(), "cpu")) is torch.optim.SGD  # SGD stays the default
    stacked = [{"params": [torch.zeros(2, 3, requires_grad=True)], "lr": 0.4}]
    assert adamw(stacked, cfg, torch.device("cpu")).param_groups[0]["lr"] == 0.4


def test_adamw_decouples_its_weight_decay() -> None:
    """Loshchilov & Hutter's AdamW: with a zero gradient, a step shrinks each weight by lr x weight_decay exactly
    (L2 inside Adam would be normalised away), and the moments' update is torch's own."""
    w = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = adamw([{"params": [w]}], TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.5), "cpu")
    w.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 2.0 * (1 - 0.01 * 0.5)))


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, -0.1)])
def test_betas_outside_zero_to_one_are_refused(betas: tuple[float, float]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"betas must each be in \[0, 1\)"):
        TrainConfig(optimizer="adamw", betas=betas)


def test_the_optimiser_and_its_settings_are_command_line_options(capsys: pytest.CaptureFixture[str]) -> None:
    from reslab.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--optimizer", "adamw", "--betas", "0.9,0.95", "--eps", "1e-7"])
    from reslab.cli_options import train_values

    cfg = TrainConfig(**train_values(args))
    assert (cfg.optimizer, cfg.betas, cfg.eps) == ("adamw", (0.9, 0.95), 1e-7)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--optimizer {sgd,adamw}" in text and "(default sgd)" in text and "(default 0.9,0.999)" in text


IMPORTS = """
import json, pkgutil, importlib, sys
import reslab.train, reslab.probe
for pkg in (reslab.train, reslab.probe):
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
helpers = ("reslab.perf", "reslab.profiling", "benchmarks")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(helpers))))
"""


def test_training_and_the_probe_import_no_benchmark_helper() -> None:
    """`reslab.perf` and `reslab.profiling` time training and may import it, never the reverse: every module of
    `reslab.train` and `reslab.probe` imports in a fresh interpreter without them or `benchmarks`."""
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
