"""The registry of network families: each family of `reslab.models.catalog` with its builder, and the example input
each family's nets take. Tests parametrize over it, so a family added to the catalog and given a builder here is
tested everywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from reslab.models.catalog import FAMILY_INFO, FamilyInfo, output_units  # noqa: F401 - output_units: re-exported
from reslab.models.convnet import build_convnet
from reslab.models.mlp import build_mlp
from reslab.models.resnet import build_resnet
from reslab.models.rules import SpecError
from reslab.models.transformer import CausalTransformer, build_transformer

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec


@dataclass(frozen=True)
class Family(FamilyInfo):
    """A family of `catalog.FAMILY_INFO` with its builder."""

    build: Callable[[NetSpec, tuple[int, ...], int], nn.Module] = field(kw_only=True)


_BUILDERS = {"resnet": build_resnet, "mlp": build_mlp, "convnet": build_convnet, "transformer": build_transformer}
FAMILIES: dict[str, Family] = {name: Family(**vars(info), build=_BUILDERS[name]) for name, info in FAMILY_INFO.items()}


def build_net(spec: NetSpec, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> nn.Module:
    """Build the network of `spec` for inputs of `input_shape` (without the batch dimension) and `num_classes`
    outputs; both default to the family's (3x32x32 and 10 classes for resnet). The transformer takes a window of
    (T,) token ids, T <= its context, and `num_classes` is its vocabulary: it maps ids (B, T) to logits
    (B, T, vocabulary), 64 tokens of 96 by default."""
    fam = FAMILIES[spec.family]
    shape = tuple(input_shape) if input_shape is not None else fam.default_input
    classes = fam.default_classes if num_classes is None else num_classes
    if len(shape) not in fam.input_ranks or any(d <= 0 for d in shape):
        one = "a (T) window of token ids like 64" if fam.tokens else "(F)"
        ranks = " or ".join({1: one, 2: "(C, L) like 1x40", 3: "(C, H, W) like 3x32x32"}[r] for r in fam.input_ranks)
        raise SpecError(f"family {spec.family!r} takes inputs {ranks}; got {'x'.join(map(str, shape))}")
    if classes <= 0:
        raise SpecError(f"the number of classes must be positive, got {classes}")
    from reslab.models.remedy_init import initialise  # it imports the spec, which this module's callers load

    return initialise(fam.build(spec, shape, classes), spec)


def example_input(
    net: nn.Module,
    input_shape: tuple[int, ...],
    batch: int = 1,
    random: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A batch that `net` takes: zeros, or with `random` draws from torch's global generator, of (batch,
    *input_shape); standard normal signals, or token ids below the vocabulary of a language model."""
    shape = (batch, *input_shape)
    if isinstance(net, CausalTransformer):
        if random:
            return torch.randint(net.vocab, shape, device=device)
        return torch.zeros(shape, dtype=torch.long, device=device)
    return torch.randn(shape, device=device) if random else torch.zeros(shape, device=device)
