"""The Keras residual convnet example: stages of (filters, pool), no stem, each block two 3x3
"same" convs with ReLU and an optional 2x2 max-pool; the shortcut is the identity, or a 1x1 projection (stride 2
when the block pools, no activation) where the shape changes; global average pooling and a dense head.

Its default stages (32, pool), (64, pool), (128, no pool) with one output on 3x32x32 are the example's model,
297,697 parameters. Depth counts weighted layers: 2 per block plus the head, depth = 2kS + 1 for k blocks in each
of S stages; the first block of a stage changes the filters and pools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from reslab.models.blocks import Block, Ops, branch_layers, make_shortcut
from reslab.models.trunk import Trunk

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec


def pooled_block(spec: NetSpec, ops: Ops, cin: int, cout: int, pool: bool) -> Block:
    """conv-ReLU-conv-ReLU[-pool] (+ shortcut), as the example's `residual_block`, in the order of `branch_layers`
    with the activation after the second conv; norm layers after each conv when norm is batch."""
    layers = branch_layers(
        spec, ops, lambda bias: ops.conv(cin, cout, 3, 1, bias), lambda bias: ops.conv(cout, cout, 3, 1, bias),
        cin, cout, act_after=True,
    )  # fmt: skip
    if pool:
        layers.append(ops.max_pool())
    stride = 2 if pool else 1
    shortcut = None if spec.block == "plain" else make_shortcut(spec.shortcut, ops, cin, cout, stride, spec.norm)
    return Block(spec.block, nn.Sequential(*layers), shortcut)


def build_convnet(spec: NetSpec, input_shape: tuple[int, ...], num_classes: int) -> Trunk:
    """The Keras example's convnet of `spec` for (C, L) or (C, H, W) inputs."""
    ops = Ops(len(input_shape) - 1)
    k = spec.blocks_per_stage
    stages, cin = [], input_shape[0]
    for filters, pool in spec.stages:
        blocks = []
        for i in range(k):
            blocks.append(pooled_block(spec, ops, cin, filters, pool and i == 0))
            cin = filters
        stages.append(blocks)
    head = [ops.norm(cin, spec.norm), ops.act(spec.norm)] if spec.block == "preact" else []
    head += [ops.global_pool(), nn.Flatten(), ops.linear(cin, num_classes)]
    return Trunk(nn.Identity(), stages, nn.Sequential(*head))
