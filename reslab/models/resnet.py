"""He et al. 2015 §4.2 CIFAR ResNets (depth 6n+2) in 1-D and 2-D, with He et al. 2016 pre-activation blocks.

A 3x3 conv stem of width w, three stages of n two-conv blocks of widths w, 2w, 4w (stride 2 at the first block of
stages 2 and 3), global average pooling and a linear head. With w = 16 on 3x32x32 these are the nets of Table 6
(0.27M parameters at depth 20 ... 19.4M at 1202); the tests hold the exact integers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from reslab.models.blocks import Block, Ops, branch_layers, make_shortcut
from reslab.models.trunk import Trunk

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec


def conv_block(spec: NetSpec, ops: Ops, cin: int, cout: int, stride: int) -> Block:
    """Two 3x3 convs in the order of `branch_layers` (+ shortcut, and an activation on the sum unless
    pre-activated or gated)."""
    branch = branch_layers(
        spec, ops, lambda bias: ops.conv(cin, cout, 3, stride, bias), lambda bias: ops.conv(cout, cout, 3, 1, bias),
        cin, cout,
    )  # fmt: skip
    shortcut = None if spec.block == "plain" else make_shortcut(spec.shortcut, ops, cin, cout, stride, spec.norm)
    post = ops.post_act() if spec.block in ("plain", "residual") else None  # on the fresh sum
    return Block(spec.block, nn.Sequential(*branch), shortcut, post)


def build_resnet(spec: NetSpec, input_shape: tuple[int, ...], num_classes: int) -> Trunk:
    """The 6n+2 CIFAR ResNet of `spec` for inputs (C, L) (Conv1d) or (C, H, W) (Conv2d)."""
    ops = Ops(len(input_shape) - 1, spec.activation)
    w, n, bias = spec.width, spec.blocks_per_stage, spec.norm == "none"
    preact = spec.block == "preact"
    stem = [ops.conv(input_shape[0], w, 3, 1, bias)]
    if not preact:  # pre-activation nets normalise at the start of the first block instead
        stem += [ops.norm(w, spec.norm), ops.act(spec.norm)]
    stages, cin = [], w
    for index, cout in enumerate((w, 2 * w, 4 * w)):
        blocks = []
        for i in range(n):
            blocks.append(conv_block(spec, ops, cin, cout, 2 if index > 0 and i == 0 else 1))
            cin = cout
        stages.append(blocks)
    head = [ops.norm(cin, spec.norm), ops.act(spec.norm)] if preact else []  # He 2016: final BN-ReLU before pooling
    head += [ops.global_pool(), nn.Flatten(), ops.linear(cin, num_classes)]
    return Trunk(nn.Sequential(*stem), stages, nn.Sequential(*head))
