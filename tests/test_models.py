"""The network families against the papers' numbers and the seeds' shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from reslab.models import (
    BLOCK_KINDS,
    FAMILIES,
    Block,
    NetSpec,
    SpecError,
    build_net,
    describe,
)
from reslab.models.blocks import Ops
from reslab.models.convnet import pooled_block
from reslab.models.registry import example_input

# He et al. 2015, Table 6 (0.27M ... 19.4M), as the exact integers of the option-A nets with BN and a biased head.
TABLE6_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
SHAPES = {"1d": (1, 40), "2d": (3, 32, 32)}


@pytest.mark.parametrize("depth", sorted(TABLE6_PARAMS))
def test_table6_parameter_counts(depth: int) -> None:
    residual = describe(NetSpec("resnet", "residual", depth, 16, "A"), (3, 32, 32), 10)
    assert residual.params == TABLE6_PARAMS[depth]
    assert residual.trainable_params == TABLE6_PARAMS[depth]
    assert (
        round(residual.params / 1e6, 2 if depth < 110 else 1)
        == {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}[depth]
    )


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_has_exactly_the_parameters_of_its_residual_twin(depth: int) -> None:
    plain = describe(NetSpec("resnet", "plain", depth, 16, "A"))
    residual = describe(NetSpec("resnet", "residual", depth, 16, "A"))
    assert plain.params == residual.params == TABLE6_PARAMS[depth]
    assert plain.macs == residual.macs


def test_resnet56_macs() -> None:
    # 125.49 M multiply-accumulates per 3x32x32 image: convolutions plus the 64x10 head.
    assert describe(NetSpec("resnet", "residual", 56, 16)).macs == 125_485_696


def test_projection_shortcuts_add_exactly_their_layers() -> None:
    a = describe(NetSpec("resnet", "residual", 20, 16, "A")).params
    b = describe(NetSpec("resnet", "residual", 20, 16, "B")).params
    c = describe(NetSpec("resnet", "residual", 20, 16, "C")).params
    # B: 1x1 conv + BN at the two stage transitions (16->32, 32->64).
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    # C: a projection on all 9 blocks (3 per stage).
    per_stage = [16 * 16 + 32, 16 * 32 + 64, 32 * 64 + 128]
    same = [16 * 16 + 32, 32 * 32 + 64, 64 * 64 + 128]
    assert c - a == sum(per_stage) + 2 * sum(same)


# The Keras example's model.summary(): (layer type, output shape HWC, params), activation folded into the conv.
KERAS_EXAMPLE = [
    ("Conv2d", (32, 32, 32), 896),
    ("Conv2d", (32, 32, 32), 9248),
    ("MaxPool2d", (16, 16, 32), 0),
    ("Conv2d", (16, 16, 32), 128),
    ("Conv2d", (16, 16, 64), 18496),
    ("Conv2d", (16, 16, 64), 36928),
    ("MaxPool2d", (8, 8, 64), 0),
    ("Conv2d", (8, 8, 64), 2112),
    ("Conv2d", (8, 8, 128), 73856),
    ("Conv2d", (8, 8, 128), 147584),
    ("Conv2d", (8, 8, 128), 8320),
    ("AdaptiveAvgPool2d", (1, 1, 128), 0),
    ("Flatten", (128,), 0),
    ("Linear", (1,), 129),
]


def test_convnet_defaults_reproduce_the_keras_example_summary() -> None:
    summary = describe(NetSpec("convnet", "residual"))
    assert summary.params == summary.trainable_params == 297_697
    rows = [(r.type, r.output_shape[1:], r.params) for r in summary.layers]
    expected = [(t, (s[-1], *s[:-1]), p) for t, s, p in KERAS_EXAMPLE]  # channels-first, as torch computes them
    assert rows == expected


def test_the_notebook_convnet_shapes() -> None:
    # A valid 3x3 conv on 32x32 gives 30x30x32; a projection + pool block after it gives 15x15x64 (the notebook
    # printed 8x8, which its own code cannot produce).
    spec = NetSpec("convnet", "residual")
    ops = Ops(2)
    stem = nn.Conv2d(3, 32, 3)
    block = pooled_block(spec, ops, 32, 64, pool=True)
    x = stem(torch.zeros(2, 3, 32, 32))
    assert tuple(x.shape[1:]) == (32, 30, 30)
    assert tuple(block(x).shape[1:]) == (64, 15, 15)
    assert tuple(block.shortcut(x).shape[1:]) == (64, 15, 15)
    # Without pooling only the filters change: a 1x1 projection, 30x30x64 (the notebook's first example).
    same_size = pooled_block(spec, ops, 32, 64, pool=False)
    assert tuple(same_size(x).shape[1:]) == (64, 30, 30)
    assert isinstance(same_size.shortcut, nn.Conv2d) and same_size.shortcut.kernel_size == (1, 1)


def shapes(family: str) -> dict[str, tuple[int, ...]]:
    """The 1-D and 2-D inputs a family takes; the family's own input where it takes neither (a token window)."""
    fam = FAMILIES[family]
    return {d: s for d, s in SHAPES.items() if len(s) in fam.input_ranks} or {"own": fam.default_input}


def _cases() -> list:
    return [pytest.param(NetSpec(family, block), shape, id=f"{family}-{block}-{dims}")
            for family in FAMILIES for block in BLOCK_KINDS for dims, shape in sorted(shapes(family).items())]


@pytest.mark.parametrize(("spec", "shape"), _cases())
def test_output_shape_and_gradient_on_every_parameter(spec: NetSpec, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = build_net(spec, shape, 7)
    out = net(example_input(net, shape, 4, random=True))
    # a language model's logits are per position of its window
    assert out.shape == ((4, shape[0], 7) if FAMILIES[spec.family].tokens else (4, 7))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        # Every parameter learns from the first step, but a rezero branch: its gate a = 0 silences it at init.
        in_silenced_branch = spec.block == "rezero" and ".branch." in name
        assert bool(p.grad.any()) != in_silenced_branch, f"{name}: gradient {'zero' if not p.grad.any() else 'nonzero'}"
    blocks = [m for m in net.modules() if isinstance(m, Block)]
    assert blocks and all(b.kind == spec.block for b in blocks)
    assert (spec.block == "plain") == all(b.shortcut is None for b in blocks)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rezero_is_the_shortcut_path_at_init(family: str) -> None:
    torch.manual_seed(0)
    fam = FAMILIES[family]
    shape = (3, 32, 32) if 3 in fam.input_ranks else fam.default_input
    net = build_net(NetSpec(family, "rezero"), shape, 10).eval()
    for block in (m for m in net.modules() if isinstance(m, Block)):
        assert block.gate.a.item() == 0.0
        x = torch.randn(2, *_block_input_shape(net, block, shape))
        torch.testing.assert_close(block(x), block.shortcut(x))


def _block_input_shape(net: nn.Module, block: Block, shape: tuple[int, ...]) -> tuple[int, ...]:
    seen: list[tuple[int, ...]] = []
    handle = block.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[1:])))
    with torch.no_grad():
        net(example_input(net, shape, 2))
    handle.remove()
    return seen[0]


def test_resnet_1202_forward_backward_on_cpu() -> None:
    torch.manual_seed(0)
    net = build_net(NetSpec("resnet", "residual", 1202, 16), (3, 32, 32), 10)
    out = net(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)
    assert torch.isfinite(net.stem[0].weight.grad).all()
    assert net.stem[0].weight.grad.abs().sum() > 0


def test_one_dimensional_resnet_uses_conv1d() -> None:
    net = build_net(NetSpec("resnet", "residual", 20, 8), (1, 40), 10)
    assert any(isinstance(m, nn.Conv1d) for m in net.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in net.modules())
    assert net(torch.randn(3, 1, 40)).shape == (3, 10)


def test_norm_none_removes_batchnorm_and_adds_biases() -> None:
    net = build_net(NetSpec("resnet", "plain", 20, 16, norm="none"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "resnet", "depth": 57}, "nearest valid depths: 56 or 62"),
        ({"family": "resnet", "depth": 3}, "nearest valid depths: 8"),
        ({"family": "mlp", "depth": 5}, "depth = 2n+2"),
        ({"family": "convnet", "depth": 8}, "depth = 6k+1"),
        ({"width": 0}, "width must be a positive integer"),
        ({"family": "vgg"}, "valid: resnet, mlp, convnet"),
        ({"block": "dense"}, "valid: plain, residual, preact, rezero"),
        ({"shortcut": "D"}, "valid: A, B, C"),
        ({"norm": "layer"}, "valid: batch, none"),
        ({"family": "resnet", "stages": ((8, True),)}, "convnet family only"),
    ],
)
def test_invalid_specs_say_what_is_valid(kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("+", r"\+")):
        NetSpec(**kwargs)


def test_spec_is_frozen_and_replace_revalidates() -> None:
    spec = NetSpec("resnet", "plain", 20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.depth = 56  # type: ignore[misc]
    assert dataclasses.replace(spec, depth=56).blocks_per_stage == 9
    with pytest.raises(SpecError):
        dataclasses.replace(spec, depth=21)


@pytest.mark.parametrize(("family", "depth", "n"), [("resnet", 1202, 200), ("mlp", 10, 4), ("convnet", 13, 2)])
def test_depth_counts_weighted_layers(family: str, depth: int, n: int) -> None:
    spec = NetSpec(family, "plain", depth)
    assert spec.blocks_per_stage == n
    net = build_net(spec)
    weighted = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth


def test_input_shape_rank_is_checked() -> None:
    with pytest.raises(SpecError, match="takes inputs"):
        build_net(NetSpec("resnet"), (40,), 10)
