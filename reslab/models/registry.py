"""The registry of network families: the names configs and the CLI use, each with its builder, depth rule and
defaults. Tests parametrize over it, so a family added here is tested everywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from reslab.models.convnet import build_convnet
from reslab.models.mlp import build_mlp
from reslab.models.resnet import build_resnet
from reslab.models.rules import DepthRule, SpecError

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    build: Callable[[NetSpec, tuple[int, ...], int], nn.Module]
    depth_rule: Callable[[NetSpec], DepthRule]
    default_depth: int
    default_width: int
    default_shortcut: str
    default_norm: str
    default_input: tuple[int, ...]
    default_classes: int
    input_ranks: tuple[int, ...]  # accepted len(input_shape): 2 = (C, L), 3 = (C, H, W)


def _rule(step: int, offset: int, form: str) -> Callable[[NetSpec], DepthRule]:
    rule = DepthRule(step, offset, form)
    return lambda spec: rule


def _convnet_rule(spec: NetSpec) -> DepthRule:
    s = len(spec.stages) if spec.stages else 3
    return DepthRule(2 * s, 1, f"{2 * s}k+1 for {s} stages")


FAMILIES: dict[str, Family] = {
    "resnet": Family(
        "resnet", "He et al. 2015 CIFAR ResNet, 6n+2 layers, widths w/2w/4w",
        build_resnet, _rule(6, 2, "6n+2"), 20, 16, "A", "batch", (3, 32, 32), 10, (2, 3),
    ),
    "mlp": Family(
        "mlp", "dense residual net (seed 004), 2n+2 linear layers of width w",
        build_mlp, _rule(2, 2, "2n+2"), 10, 64, "A", "batch", (1, 40), 10, (1, 2, 3),
    ),
    "convnet": Family(
        "convnet", "the Keras residual convnet of seed 000: stages of two 3x3 convs + max-pool",
        build_convnet, _convnet_rule, 7, 32, "B", "none", (3, 32, 32), 1, (2, 3),
    ),
}  # fmt: skip


def output_units(spec: NetSpec, num_classes: int) -> int:
    """A binary dataset on a family whose head is one sigmoid unit (the seed's convnet) gets 1 output and BCE."""
    return 1 if num_classes == 2 and FAMILIES[spec.family].default_classes == 1 else num_classes


def build_net(spec: NetSpec, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> nn.Module:
    """Build the network of `spec` for inputs of `input_shape` (without the batch dimension) and `num_classes`
    outputs; both default to the family's (3x32x32 and 10 classes for resnet)."""
    fam = FAMILIES[spec.family]
    shape = tuple(input_shape) if input_shape is not None else fam.default_input
    classes = fam.default_classes if num_classes is None else num_classes
    if len(shape) not in fam.input_ranks or any(d <= 0 for d in shape):
        ranks = " or ".join({1: "(F)", 2: "(C, L) like 1x40", 3: "(C, H, W) like 3x32x32"}[r] for r in fam.input_ranks)
        raise SpecError(f"family {spec.family!r} takes inputs {ranks}; got {'x'.join(map(str, shape))}")
    if classes <= 0:
        raise SpecError(f"the number of classes must be positive, got {classes}")
    return fam.build(spec, shape, classes)
