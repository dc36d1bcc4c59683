"""The analytic estimate against the nets the builders make: parameters and MACs to the unit, saved activations
against what autograd really saves."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys

import pytest
import torch

from reslab.models import BLOCK_KINDS, FAMILIES, NetSpec, SpecError, build_net, describe
from reslab.models.estimate import Estimate, estimate
from reslab.models.registry import example_input
from reslab.models.remedies import REMEDIES

# The second depth of each family has 4 blocks per stage: from the fourth block on the estimate multiplies instead
# of walking, so only these nets check that closed form against real ones.
DEPTHS = {"resnet": (8, 26), "mlp": (4, 10), "convnet": (7, 25), "transformer": (1, 4)}
WIDTHS = (4, 6)
# Odd sizes on purpose: strided convs, zero-pad slicing and ceil-mode max-pools must agree on ceil(s / 2); token
# windows shorter than and equal to the transformer's context.
SHAPES = {"resnet": [(1, 9), (3, 7, 6)], "mlp": [(2, 3, 3), (12,)], "convnet": [(1, 9), (3, 7, 5)],
          "transformer": [(5,), (7,)]}  # fmt: skip
#: The transformer's own fields: 2 heads divide both widths, a context of 7 takes both windows.
OWN = {"transformer": {"heads": 2, "context": 7}}
CLASSES = 3


def saved_bytes(net: torch.nn.Module, input_shape: tuple[int, ...], batch: int) -> int:
    """Bytes that autograd saves for backward in one training-mode forward pass: each storage once (an input
    saved by two ops, or a view of it, is one tensor in memory), parameters left out."""
    net.train()
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(example_input(net, input_shape, batch, random=True))
    return sum(seen.values())


def saved_bytes_per_example(net: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """The growth of the saved bytes per example added to the batch. Batch norm also saves 4 values per channel
    whatever the batch; a plain total / batch would charge them to the examples (about 20 % for a narrow dense
    net at batch 8)."""
    return (saved_bytes(net, input_shape, 16) - saved_bytes(net, input_shape, 8)) / 8


def _cases() -> list:
    """Every family, block, shortcut, norm and depth the family builds; widths and input shapes alternate between
    them so that each block kind meets both widths and both input ranks without multiplying the (slow) built nets by
    four."""
    cases = []
    for family, fam in FAMILIES.items():
        for (b, block), (s, shortcut), (n, norm), (d, depth) in itertools.product(
            *(enumerate(values) for values in (BLOCK_KINDS, fam.valid("shortcut"), fam.valid("norm"), DEPTHS[family]))
        ):
            if norm not in fam.valid("norm", block):
                continue
            width = WIDTHS[(s + n + d) % 2]
            shape = SHAPES[family][(b + s + d) % 2]
            name = f"{family}-{block}-{shortcut}-{norm}-d{depth}-w{width}-{'x'.join(map(str, shape))}"
            cases.append(pytest.param(family, block, shortcut, norm, depth, width, shape, id=name))
    return cases


@pytest.mark.parametrize(("family", "block", "shortcut", "norm", "depth", "width", "shape"), _cases())
def test_estimate_matches_the_built_net(
    family: str, block: str, shortcut: str, norm: str, depth: int, width: int, shape: tuple[int, ...]
) -> None:
    spec = NetSpec(family, block, depth, width, shortcut, norm, **OWN.get(family, {}))
    est = estimate(spec, shape, CLASSES)
    torch.manual_seed(0)
    net = build_net(spec, shape, CLASSES)
    assert est.params == sum(p.numel() for p in net.parameters())
    assert est.macs == describe(spec, shape, CLASSES).macs
    measured = saved_bytes_per_example(net, shape)
    assert abs(est.activation_bytes - measured) <= 0.2 * measured, (est.activation_bytes, measured)


def _remedy_cases() -> list:
    """Each remedy on each net it is defined on, with each norm it leaves free."""
    nets = [("resnet", 26, (1, 9)), ("resnet", 8, (3, 7, 6)), ("mlp", 10, (12,)), ("transformer", 4, (7,))]
    cases = []
    for (family, depth, shape), (name, preset) in itertools.product(nets, REMEDIES.items()):
        if family not in preset.families:
            continue
        fields = preset.fields_for(family)
        block = fields.get("block", "residual")
        for norm in [fields["norm"]] if "norm" in fields else FAMILIES[family].valid("norm", block):
            cases.append(pytest.param(name, norm, family, depth, shape, id=f"{name}-{norm}-{family}-{depth}"))
    return cases


@pytest.mark.parametrize(("remedy", "norm", "family", "depth", "shape"), _remedy_cases())
def test_estimate_matches_the_remedies(remedy: str, norm: str, family: str, depth: int, shape: tuple[int, ...]) -> None:
    """Fixup's scalar biases and multipliers, TAT's leaky ReLU (which saves its input, not its output), the scaled
    branches with and without batch norm, DeepNet's weighted shortcuts: exact, activations included."""
    spec = NetSpec(family, depth=depth, width=6, norm=norm, remedy=remedy, **OWN.get(family, {}))
    est = estimate(spec, shape, CLASSES)
    net = build_net(spec, shape, CLASSES)
    assert est.params == sum(p.numel() for p in net.parameters())
    assert est.macs == describe(spec, shape, CLASSES).macs
    measured = saved_bytes_per_example(net, shape)
    assert est.activation_bytes == measured


@pytest.mark.parametrize("shortcut", ["B", "C"])
@pytest.mark.parametrize("block", BLOCK_KINDS)
def test_convnet_with_stages_that_shrink_and_skip_pooling(block: str, shortcut: str) -> None:
    spec = NetSpec("convnet", block, 13, 4, shortcut, "batch", stages=((6, True), (4, False), (8, True)))
    est = estimate(spec, (3, 5, 6), 2)
    net = build_net(spec, (3, 5, 6), 2)
    assert est.params == sum(p.numel() for p in net.parameters())
    assert est.macs == describe(spec, (3, 5, 6), 2).macs
    measured = saved_bytes_per_example(net, (3, 5, 6))
    assert abs(est.activation_bytes - measured) <= 0.2 * measured


def test_paper_nets_without_building_them() -> None:
    # He et al. 2015, Table 6 (ResNet-1202: 19.4M) and ResNet-56's MACs, as test_models.py holds them.
    assert estimate(NetSpec("resnet", "residual", 1202, 16, "A"), (3, 32, 32), 10).params == 19_421_274
    assert estimate(NetSpec("resnet", "residual", 56, 16), (3, 32, 32), 10).macs == 125_485_696
    seed_convnet = NetSpec("convnet")
    assert estimate(seed_convnet, (3, 32, 32), 1).params == 297_697


@pytest.mark.parametrize("block", BLOCK_KINDS)
def test_depth_600002_is_the_small_nets_extrapolated(block: str) -> None:
    # depth 6n+2: one more block per stage adds exactly what 8 -> 14 adds, both checked against built nets above.
    def at(depth: int) -> Estimate:
        return estimate(NetSpec("resnet", block, depth, 8, "A"), (1, 40), 10)

    small, step = at(8), [b - a for a, b in zip(dataclasses.astuple(at(8)), dataclasses.astuple(at(14)), strict=True)]
    n = (600_002 - 2) // 6
    deep = at(600_002)
    assert dataclasses.astuple(deep) == tuple(
        s + d * (n - 1) for s, d in zip(dataclasses.astuple(small), step, strict=True)
    )
    # one block per stage: two 3-tap convs and two BNs on 8, 16 and 32 channels (shortcut A adds nothing)
    assert step[0] == sum(2 * 3 * c * c + 4 * c for c in (8, 16, 32)) + (block == "rezero") * 3


def test_width_100000_in_closed_form() -> None:
    w = 100_000
    est = estimate(NetSpec("mlp", "residual", 4, w, "A", "batch"), (1, 40), 10)
    # input projection (no bias under BN) + BN, one block of two w x w linears + BNs, biased head
    assert est.params == (40 * w + 2 * w) + 2 * (w * w + 2 * w) + (w * 10 + 10)
    assert est.macs == 40 * w + 2 * w * w + 10 * w
    # saved per example: the input, then stem BN in + ReLU out, the block's BN ins, ReLU out and output ReLU
    assert est.activation_bytes == 4 * (40 + 6 * w)


def test_training_bytes() -> None:
    est = Estimate(params=1000, macs=0, activation_bytes=400)
    assert est.training_bytes(8) == 1000 * 4 * 3 + 400 * 8
    assert est.training_bytes(8, bytes_per_value=2) == 1000 * 4 * 3 + 200 * 8
    assert est.training_bytes(0) == 12_000
    with pytest.raises(ValueError):
        est.training_bytes(-1)


def test_refuses_what_build_net_refuses() -> None:
    with pytest.raises(SpecError, match="takes inputs"):
        estimate(NetSpec("resnet"), (40,), 10)
    with pytest.raises(SpecError, match="classes"):
        estimate(NetSpec("mlp"), (1, 40), 0)
    shrinking = NetSpec("convnet", "residual", 7, 4, "A", stages=((8, True), (4, False), (8, False)))
    with pytest.raises(ValueError, match="cannot shrink"):
        build_net(shrinking, (3, 8, 8), 2)
    with pytest.raises(SpecError, match="cannot shrink"):
        estimate(shrinking, (3, 8, 8), 2)


def test_the_estimate_and_the_spec_import_no_torch() -> None:
    """The dry run and the config checks size nets through these two modules: neither may pull torch in."""
    spec = NetSpec("resnet", "preact", 20, 16, "B")
    code = """
import json, sys
from reslab.models.estimate import estimate
from reslab.models.spec import NetSpec
est = estimate(NetSpec("resnet", "preact", 20, 16, "B"), (3, 32, 32), 10)
print(json.dumps([est.params, est.macs, est.activation_bytes, "torch" in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    *numbers, torch_loaded = json.loads(out)
    assert not torch_loaded
    assert tuple(numbers) == dataclasses.astuple(estimate(spec, (3, 32, 32), 10))


@pytest.mark.parametrize("block", BLOCK_KINDS)
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_estimate_matches_a_one_layer_branch_and_a_depth_parametrized_net(block: str, norm: str) -> None:
    """The mlp with one linear layer per branch (depth n + 2), and under depth-muP (its branch multiplier is a
    constant, which saves nothing for the backward pass)."""
    specs = [NetSpec("mlp", block, 7, 6, norm=norm, branch_layers=1)]
    if block == "preact" and norm == "none":
        specs += [NetSpec("mlp", block, 7, 6, norm=norm, branch_layers=1, parametrization="depth_mup"),
                  NetSpec("mlp", block, 10, 6, norm=norm, parametrization="completep", base_depth=6)]  # fmt: skip
    for spec in specs:
        est = estimate(spec, (12,), CLASSES)
        net = build_net(spec, (12,), CLASSES)
        assert est.params == sum(p.numel() for p in net.parameters())
        assert est.macs == describe(spec, (12,), CLASSES).macs
        measured = saved_bytes_per_example(net, (12,))
        assert abs(est.activation_bytes - measured) <= 0.2 * measured, (spec, est.activation_bytes, measured)
