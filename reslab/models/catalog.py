"""The names a network is described by, without torch: families with their depth rules, defaults and the values of
each named setting they take, block kinds, shortcuts and norms.

The CLI's choices, the sweep config's schema, `NetSpec`'s validation and the builders all read these, so there is
one list of what exists. Kept free of torch so that `reslab --help` and a config error answer at once: importing
torch alone takes seconds, far longer than the whole check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reslab.models.rules import DepthRule

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec

#: How a block combines its branch F with its input (He et al. 2015, 2016; the gate y = a·F(x) + x of ReZero).
BLOCK_KINDS: tuple[str, ...] = ("plain", "residual", "preact", "rezero")
#: He et al. 2015 §3.3: zero-padding (A), projection where the shape changes (B), projection everywhere (C).
SHORTCUTS: tuple[str, ...] = ("A", "B", "C")
#: Batch norm (Ioffe & Szegedy 2015) for the convolutional and dense families, layer norm (Ba et al. 2016) for the
#: transformer, or none.
NORMS: tuple[str, ...] = ("batch", "layer", "none")
#: How the weights start: He et al. 2015 ("Delving Deep into Rectifiers"), Fixup (Zhang, Dauphin & Ma 2019) or
#: delta-orthogonal (Xiao et al. 2018) for the convolutional and dense families; for the transformer PyTorch's own
#: module defaults (`default`), GPT-2's (Radford et al. 2019) or DeepNet's (Wang et al. 2022).
INITS: tuple[str, ...] = ("kaiming", "fixup", "delta_orthogonal", "default", "gpt2", "deepnorm")
#: The nonlinearity: ReLU, TAT's normalised leaky ReLU tailored to the depth (Zhang, Botev & Martens 2022), or the
#: transformer's GELU (Hendrycks & Gimpel 2016).
ACTIVATIONS: tuple[str, ...] = ("relu", "tat", "gelu")
#: A fixed multiplier in every residual sum: none, 1/sqrt(L) on the branch for L residual branches (Hayou et al.
#: 2021), or DeepNet's alpha = (2N)^(1/4) on the shortcut of a post-norm transformer of N blocks (Wang et al. 2022).
BRANCH_SCALES: tuple[str, ...] = ("none", "inv_sqrt_branches", "deepnorm")
#: How the residual update and the optimiser scale with depth: standard (`sp`), depth-muP (Yang et al. 2023,
#: "Tensor Programs VI"; Bordelon et al. 2023) or CompleteP (Dey et al. 2025). Each is x + (L/L0)^(-alpha)·F(x) for
#: L residual branches against L0 at the base depth, alpha in `DEPTH_ALPHA`, with its own optimiser groups.
PARAMETRIZATIONS: tuple[str, ...] = ("sp", "depth_mup", "completep")
DEPTH_ALPHA: dict[str, float] = {"sp": 0.0, "depth_mup": 0.5, "completep": 1.0}
#: What the convolutional and dense families build, each default first: every remedy for depth is defined on them.
_SIGNAL_CHOICES: dict[str, tuple[str, ...]] = {
    "block": BLOCK_KINDS, "shortcut": SHORTCUTS, "norm": ("batch", "none"),
    "init": ("kaiming", "fixup", "delta_orthogonal"), "activation": ("relu", "tat"),
    "branch_scale": ("none", "inv_sqrt_branches"), "parametrization": PARAMETRIZATIONS,
}  # fmt: skip


@dataclass(frozen=True)
class FamilyInfo:
    """A family's name, depth rule and defaults: everything about it but its builder (`reslab.models.registry`).

    `choices` holds, for each named `NetSpec` field, the values this family builds, its default first (the
    shortcut's and the norm's defaults are `default_shortcut` and `default_norm`); `block_norms` narrows the norms
    per block where the family's blocks need one norm (the transformer's post-norm needs layer norm and its ReZero
    none), so that two names never build the same net; `own_fields` are the fields only this family has (the
    transformer's heads and context), with their defaults: other families leave them unset and refuse them.
    """

    name: str
    description: str
    depth_rule: Callable[[NetSpec], DepthRule]
    default_depth: int
    default_width: int
    default_shortcut: str
    default_norm: str
    default_input: tuple[int, ...]
    default_classes: int
    input_ranks: tuple[int, ...]  # accepted len(input_shape): 1 = (F) or a (T) token window, 2 = (C, L), 3 = (C, H, W)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(_SIGNAL_CHOICES))
    block_norms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    own_fields: Mapping[str, int] = field(default_factory=dict)
    tokens: bool = False  # inputs are token ids (B, T) and outputs logits (B, T, classes) for every position
    default_dataset: str = "mnist1d"  # what `reslab train` and `reslab probe` read when no --dataset is given

    def valid(self, name: str, block: str | None = None) -> tuple[str, ...]:
        """The values of the named field `name` that this family builds (for the norm: with `block`)."""
        if name == "norm" and block in self.block_norms:
            return self.block_norms[block]
        return self.choices[name]

    def default(self, name: str, block: str | None = None) -> object:
        """This family's default for field `name` (for the norm: of `block`); None for another family's own field."""
        if name == "norm":
            norms = self.valid("norm", block)
            return self.default_norm if self.default_norm in norms else norms[0]
        if hasattr(self, f"default_{name}"):  # depth, width, shortcut
            return getattr(self, f"default_{name}")
        if name in self.choices:
            return self.choices[name][0]
        return self.own_fields.get(name)


def _rule(step: int, offset: int, form: str) -> Callable[[NetSpec], DepthRule]:
    rule = DepthRule(step, offset, form)
    return lambda spec: rule


def _mlp_rule(spec: NetSpec) -> DepthRule:
    k = spec.branch_layers or 2
    return DepthRule(k, 2, f"{k}n+2")


def _convnet_rule(spec: NetSpec) -> DepthRule:
    s = len(spec.stages) if spec.stages else 3
    return DepthRule(2 * s, 1, f"{2 * s}k+1 for {s} stages")


FAMILY_INFO: dict[str, FamilyInfo] = {
    "resnet": FamilyInfo(
        "resnet", "He et al. 2015 CIFAR ResNet, 6n+2 layers, widths w/2w/4w",
        _rule(6, 2, "6n+2"), 20, 16, "A", "batch", (3, 32, 32), 10, (2, 3),
    ),
    # Two linear layers per residual branch by default (depth 2n+2); one (depth n+2) is the branch depth-muP's
    # transfer is proven for (Yang et al. 2023).
    "mlp": FamilyInfo(
        "mlp", "dense residual net, a_{l+2} = g(z_{l+2} + a_l), 2n+2 linear layers of width w (n+2 with one layer "
        "per branch)", _mlp_rule, 10, 64, "A", "batch", (1, 40), 10, (1, 2, 3), own_fields={"branch_layers": 2},
    ),
    "convnet": FamilyInfo(
        "convnet", "the Keras residual convnet example: stages of two 3x3 convs + max-pool",
        _convnet_rule, 7, 32, "B", "none", (3, 32, 32), 1, (2, 3),
        # no remedy for depth is defined on the Keras example's convnet: its own recipe only
        choices={**_SIGNAL_CHOICES, "init": ("kaiming",), "activation": ("relu",), "branch_scale": ("none",),
                 "parametrization": ("sp",)},
    ),
    # A decoder-only causal language model over a window of 64 token ids with a vocabulary of 96 (printable ASCII
    # and newline): depth counts blocks of attention + MLP, width is d_model. Its shortcuts are identities (the
    # width never changes), so only shortcut A exists; post-norm and pre-norm need layer norm, ReZero has none.
    "transformer": FamilyInfo(
        "transformer", "decoder-only causal transformer: token + learned position embeddings, N blocks of causal "
        "self-attention and a 4x GELU MLP, a linear head over the vocabulary",
        _rule(1, 0, "n blocks"), 4, 64, "A", "layer", (64,), 96, (1,),
        choices={"block": BLOCK_KINDS, "shortcut": ("A",), "norm": ("layer", "none"),
                 "init": ("default", "gpt2", "deepnorm"), "activation": ("gelu",),
                 "branch_scale": ("none", "inv_sqrt_branches", "deepnorm"), "parametrization": PARAMETRIZATIONS},
        block_norms={"plain": ("layer",), "residual": ("layer",), "preact": ("layer",), "rezero": ("none",)},
        own_fields={"heads": 4, "context": 64},
        tokens=True, default_dataset="text",
    ),
}  # fmt: skip


def output_units(spec: NetSpec, num_classes: int) -> int:
    """A binary dataset on a family whose head is one sigmoid unit (the Keras example's convnet) gets 1 output and
    BCE."""
    return 1 if num_classes == 2 and FAMILY_INFO[spec.family].default_classes == 1 else num_classes
