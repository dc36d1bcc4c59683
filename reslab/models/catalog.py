"""The names a network is described by, without torch: families with their depth rules and defaults, block kinds,
shortcuts and norms.

The CLI's choices, the sweep config's schema, `NetSpec`'s validation and the builders all read these, so there is
one list of what exists. Kept free of torch so that `reslab --help` and a config error answer at once: importing
torch alone takes seconds, far longer than the whole check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reslab.models.rules import DepthRule

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec

#: How a block combines its branch F with its input (He et al. 2015, 2016; the gate y = a·F(x) + x of ReZero).
BLOCK_KINDS: tuple[str, ...] = ("plain", "residual", "preact", "rezero")
#: He et al. 2015 §3.3: zero-padding (A), projection where the shape changes (B), projection everywhere (C).
SHORTCUTS: tuple[str, ...] = ("A", "B", "C")
NORMS: tuple[str, ...] = ("batch", "none")
#: How the weights start: He et al. 2015 ("Delving Deep into Rectifiers"), Fixup (Zhang, Dauphin & Ma 2019) or
#: delta-orthogonal (Xiao et al. 2018).
INITS: tuple[str, ...] = ("kaiming", "fixup", "delta_orthogonal")
#: The nonlinearity: ReLU, or TAT's normalised leaky ReLU tailored to the depth (Zhang, Botev & Martens 2022).
ACTIVATIONS: tuple[str, ...] = ("relu", "tat")
#: A fixed multiplier on every residual branch: none, or 1/sqrt(L) for L residual branches (Hayou et al. 2021).
BRANCH_SCALES: tuple[str, ...] = ("none", "inv_sqrt_branches")
#: The families whose blocks the remedies for depth are defined on (the Keras example's convnet has its own recipe).
REMEDY_FAMILIES: tuple[str, ...] = ("resnet", "mlp")


@dataclass(frozen=True)
class FamilyInfo:
    """A family's name, depth rule and defaults: everything about it but its builder (`reslab.models.registry`)."""

    name: str
    description: str
    depth_rule: Callable[[NetSpec], DepthRule]
    default_depth: int
    default_width: int
    default_shortcut: str
    default_norm: str
    default_input: tuple[int, ...]
    default_classes: int
    input_ranks: tuple[int, ...]  # accepted len(input_shape): 1 = (F), 2 = (C, L), 3 = (C, H, W)


def _rule(step: int, offset: int, form: str) -> Callable[[NetSpec], DepthRule]:
    rule = DepthRule(step, offset, form)
    return lambda spec: rule


def _convnet_rule(spec: NetSpec) -> DepthRule:
    s = len(spec.stages) if spec.stages else 3
    return DepthRule(2 * s, 1, f"{2 * s}k+1 for {s} stages")


FAMILY_INFO: dict[str, FamilyInfo] = {
    "resnet": FamilyInfo(
        "resnet", "He et al. 2015 CIFAR ResNet, 6n+2 layers, widths w/2w/4w",
        _rule(6, 2, "6n+2"), 20, 16, "A", "batch", (3, 32, 32), 10, (2, 3),
    ),
    "mlp": FamilyInfo(
        "mlp", "dense residual net, a_{l+2} = g(z_{l+2} + a_l), 2n+2 linear layers of width w",
        _rule(2, 2, "2n+2"), 10, 64, "A", "batch", (1, 40), 10, (1, 2, 3),
    ),
    "convnet": FamilyInfo(
        "convnet", "the Keras residual convnet example: stages of two 3x3 convs + max-pool",
        _convnet_rule, 7, 32, "B", "none", (3, 32, 32), 1, (2, 3),
    ),
}  # fmt: skip


def output_units(spec: NetSpec, num_classes: int) -> int:
    """A binary dataset on a family whose head is one sigmoid unit (the Keras example's convnet) gets 1 output and
    BCE."""
    return 1 if num_classes == 2 and FAMILY_INFO[spec.family].default_classes == 1 else num_classes
