"""Dense residual nets: a_{l+2} = g(z_{l+2} + a_l), the shortcut spanning each pair of linear layers.

Depth counts weighted layers, as He et al. do: an input projection to width w, n blocks of two linear layers and a
linear head, so depth = 2n + 2 (4, 6, 8, ...); with one linear layer per branch (`branch_layers` 1, the branch
depth-muP's transfer is proven for), depth = n + 2. Inputs of any shape are flattened first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import nn

from reslab.models.blocks import Block, Ops, branch_layers, make_shortcut
from reslab.models.trunk import Trunk

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec


def dense_block(spec: NetSpec, ops: Ops, width: int) -> Block:
    """Two linear layers in the order of `branch_layers` (+ a_l, and an activation on the sum unless pre-activated
    or gated); one linear layer with `spec.branch_layers == 1`."""
    def linear(bias: bool) -> nn.Module:
        return ops.linear(width, width, bias)

    branch = branch_layers(spec, ops, linear, None if spec.branch_layers == 1 else linear, width, width)
    shortcut = None if spec.block == "plain" else make_shortcut(spec.shortcut, ops, width, width, 1, spec.norm)
    post = ops.post_act() if spec.block in ("plain", "residual") else None  # on the fresh sum
    return Block(spec.block, nn.Sequential(*branch), shortcut, post)


def build_mlp(spec: NetSpec, input_shape: tuple[int, ...], num_classes: int) -> Trunk:
    """The dense net of `spec`: flatten, project to width, n blocks, head."""
    ops = Ops(0, spec.activation)
    w, bias = spec.width, spec.norm == "none"
    stem = [nn.Flatten(), ops.linear(math.prod(input_shape), w, bias)]
    if spec.block != "preact":
        stem += [ops.norm(w, spec.norm), ops.act(spec.norm)]
    blocks = [dense_block(spec, ops, w) for _ in range(spec.blocks_per_stage)]
    head = [ops.norm(w, spec.norm), ops.act(spec.norm)] if spec.block == "preact" else []
    head.append(ops.linear(w, num_classes))
    return Trunk(nn.Sequential(*stem), [blocks], nn.Sequential(*head))
