"""One training loss and one SGD (`reslab.train.objective`) for every loop: Lightning's module, the signal probe, the
benchmarks' plain loop and packs; and the import direction that keeps the benchmark helpers out of training."""

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
from reslab.train.objective import loss_and_wrong, sgd, training_loss, wrong_predictions

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
