"""Each remedy for depth at initialisation, by the property its paper defines it with; and the combinations the
papers do not define, refused in one line."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from reslab.models import Block, NetSpec, SpecError, build_net
from reslab.models.blocks import Multiplier, ScalarBias, TailoredLeakyReLU
from reslab.models.remedies import REMEDIES
from reslab.models.remedy_init import TAT_ETA, activations, lrelu_cmap, net_cmap, residual_blocks, tat_alpha

SHAPES = {"resnet-1d": ("resnet", (1, 40)), "resnet-2d": ("resnet", (3, 8, 8)), "mlp": ("mlp", (1, 40))}
DEPTHS = {"resnet": (20, 56), "mlp": (20, 34)}


def nets(remedy: str, **fields):
    for label, (family, shape) in SHAPES.items():
        for depth in DEPTHS[family]:
            spec = NetSpec(family, depth=depth, width=8, remedy=remedy, **fields)
            torch.manual_seed(depth)
            yield pytest.param(spec, shape, id=f"{label}-{depth}")


def features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the head sees: the output of the last block."""
    return net.stages(net.stem(x))


def weighted(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize(("name", "family"), [(n, f) for n, r in REMEDIES.items() for f in r.families])
def test_every_preset_is_its_fields_one_by_one(name: str, family: str) -> None:
    preset = REMEDIES[name]
    depth, shape = {"resnet": (20, (1, 40)), "mlp": (20, (1, 40)), "transformer": (3, (16,))}[family]
    by_name = NetSpec(family, depth=depth, remedy=name)
    by_fields = NetSpec(family, depth=depth, **preset.fields_for(family))
    assert dataclasses.replace(by_name, remedy=None) == by_fields
    assert preset.doc and preset.paper in REMEDIES[name].summary
    torch.manual_seed(0)
    a = build_net(by_name, shape)
    torch.manual_seed(0)
    b = build_net(by_fields, shape)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_default_spec_is_unchanged() -> None:
    spec = NetSpec("resnet", "residual", 20)
    assert (spec.init, spec.activation, spec.branch_scale, spec.remedy) == ("kaiming", "relu", "none", None)
    assert spec.name == "residual-20-w16"
    assert NetSpec("mlp", "residual", 20).name == "mlp-residual-20-w64"
    assert NetSpec("resnet", depth=56, width=8, remedy="fixup").name == "fixup-56-w8"


# -- Fixup (Zhang, Dauphin & Ma 2019) -----------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "shape"), list(nets("fixup")))
def test_fixup_starts_as_the_stem_and_the_shortcuts_alone(spec: NetSpec, shape: tuple[int, ...]) -> None:
    net = build_net(spec, shape, 10)
    x = torch.randn(16, *shape)
    with torch.no_grad():
        h = net.stem(x)
        for _, block in net.blocks():
            h = block.shortcut(h)
        assert torch.allclose(features(net, x), h.relu(), atol=1e-6)
        assert torch.count_nonzero(net(x)) == 0  # the zero classifier
    blocks = residual_blocks(net)
    assert len(blocks) == (3 if spec.family == "resnet" else 1) * spec.blocks_per_stage  # L = 3n, not the depth
    for block in blocks:
        kinds = [type(m) for m in block.branch]
        assert kinds.count(ScalarBias) == 4 and kinds.count(Multiplier) == 1
        assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in block.modules())
        assert torch.count_nonzero(weighted(block.branch)[-1].weight) == 0


@pytest.mark.parametrize("family", ["resnet", "mlp"])
def test_fixup_first_layers_have_hes_std_times_l_to_the_minus_half(family: str) -> None:
    depth = 56 if family == "resnet" else 34
    torch.manual_seed(0)
    net = build_net(NetSpec(family, depth=depth, width=32, remedy="fixup"), (1, 40), 10)
    blocks = residual_blocks(net)
    factor = len(blocks) ** -0.5  # L^(-1/(2m-2)), m = 2
    for block in blocks:
        first = weighted(block.branch)[0].weight
        fan_in = first[0].numel()
        expected = math.sqrt(2 / fan_in) * factor
        assert abs(first.std().item() / expected - 1) < 0.15, (first.std().item(), expected)


# -- SkipInit (De & Smith 2020) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "shape"), list(nets("skipinit")))
def test_skipinit_is_the_rezero_gate_without_norm_and_every_block_starts_as_its_shortcut(spec, shape) -> None:
    assert (spec.block, spec.norm) == ("rezero", "none")
    net = build_net(spec, shape, 10)
    h = net.stem(torch.randn(8, *shape))
    with torch.no_grad():
        for _, block in net.blocks():
            assert block.gate.a.item() == 0
            assert torch.equal(block(h), block.shortcut(h))
            h = block(h)


# -- depth-scaled branches (Hayou et al. 2021) --------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize(("spec", "shape"), list(nets("scaled")))
def test_scaled_branches_are_multiplied_by_one_over_sqrt_l(spec: NetSpec, shape, norm: str) -> None:
    spec = dataclasses.replace(spec, norm=norm)
    net = build_net(spec, shape, 10).train()
    blocks = residual_blocks(net)
    assert len(blocks) == (3 if spec.family == "resnet" else 1) * spec.blocks_per_stage
    h = net.stem(torch.randn(8, *shape))
    with torch.no_grad():
        for block in blocks:
            assert block.scale == pytest.approx(1 / math.sqrt(len(blocks)))
            expected = block.branch(h) / math.sqrt(len(blocks)) + block.shortcut(h)
            if block.post is not None:
                expected = block.post(expected)
            assert torch.allclose(block(h), expected, atol=1e-6)
            h = block(h)


# -- TAT (Zhang, Botev & Martens 2022) with delta-orthogonal weights (Xiao et al. 2018) ----------------------------


def test_one_layer_cmap_is_the_papers() -> None:
    assert lrelu_cmap(1.0, 0.3) == pytest.approx(1.0)  # identical inputs stay identical
    assert lrelu_cmap(0.4, 1.0) == 0.4  # alpha = 1 is the identity
    assert lrelu_cmap(0.0, 0.0) == pytest.approx(1 / math.pi)  # the arc-cosine kernel of ReLU at 0
    assert tat_alpha(15) < tat_alpha(50) < tat_alpha(500) < 1  # deeper nets need gentler activations
    # ReLU itself sends 0 to 0.855 after 9 layers: a net that shallow cannot reach eta, and keeps ReLU's slope
    assert net_cmap(0.0, [0.0] * 9) < TAT_ETA and tat_alpha(9) == 0.0


@pytest.mark.parametrize(("spec", "shape"), list(nets("tat")))
def test_tat_cmap_of_the_built_net_hits_eta(spec: NetSpec, shape) -> None:
    net = build_net(spec, shape, 10)
    acts = activations(net)
    assert len(acts) == spec.depth - 1  # every weighted layer but the head is followed by one
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert abs(net_cmap(0.0, [a.alpha for a in acts]) - TAT_ETA) < 1e-6
    z = torch.randn(200_000)
    assert (acts[0](z) ** 2).mean().item() == pytest.approx(1.0, abs=0.02)  # normalised: E[phi(z)^2] = 1


@pytest.mark.parametrize(("spec", "shape"), list(nets("tat")))
def test_delta_orthogonal_kernels_are_orthogonal_at_the_centre_and_zero_elsewhere(spec: NetSpec, shape) -> None:
    net = build_net(spec, shape, 10)
    for m in weighted(net):
        w = m.weight.detach()
        if isinstance(m, nn.Linear):
            centre = w
        else:
            index = (slice(None), slice(None), *(k // 2 for k in w.shape[2:]))
            centre = w[index]
            rest = w.clone()
            rest[index] = 0
            assert torch.count_nonzero(rest) == 0
        small = min(centre.shape)
        gram = centre @ centre.T if centre.shape[0] == small else centre.T @ centre
        assert torch.allclose(gram, torch.eye(small), atol=1e-5)
        if m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0


@pytest.mark.parametrize("depth", [20, 34])
def test_tat_empirical_cmap_matches_the_analytic_one_at_width_256(depth: int) -> None:
    torch.manual_seed(depth)
    net = build_net(NetSpec("mlp", depth=depth, width=256, remedy="tat"), (1, 40), 10)
    x = torch.randn(32, 1, 40)
    with torch.no_grad():
        f = features(net, x)

    def cosine(a: torch.Tensor) -> torch.Tensor:
        a = a.flatten(1)
        a = a / a.norm(dim=1, keepdim=True)
        return a @ a.T

    c_in, c_out = cosine(x), cosine(f)
    alphas = [a.alpha for a in activations(net)]
    i, j = torch.triu_indices(32, 32, offset=1)
    predicted = torch.tensor([net_cmap(float(c), alphas) for c in c_in[i, j]])
    assert (c_out[i, j] - predicted).abs().mean().item() < 0.05
    orthogonal = net_cmap(0.0, alphas)
    assert orthogonal == pytest.approx(TAT_ETA, abs=1e-6)


def test_tailored_activation_is_a_module_of_its_own() -> None:
    act = TailoredLeakyReLU(0.5)
    assert act(torch.tensor([-2.0, 2.0])).tolist() == pytest.approx([-math.sqrt(1.6), 2 * math.sqrt(1.6)])


# -- what the papers do not define --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"remedy": "fixup", "norm": "batch"}, "remedy fixup .* sets norm none, but norm batch was asked for"),
        ({"remedy": "tat", "block": "residual"}, "sets block plain, but block residual"),
        ({"remedy": "skipinit", "norm": "batch"}, "sets norm none"),
        ({"init": "fixup", "block": "residual", "norm": "batch"}, "init fixup .* needs block residual and norm none"),
        ({"activation": "tat", "block": "residual", "norm": "none"}, "activation tat .* needs block plain"),
        ({"branch_scale": "inv_sqrt_branches", "block": "plain"}, "needs block residual or preact, got plain"),
        ({"remedy": "bogus"}, "unknown remedy 'bogus'; valid: fixup, skipinit, scaled, tat"),
        ({"init": "xavier"}, "unknown init 'xavier'"),
    ],
)
def test_invalid_combinations_are_one_clear_error(fields: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        NetSpec("resnet", depth=20, **fields)
    assert "\n" not in str(err.value)


def test_remedies_are_not_defined_on_the_convnet() -> None:
    with pytest.raises(SpecError, match="remedy 'fixup' applies to the families resnet, mlp, not 'convnet'"):
        NetSpec("convnet", remedy="fixup")
    with pytest.raises(SpecError, match="init delta_orthogonal applies to the families resnet, mlp, not 'convnet'"):
        NetSpec("convnet", init="delta_orthogonal")


def test_blocks_found_by_the_trunk_are_the_remedy_blocks() -> None:
    net = build_net(NetSpec("resnet", depth=20, width=4, remedy="scaled"), (1, 40))
    assert all(isinstance(b, Block) and b.scale is not None for _, b in net.blocks())


def test_fixup_scalars_train_at_a_tenth_of_the_learning_rate() -> None:
    from reslab.models.blocks import param_groups

    net = build_net(NetSpec("resnet", depth=20, width=4, remedy="fixup"), (1, 40))
    weights, scalars = param_groups(net, 0.1)
    assert weights["lr"] == 0.1 and scalars["lr"] == pytest.approx(0.01)
    assert len(scalars["params"]) == 5 * len(residual_blocks(net))  # 4 biases and 1 multiplier per branch
    assert all(p.dim() == 0 for p in scalars["params"])
    assert len(param_groups(build_net(NetSpec("resnet", depth=20, width=4), (1, 40)), 0.1)) == 1
