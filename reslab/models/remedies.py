"""The known remedies for depth, each a named preset of explicit `NetSpec` fields.

He et al. 2015 cured the degradation of deep plain nets with shortcuts; later work trains deep nets by other
means: without normalisation (Fixup, SkipInit), by scaling the branches down with depth, or with no shortcut at
all (TAT); deep post-norm Transformers by weighting the shortcut up and the branches' initialisation down
(DeepNet). A preset is only a short name: `NetSpec(remedy="fixup")` is the same network as
`NetSpec(block="residual", norm="none", init="fixup")`, so every remedy is also reachable field by field and the
cells of older sweeps keep their keys. Fields a preset leaves out (the norm of `scaled`) stay free. Each preset is
defined on the families its paper's rule applies to, with the settings that mean the rule there (`scaled` is
pre-norm on the transformer: its post-norm `residual` block renormalises the residual stream after every branch).

Torch-free, like the catalog, so the CLI and the config schema can check a remedy without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reslab.models.rules import SpecError

#: The families of He et al.'s blocks, on which every remedy for convolutional and dense nets is defined.
SIGNAL_FAMILIES: tuple[str, ...] = ("resnet", "mlp")


@dataclass(frozen=True)
class Remedy:
    """A preset: its `name`, the spec fields it sets, the paper it comes from and the rule it implements (`doc`);
    the `families` it is defined on, and for some of them other settings that mean the same rule there
    (`family_fields`, on top of `fields`)."""

    name: str
    fields: dict[str, str]
    paper: str
    doc: str
    families: tuple[str, ...] = SIGNAL_FAMILIES
    family_fields: Mapping[str, dict[str, str]] = field(default_factory=dict)

    def fields_for(self, family: str) -> dict[str, str]:
        """The spec fields the preset sets on `family`."""
        return {**self.fields, **self.family_fields.get(family, {})}

    @property
    def summary(self) -> str:
        """One line for CLI help and error messages."""

        def settings(fields: dict[str, str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in fields.items())

        first, *others = self.families
        text = settings(self.fields_for(first))
        if first not in SIGNAL_FAMILIES:  # a preset of one family only says which
            text = f"{first}, {text}"
        text += "".join(f"; on the {f}: {settings(self.fields_for(f))}" for f in others if f in self.family_fields)
        return f"{self.name} ({self.paper}: {text})"


REMEDIES: dict[str, Remedy] = {}


def _preset(
    paper: str, families: tuple[str, ...] = SIGNAL_FAMILIES, **family_fields: dict[str, str]
) -> Callable[[Callable[[], dict[str, str]]], Callable[[], dict[str, str]]]:
    def register(fn: Callable[[], dict[str, str]]) -> Callable[[], dict[str, str]]:
        doc = " ".join((fn.__doc__ or "").split())
        REMEDIES[fn.__name__] = Remedy(fn.__name__, fn(), paper, doc, families, family_fields)
        return fn

    return register


@_preset("Zhang, Dauphin & Ma 2019")
def fixup() -> dict[str, str]:
    """Fixup ("Fixup Initialization: Residual Learning Without Normalization"): a residual net with no
    normalisation layer. Each branch's first layer starts at He's std times L^(-1/(2m-2)), with L the number of
    residual branches (3n for a 6n+2 net, not its depth) and m = 2 layers per branch, so L^(-1/2); each branch's
    last layer and the classifier start at zero, so every block is the identity at initialisation; a learnable
    scalar bias (0) before each weighted layer and activation and a scalar multiplier (1) per branch take the place
    of batch norm's affine parameters."""
    return {"block": "residual", "norm": "none", "init": "fixup"}


@_preset("De & Smith 2020")
def skipinit() -> dict[str, str]:
    """SkipInit ("Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep Networks"):
    y = a·F(x) + x with the learnable scalar a = 0 at initialisation, without batch norm. It is the same gate as
    ReZero (Bachlechner et al. 2020), which introduced it for Transformers without LayerNorm; SkipInit for ResNets
    without batch norm. Here it is the `rezero` block with norm none."""
    return {"block": "rezero", "norm": "none"}


@_preset("Hayou et al. 2021", (*SIGNAL_FAMILIES, "transformer"), transformer={"block": "preact"})
def scaled() -> dict[str, str]:
    """Depth-scaled branches ("Stable ResNet"; the depth-muP of Yang et al. 2023 and Bordelon et al. 2023):
    y = x + F(x)/sqrt(L) with L the number of residual branches, so the variance of the signal grows by a bounded
    factor over the whole depth instead of with every block. The multiplier is fixed; with or without batch norm.
    On the transformer it scales the pre-norm sublayers, x + F(LN(x))/sqrt(L) with L = 2N for N blocks (each block
    has two residual branches, attention and MLP): pre-norm keeps the residual stream unnormalised, the sum the
    rule is derived for, where post-norm would renormalise it after every branch."""
    return {"block": "residual", "branch_scale": "inv_sqrt_branches"}


@_preset("Zhang, Botev & Martens 2022")
def tat() -> dict[str, str]:
    """Tailored Activation Transformations ("Deep Learning without Shortcuts"): a plain net without normalisation,
    delta-orthogonal weights (Xiao et al. 2018: an orthogonal matrix at the kernel centre, gain 1, zero elsewhere)
    and the normalised leaky ReLU sqrt(2/(1+alpha^2))·LReLU_alpha, with alpha chosen from the depth so that the
    network's C-map sends correlation 0 to eta = 0.9. One layer's C-map is
    c -> c + (1-alpha)^2/(pi(1+alpha^2)) · (sqrt(1-c^2) - c·arccos c); the net composes it once per activation."""
    return {"block": "plain", "norm": "none", "init": "delta_orthogonal", "activation": "tat"}


@_preset("Wang et al. 2022", ("transformer",))
def deepnorm() -> dict[str, str]:
    """DeepNorm ("DeepNet: Scaling Transformers to 1,000 Layers"): a post-norm Transformer whose every sublayer
    computes LN(alpha·x + F(x)) with alpha = (2N)^(1/4), and whose value projection, attention output projection
    and both MLP layers start Xavier-normal with gain beta = (8N)^(-1/4) (query and key projections with gain 1),
    N the number of blocks: the decoder-only constants of the paper's pseudocode (and of microsoft/torchscale).
    The update of the model's output is then bounded by a constant independent of N, so post-norm's final quality
    is kept without its instability at depth."""
    return {"block": "residual", "init": "deepnorm", "branch_scale": "deepnorm"}


#: What a grid's `remedies` list may hold: a preset, or `none` for the grid's own blocks and norms.
NO_REMEDY = "none"
REMEDY_CHOICES: tuple[str, ...] = (NO_REMEDY, *REMEDIES)


def remedy(name: str) -> Remedy:
    """The preset called `name`; a SpecError naming the valid ones otherwise."""
    if name not in REMEDIES:
        raise SpecError(f"unknown remedy {name!r}; valid: {', '.join(REMEDIES)}")
    return REMEDIES[name]
