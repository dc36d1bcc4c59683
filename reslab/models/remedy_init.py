"""How a built net starts: the initialisation and the depth-dependent constants of the remedies for depth.

Every rule that depends on the whole net (the number of residual branches L of Fixup and of depth-scaled branches,
the number of activations a TAT C-map composes) is counted here on the built module, never restated as a formula of
the depth, so a family added later gets the right constants without a second derivation.

- kaiming: He et al. 2015 ("Delving Deep into Rectifiers"), fan-in normal, zero biases, BN weight 1 and bias 0;
- fixup: Zhang, Dauphin & Ma 2019, on top of kaiming: each branch's first weighted layer times L^(-1/(2m-2)) with
  m = 2 layers per branch, each branch's last weighted layer and the classifier zero;
- delta_orthogonal: Xiao et al. 2018 ("Dynamical Isometry and a Mean Field Theory of CNNs"), every conv kernel zero
  but for an orthogonal matrix (gain 1) at its centre, every linear layer orthogonal, zero biases;
- activation tat: Zhang, Botev & Martens 2022, the slope of the normalised leaky ReLU solved so that the net's
  C-map sends 0 to `TAT_ETA`;
- branch_scale inv_sqrt_branches: Hayou et al. 2021, every residual branch times 1/sqrt(L).

The transformer's inits, N its number of blocks (attention sublayers, counted):

- default: PyTorch's module defaults as built (nn.Embedding N(0, 1); nn.Linear uniform in +-1/sqrt(fan_in), its bias
  too; layer norm weight 1, bias 0), the default, so a net is what `torch.nn` makes of it;
- gpt2: Radford et al. 2019 as nanoGPT writes it out: every linear and embedding weight N(0, 0.02), biases 0, the
  residual output projections (attention output, fc2) N(0, 0.02/sqrt(2N)), one factor 1/sqrt(2) per sublayer;
- deepnorm: Wang et al. 2022's pseudocode for a decoder-only net: the value projection, attention output projection,
  fc1 and fc2 Xavier-normal with gain beta = (8N)^(-1/4), the query and key projections with gain 1, their biases 0;
  embeddings, head and norms as `default` leaves them;
- branch_scale deepnorm: every shortcut of the post-norm sums times alpha = (2N)^(1/4), LN(alpha·x + F(x)).

The depth parametrizations (`parametrization`): every residual branch times (L/L0)^(-alpha), L the residual
branches of the built net and L0 those of the same net at its base depth, both counted on built modules: alpha 1/2
for depth-muP (Yang et al. 2023, "Tensor Programs VI", the 1/sqrt(L) branch multiplier; Bordelon et al. 2023),
1 for CompleteP (Dey et al. 2025). Each block records its L/L0 and alpha for the optimiser's groups
(`reslab.models.blocks.param_groups`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from reslab.models.blocks import Block, TailoredLeakyReLU, init_weights
from reslab.models.catalog import DEPTH_ALPHA
from reslab.models.spec import NetSpec
from reslab.models.transformer import CausalSelfAttention, FeedForward

#: TAT's target for the C-map of the whole net at c = 0 (Zhang et al. 2022 use eta = 0.9 for leaky ReLU nets).
TAT_ETA = 0.9
#: Layers per residual branch (two weighted layers in every family's block): Fixup's m.
LAYERS_PER_BRANCH = 2
#: GPT-2's standard deviation of every linear and embedding weight (Radford et al. 2019; nanoGPT).
GPT2_STD = 0.02
#: The inits that start from He et al.'s (the convolutional and dense families').
_FROM_KAIMING = ("kaiming", "fixup", "delta_orthogonal")


def initialise(net: nn.Module, spec: NetSpec) -> nn.Module:
    """Initialise a freshly built net of `spec` in place (and return it)."""
    if spec.init in _FROM_KAIMING:
        init_weights(net)
    if spec.init == "fixup":
        fixup(net)
    elif spec.init == "delta_orthogonal":
        delta_orthogonal(net)
    elif spec.init == "gpt2":
        gpt2(net)
    elif spec.init == "deepnorm":
        deepnorm(net)
    if spec.activation == "tat":
        tailor(net, TAT_ETA)
    if spec.branch_scale == "inv_sqrt_branches":
        branches = residual_blocks(net)
        for block in branches:
            block.scale = 1.0 / math.sqrt(len(branches))
    if spec.branch_scale == "deepnorm":
        alpha = (2 * len(attention_layers(net))) ** 0.25
        for block in residual_blocks(net):
            block.shortcut_scale = alpha
    if spec.parametrization != "sp":
        depth_parametrize(net, spec)
    return net


def depth_parametrize(net: nn.Module, spec: NetSpec) -> float:
    """Every residual branch of `net` times (L/L0)^(-alpha) (see the module's docstring); returns L/L0."""
    from reslab.models.registry import build_net

    base = build_net(replace(spec, depth=spec.base_depth, parametrization="sp"))
    blocks = residual_blocks(net)
    ratio = len(blocks) / len(residual_blocks(base))
    alpha = DEPTH_ALPHA[spec.parametrization]
    for block in blocks:
        block.scale = ratio**-alpha
        block.depth_ratio, block.depth_alpha = ratio, alpha
    return ratio


def attention_layers(net: nn.Module) -> list[CausalSelfAttention]:
    """The attention sublayers of a transformer, one per block: the N of GPT-2's and DeepNet's rules."""
    return [m for m in net.modules() if isinstance(m, CausalSelfAttention)]


def gpt2(net: nn.Module) -> None:
    """GPT-2's rule (Radford et al. 2019, section 2.3; nanoGPT's `_init_weights`) on a built transformer."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, GPT2_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        residual_std = GPT2_STD / math.sqrt(2 * len(attention_layers(net)))
        for out in residual_projections(net):
            nn.init.normal_(out.weight, 0.0, residual_std)


def residual_projections(net: nn.Module) -> list[nn.Linear]:
    """The linear layers that write into the residual stream: attention's output projection and fc2."""
    return [m.out if isinstance(m, CausalSelfAttention) else m.fc2 for m in net.modules()
            if isinstance(m, (CausalSelfAttention, FeedForward))]  # fmt: skip


def deepnorm_beta(blocks: int) -> float:
    """DeepNet's beta for a decoder-only net of `blocks` blocks (Wang et al. 2022, Table 1 / Figure 2)."""
    return (8 * blocks) ** -0.25


def deepnorm(net: nn.Module) -> None:
    """DeepNet's initialisation (Wang et al. 2022) on a built transformer: Xavier-normal, gain beta on v, the
    attention output, fc1 and fc2, gain 1 on q and k; their biases 0."""
    beta = deepnorm_beta(len(attention_layers(net)))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, CausalSelfAttention):
                gains = [(m.q, 1.0), (m.k, 1.0), (m.v, beta), (m.out, beta)]
            elif isinstance(m, FeedForward):
                gains = [(m.fc1, beta), (m.fc2, beta)]
            else:
                continue
            for layer, gain in gains:
                nn.init.xavier_normal_(layer.weight, gain=gain)
                nn.init.zeros_(layer.bias)


def residual_blocks(net: nn.Module) -> list[Block]:
    """The blocks that add a shortcut to their branch: Fixup's and the scaled branches' L."""
    return [m for m in net.modules() if isinstance(m, Block) and m.shortcut is not None]


def _weighted(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def fixup(net: nn.Module) -> None:
    """Fixup's rule on a kaiming-initialised residual net without norm layers."""
    blocks = residual_blocks(net)
    factor = len(blocks) ** (-1.0 / (2 * LAYERS_PER_BRANCH - 2))
    with torch.no_grad():
        for block in blocks:
            first, *_, last = _weighted(block.branch)
            first.weight.mul_(factor)
            nn.init.zeros_(last.weight)
        classifier = _weighted(net.head)[-1]
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)


def delta_orthogonal(net: nn.Module) -> None:
    """Orthogonal kernel centres (gain 1), zero elsewhere; orthogonal linear layers; zero biases."""
    with torch.no_grad():
        for m in _weighted(net):
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
            else:
                centre = torch.empty(m.weight.shape[:2])
                nn.init.orthogonal_(centre)
                m.weight.zero_()
                m.weight[(slice(None), slice(None), *(k // 2 for k in m.weight.shape[2:]))] = centre
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def lrelu_cmap(c: float, alpha: float) -> float:
    """The C-map of one normalised leaky-ReLU layer (Zhang et al. 2022, eq. for LReLU): the correlation of two
    pre-activations after the layer, given their correlation `c` before it."""
    c = min(1.0, max(-1.0, c))
    return c + (1 - alpha) ** 2 / (math.pi * (1 + alpha**2)) * (math.sqrt(1 - c * c) - c * math.acos(c))


def net_cmap(c: float, alphas: list[float]) -> float:
    """The C-map of a plain net: one layer's map composed once per activation, in order."""
    for alpha in alphas:
        c = lrelu_cmap(c, alpha)
    return c


def tat_alpha(layers: int, eta: float = TAT_ETA) -> float:
    """The slope alpha in [0, 1] for which `layers` normalised leaky ReLUs send correlation 0 to `eta`. The
    composed map at 0 falls monotonically from the ReLU's value (alpha = 0) to 0 (alpha = 1, the identity), so
    bisection finds it to machine precision."""
    if layers < 1:
        raise ValueError(f"a TAT net needs at least one activation, got {layers}")
    if not 0 < eta < 1:
        raise ValueError(f"eta must be in (0, 1), got {eta}")
    if net_cmap(0.0, [0.0] * layers) <= eta:  # even ReLU does not reach eta: the shallowest nets
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = (low + high) / 2
        if net_cmap(0.0, [mid] * layers) > eta:
            low = mid
        else:
            high = mid
        if high - low < 1e-15:
            break
    return (low + high) / 2


def activations(net: nn.Module) -> list[TailoredLeakyReLU]:
    """The tailored activations of a net, input to output."""
    return [m for m in net.modules() if isinstance(m, TailoredLeakyReLU)]


def tailor(net: nn.Module, eta: float = TAT_ETA) -> float:
    """Give every tailored activation of `net` the slope that makes its C-map send 0 to `eta`; return it."""
    acts = activations(net)
    alpha = tat_alpha(len(acts), eta)
    for act in acts:
        act.alpha = alpha
    return alpha
