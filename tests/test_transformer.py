"""The transformer family: the parameters of a small net counted by hand, causality for every block, each recipe's
defining property at initialisation, and bad descriptions refused in one line. Nothing here trains."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reslab.models import BLOCK_KINDS, NetSpec, SpecError, build_net, describe
from reslab.models.estimate import estimate
from reslab.models.registry import example_input
from reslab.models.remedy_init import GPT2_STD, residual_blocks
from reslab.models.spec import spec_from_values, spec_key, spec_values
from reslab.models.transformer import CausalSelfAttention, FeedForward

#: The small net of the hand count: 2 blocks of width 16 with 2 heads, a context of 8, a vocabulary of 11.
SMALL = {"depth": 2, "width": 16, "heads": 2, "context": 8}
VOCAB = 11


def small(block: str, **fields) -> nn.Module:
    torch.manual_seed(0)
    return build_net(NetSpec("transformer", block, **{**SMALL, **fields}), (8,), VOCAB)


def tokens(batch: int = 3, window: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, window), generator=torch.Generator().manual_seed(seed))


def linears(net: nn.Module, role: str) -> list[nn.Linear]:
    """The linear layers of one role in every block: q, k, v, out (attention) or fc1, fc2 (MLP)."""
    kind = CausalSelfAttention if role in ("q", "k", "v", "out") else FeedForward
    return [getattr(m, role) for m in net.modules() if isinstance(m, kind)]


def pooled_std(layers: list[nn.Module]) -> float:
    return torch.cat([m.weight.detach().flatten() for m in layers]).std().item()


# -- the network ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCK_KINDS)
def test_parameter_count_of_a_small_net_by_hand(block: str) -> None:
    d, vocab, context = 16, VOCAB, 8
    embeddings = vocab * d + context * d  # tokens + learned positions
    attention = 4 * (d * d + d)  # q, k, v and the output projection, with biases
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)  # fc1 (d -> 4d) and fc2 (4d -> d)
    layer_norm = 2 * d
    head = d * vocab + vocab  # untied from the token embedding
    per_block = {
        "plain": attention + mlp + 2 * layer_norm,  # pre-norm's layers without the shortcut
        "residual": attention + mlp + 2 * layer_norm,  # one LN after each sum
        "preact": attention + mlp + 2 * layer_norm,  # one LN before each sublayer
        "rezero": attention + mlp + 1,  # one gate for both sublayers, no LN
    }[block]
    final_norm = layer_norm if block in ("plain", "preact") else 0
    expected = embeddings + 2 * per_block + final_norm + head
    assert expected == {"plain": 7083, "residual": 7051, "preact": 7083, "rezero": 6925}[block]
    net = small(block)
    assert sum(p.numel() for p in net.parameters()) == expected
    spec = NetSpec("transformer", block, **SMALL)
    assert estimate(spec, (8,), vocab).params == expected
    assert describe(spec, (8,), vocab).params == expected


def test_ids_in_logits_out_for_any_window_up_to_the_context() -> None:
    net = small("preact")
    for window in (1, 5, 8):
        out = net(tokens(window=window))
        assert out.shape == (3, window, VOCAB) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="a window of 9 tokens exceeds the net's context of 8"):
        net(tokens(window=9))


def test_the_family_default_is_a_window_of_64_tokens_over_96() -> None:
    net = build_net(NetSpec("transformer"))
    assert net(torch.zeros(2, 64, dtype=torch.long)).shape == (2, 64, 96)
    assert (net.vocab, net.context) == (96, 64)


@pytest.mark.parametrize("depth", [1, 3, 7])
def test_depth_counts_blocks_of_two_sublayers(depth: int) -> None:
    net = build_net(NetSpec("transformer", "preact", depth, 16, heads=2), (8,), VOCAB)
    assert len(linears(net, "q")) == len(linears(net, "fc1")) == depth
    assert len(net.blocks()) == len(residual_blocks(net)) == 2 * depth


@pytest.mark.parametrize("block", BLOCK_KINDS)
def test_no_logit_sees_a_later_token(block: str) -> None:
    net = small(block).eval()
    if block == "rezero":  # at init every block is the identity: open the gates so attention mixes positions
        with torch.no_grad():
            for gate in {b.gate for _, b in net.blocks()}:
                gate.a.fill_(0.5)
    ids = tokens()
    with torch.no_grad():
        before = net(ids)
        for t in range(ids.shape[1]):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % VOCAB
            after = net(changed)
            assert torch.equal(after[:, :t], before[:, :t]), f"a logit before {t} changed with token {t}"
            assert not torch.equal(after[:, t], before[:, t])


def test_the_norms_of_each_block() -> None:
    def norms(module: nn.Module) -> int:
        return sum(isinstance(m, nn.LayerNorm) for m in module.modules())

    post, pre, plain, rezero = (small(b) for b in ("residual", "preact", "plain", "rezero"))
    # post-norm (Vaswani et al. 2017): an LN after every sum, none before the head
    assert all(isinstance(b.post, nn.LayerNorm) for _, b in post.blocks()) and norms(post.head) == 0
    # pre-norm (Xiong et al. 2020; GPT-2): an LN at the start of every branch, a final LN before the head
    assert all(isinstance(b.branch[0], nn.LayerNorm) and b.post is None for _, b in pre.blocks())
    assert isinstance(pre.head[0], nn.LayerNorm) and isinstance(pre.head[1], nn.Linear)
    # plain: pre-norm's layers, no shortcut
    assert all(b.shortcut is None for _, b in plain.blocks()) and norms(plain) == norms(pre)
    assert norms(rezero) == 0


def test_a_summary_counts_macs_per_token_on_the_built_module() -> None:
    d, vocab, window, depth = 64, 96, 64, 12
    summary = describe(NetSpec("transformer", "preact", depth, d), (window,), vocab)
    # per token and block: q, k, v, out (4 d^2) and the MLP (8 d^2); the head d x vocab
    assert summary.macs_per_token == depth * 12 * d * d + d * vocab
    assert summary.macs == window * summary.macs_per_token
    assert summary.to_dict()["macs_per_token"] == summary.macs_per_token
    assert "MACs per token: 595,968" in summary.table()
    assert summary.macs == estimate(NetSpec("transformer", "preact", depth, d), (window,), vocab).macs
    assert sum(row.params for row in summary.layers) == summary.params


def test_a_transformer_spec_has_a_key_and_comes_back_from_its_tags() -> None:
    spec = NetSpec("transformer", "preact", 12, 64, heads=8, init="gpt2")
    assert spec_key(spec) == "transformer-preact-12-w64-A-layer-heads-8-init-gpt2"
    assert spec_key(NetSpec("transformer", "rezero", 6)) == "transformer-rezero-6-w64-A-none"
    assert spec_from_values({k: str(v) for k, v in spec_values(spec).items()}) == spec
    assert spec_values(NetSpec())["heads"] == spec_values(NetSpec())["context"] == "none"


def test_example_inputs_are_token_ids_below_the_vocabulary() -> None:
    net = small("residual")
    ids = example_input(net, (8,), 64, random=True)
    assert ids.dtype == torch.long and ids.shape == (64, 8) and ids.min() >= 0 and ids.max() < VOCAB
    assert torch.equal(example_input(net, (8,), 2), torch.zeros(2, 8, dtype=torch.long))


# -- the recipes at initialisation ----------------------------------------------------------------------------------


def test_rezero_blocks_are_the_identity_with_one_gate_per_block() -> None:
    net = small("rezero")
    blocks = [b for _, b in net.blocks()]
    assert all(b.gate is a.gate for a, b in zip(blocks[::2], blocks[1::2], strict=True))  # attention and MLP share
    assert sum(1 for n, _ in net.named_parameters() if n.endswith("gate.a")) == SMALL["depth"]
    ids = tokens()
    with torch.no_grad():
        h = net.stem(ids)
        for block in blocks:
            assert block.gate.a.item() == 0.0
            assert torch.equal(block(h), h)
        assert torch.equal(net(ids), net.head(net.stem(ids)))


def test_torch_init_is_pytorchs_module_defaults() -> None:
    torch.manual_seed(0)
    net = build_net(NetSpec("transformer", "preact", 4, 64), (64,), 96)
    assert NetSpec("transformer").init == "default"
    assert net.stem.tokens.weight.std().item() == pytest.approx(1.0, rel=0.1)  # nn.Embedding: N(0, 1)
    for m in net.modules():
        if isinstance(m, nn.Linear):  # nn.Linear: uniform in +-1/sqrt(fan_in), its bias too
            bound = 1 / math.sqrt(m.in_features)
            assert m.weight.abs().max() <= bound and m.bias.abs().max() <= bound and m.bias.any()


def test_gpt2_init_is_002_and_the_residual_projections_scaled_by_depth() -> None:
    depth = 6
    torch.manual_seed(0)
    net = build_net(NetSpec("transformer", "preact", depth, 64, init="gpt2"), (64,), 96)
    scaled = GPT2_STD / math.sqrt(2 * depth)
    for role in ("q", "k", "v", "fc1"):
        assert pooled_std(linears(net, role)) == pytest.approx(GPT2_STD, rel=0.1), role
    for role in ("out", "fc2"):  # attention output and fc2 write into the residual stream
        assert pooled_std(linears(net, role)) == pytest.approx(scaled, rel=0.1), role
    assert pooled_std([net.stem.tokens, net.stem.positions, net.head[-1]]) == pytest.approx(GPT2_STD, rel=0.1)
    biases = [m.bias for m in net.modules() if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def xavier_std(layer: nn.Linear, gain: float) -> float:
    return gain * math.sqrt(2.0 / (layer.in_features + layer.out_features))


def test_deepnorm_weights_the_shortcut_by_alpha_in_the_forward() -> None:
    depth = 6
    torch.manual_seed(0)
    net = build_net(NetSpec("transformer", depth=depth, width=32, heads=4, remedy="deepnorm"), (16,), VOCAB)
    alpha = (2 * depth) ** 0.25
    assert isinstance(net.head[0], nn.Linear)  # post-norm: no final LN
    h = net.stem(tokens(window=16))
    with torch.no_grad():
        for _, block in net.blocks():
            assert block.shortcut_scale == pytest.approx(alpha)
            torch.testing.assert_close(block(h), block.post(alpha * h + block.branch(h)))
            h = block(h)


def test_deepnorm_init_gains_beta_on_v_out_fc1_fc2_and_one_on_q_k() -> None:
    depth = 6
    torch.manual_seed(0)
    net = build_net(NetSpec("transformer", depth=depth, width=64, remedy="deepnorm"), (16,), VOCAB)
    beta = (8 * depth) ** -0.25
    for role, gain in (("q", 1.0), ("k", 1.0), ("v", beta), ("out", beta), ("fc1", beta), ("fc2", beta)):
        layers = linears(net, role)
        assert pooled_std(layers) == pytest.approx(xavier_std(layers[0], gain), rel=0.1), role
        assert all(torch.count_nonzero(m.bias) == 0 for m in layers), role
    # the embeddings and the head keep PyTorch's defaults
    assert net.stem.tokens.weight.std().item() == pytest.approx(1.0, rel=0.2)


def test_deepnorm_is_its_fields_and_its_constants_follow_the_depth() -> None:
    spec = NetSpec("transformer", depth=12, remedy="deepnorm")
    assert (spec.block, spec.norm, spec.init, spec.branch_scale) == ("residual", "layer", "deepnorm", "deepnorm")
    net = build_net(spec, (8,), VOCAB)
    assert all(b.shortcut_scale == pytest.approx(24**0.25) for _, b in net.blocks())  # alpha = (2N)^(1/4), N = 12


def test_scaled_is_pre_norm_with_every_branch_over_sqrt_2n() -> None:
    depth = 5
    torch.manual_seed(0)
    net = build_net(NetSpec("transformer", depth=depth, width=16, heads=2, remedy="scaled"), (8,), VOCAB)
    blocks = [b for _, b in net.blocks()]
    assert len(blocks) == 2 * depth and all(b.kind == "preact" for b in blocks)
    h = net.stem(tokens())
    with torch.no_grad():
        for block in blocks:
            assert block.scale == pytest.approx(1 / math.sqrt(2 * depth))
            torch.testing.assert_close(block(h), h + block.branch(h) / math.sqrt(2 * depth))
            h = block(h)


# -- what the family does not define ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 30, "heads": 4}, "width 30 is not a multiple of heads 4: .* choose a width such as 28 or 32"),
        ({"norm": "batch"}, "norm batch applies to the families resnet, mlp, convnet, not 'transformer'; valid: "
                            "layer"),
        ({"block": "rezero", "norm": "layer"}, "block rezero takes norm none on the transformer family"),
        ({"block": "preact", "norm": "none"}, "block preact takes norm layer on the transformer family"),
        ({"block": "residual", "norm": "none"}, "block residual takes norm layer"),
        ({"remedy": "fixup"}, "remedy 'fixup' applies to the families resnet, mlp, not 'transformer'"),
        ({"remedy": "skipinit"}, "remedy 'skipinit' applies to the families resnet, mlp, not 'transformer'"),
        ({"remedy": "tat"}, "remedy 'tat' applies to the families resnet, mlp, not 'transformer'"),
        ({"init": "kaiming"}, "init kaiming applies to the families resnet, mlp, convnet, not 'transformer'; "
                              "valid: default, gpt2, deepnorm"),
        ({"shortcut": "B"}, "shortcut B applies to the families resnet, mlp, convnet, not 'transformer'"),
        ({"block": "preact", "branch_scale": "deepnorm"}, "branch_scale deepnorm .* needs block residual, got preact"),
        ({"context": 0}, "context must be a positive integer"),
        ({"remedy": "deepnorm", "block": "preact"}, "sets block residual, but block preact was asked for"),
    ],
)  # fmt: skip
def test_bad_transformers_are_one_line(fields: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        NetSpec("transformer", **fields)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"family": "resnet", "context": 64}, "context applies to the transformer family only, not 'resnet'"),
        ({"family": "mlp", "heads": 4}, "heads applies to the transformer family only, not 'mlp'"),
        ({"family": "resnet", "init": "gpt2"}, "init gpt2 applies to the family transformer, not 'resnet'"),
        ({"family": "mlp", "init": "default"}, "init default applies to the family transformer, not 'mlp'"),
        ({"family": "resnet", "norm": "layer"}, "norm layer applies to the family transformer, not 'resnet'"),
        ({"family": "resnet", "remedy": "deepnorm"}, "remedy 'deepnorm' applies to the family transformer"),
        ({"family": "convnet", "branch_scale": "deepnorm"}, "branch_scale deepnorm applies to the family"),
    ],
)
def test_the_transformer_s_settings_on_other_families_are_one_line(fields: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        NetSpec(**fields)
    assert "\n" not in str(err.value)


def test_a_window_above_the_context_is_refused_by_build_net_and_the_estimate() -> None:
    spec = NetSpec("transformer", **SMALL)
    message = "the data's window 9 exceeds the net's context 8: set context >= 9"
    with pytest.raises(SpecError, match=message):
        build_net(spec, (9,), VOCAB)
    with pytest.raises(SpecError, match=message):
        estimate(spec, (9,), VOCAB)
    with pytest.raises(SpecError, match=r"takes inputs a \(T\) window of token ids like 64; got 1x40"):
        build_net(spec, (1, 40), VOCAB)


def test_a_grid_of_every_recipe_gives_each_block_its_own_norm() -> None:
    """Post-norm, pre-norm and no-shortcut nets take layer norm and ReZero none, so one grid holds them all, and run
    names need no norm to tell them apart; a norm a block cannot take is still one line."""
    from reslab.sweep.config import GridConfig
    from reslab.sweep.grid import expand

    grid = GridConfig(family="transformer", blocks=["plain", "residual", "preact", "rezero"],
                      remedies=["none", "deepnorm"], depths=[2, 4], widths=[16])  # fmt: skip
    cells = expand(grid)
    assert {(c.net.remedy or c.net.block, c.net.norm) for c in cells} == {
        ("plain", "layer"), ("residual", "layer"), ("preact", "layer"), ("rezero", "none"), ("deepnorm", "layer")}
    assert len(cells) == 10 and not any("-norm" in c.name for c in cells)
    with pytest.raises(ValueError, match="block rezero takes norm none on the transformer family"):
        GridConfig(family="transformer", blocks=["preact", "rezero"], norms=["layer"], depths=[2], widths=[16])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-option", "seq_len=128"], "the data's window 128 exceeds the net's context 64"),
        (["--width", "30"], "width 30 is not a multiple of heads 4"),
        (["--norm", "batch"], "norm batch applies to the families resnet, mlp, convnet, not 'transformer'"),
        (["--remedy", "fixup"], "remedy 'fixup' applies to the families resnet, mlp, not 'transformer'"),
        (["--dataset", "mnist1d"], "family transformer is a language model that reads token ids, not dataset mnist1d"),
    ],
)
def test_reslab_train_refuses_a_bad_transformer_in_one_line_before_training(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import reslab.train.run
    from reslab.cli import main

    monkeypatch.setattr(reslab.train.run, "run_one", lambda *a, **k: pytest.fail("it trained"))
    assert main(["train", "--family", "transformer", *args, "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
