"""Building blocks shared by every family: the block that combines a branch F with a shortcut.

He et al. 2015 ("Deep Residual Learning", §3) write a residual unit as y = relu(F(x) + W_s x); He et al. 2016
("Identity Mappings") move the activation into F (pre-activation); ReZero (Bachlechner et al. 2020) gates the
branch, y = a·F(x) + x with a = 0 at init. All of them, and the plain net of the same layers, are one `Block` with
a different `kind`, so the comparison between plain and residual is controlled by construction: same layers, same
init, only the sum differs.

The optional `tap` lets gradient telemetry (reslab.train) see the gradient that reaches the block input through the
branch and through the shortcut separately, inside the one backward pass that training runs anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from reslab.models.catalog import BLOCK_KINDS, NORMS, SHORTCUTS  # noqa: F401 - NORMS: re-exported

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec

BlockKind = Literal["plain", "residual", "preact", "rezero"]

#: A tap takes the block input and returns (input seen by the branch, input seen by the shortcut).
Tap = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Ops:
    """The layer constructors for one dimensionality: Conv1d/BatchNorm1d for sequences, Conv2d/BatchNorm2d for
    images, Linear/BatchNorm1d for the dense family. Families ask for layers by role, not by class."""

    def __init__(self, dims: int, activation: str = "relu") -> None:
        if dims not in (0, 1, 2):
            raise ValueError(f"dims must be 0 (dense), 1 or 2, got {dims}")
        self.dims = dims
        self.activation = activation

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Module:
        cls = nn.Conv1d if self.dims == 1 else nn.Conv2d
        return cls(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)

    def linear(self, fin: int, fout: int, bias: bool = True) -> nn.Module:
        return nn.Linear(fin, fout, bias=bias)

    def norm(self, channels: int, norm: str) -> nn.Module:
        if norm == "none":
            return nn.Identity()
        return nn.BatchNorm2d(channels) if self.dims == 2 else nn.BatchNorm1d(channels)

    def act(self, norm: str) -> nn.Module:
        """The ReLU after a norm layer: in place behind batch norm, whose output is a fresh tensor nothing else
        reads (batch norm's backward needs its input, not its output), as torchvision's ResNets do; one allocation
        and one pass over memory fewer per ReLU. Without norm the ReLU may follow a block's input itself (the
        pre-activation unit), which the shortcut still reads: out of place there. TAT nets take the tailored
        leaky ReLU instead (its slope is set once the whole net is built, see `reslab.models.remedy_init`)."""
        return self.post_act(inplace=norm == "batch")

    def post_act(self, inplace: bool = True) -> nn.Module:
        """The activation on a fresh tensor (a residual sum, a plain block's output): in place for ReLU."""
        return TailoredLeakyReLU() if self.activation == "tat" else nn.ReLU(inplace=inplace)

    def max_pool(self) -> nn.Module:
        # ceil_mode reproduces Keras' MaxPooling(2, padding="same") on odd sizes, as the Keras example's model does.
        cls = nn.MaxPool1d if self.dims == 1 else nn.MaxPool2d
        return cls(2, ceil_mode=True)

    def global_pool(self) -> nn.Module:
        cls = nn.AdaptiveAvgPool1d if self.dims == 1 else nn.AdaptiveAvgPool2d
        return cls(1)


class ZeroPadShortcut(nn.Module):
    """He et al. 2015 option A: strided subsampling, then extra channels filled with zeros. No parameters, so a
    residual net has exactly the parameters of its plain twin."""

    def __init__(self, stride: int, extra_channels: int, dims: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * self.dims]
        if self.extra_channels:
            x = F.pad(x, (0, 0) * self.dims + (0, self.extra_channels))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class TailoredLeakyReLU(nn.Module):
    """TAT's normalised leaky ReLU (Zhang, Botev & Martens 2022): sqrt(2/(1+alpha^2))·LReLU_alpha(x), so that
    E[phi(z)^2] = 1 for z ~ N(0, 1). `alpha` is chosen for the whole net from its number of activations
    (`reslab.models.remedy_init.tailor`); 0 is a plain, rescaled ReLU."""

    def __init__(self, alpha: float = 0.0) -> None:
        super().__init__()
        self.alpha = alpha

    @property
    def gain(self) -> float:
        return math.sqrt(2.0 / (1.0 + self.alpha**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.alpha) * self.gain

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.6g}"


#: Zhang et al. 2019 (Fixup, §3 and their reference training script) train the scalar biases and multipliers at a
#: tenth of the learning rate of the weights: a scalar moves every activation of its layer at once.
FIXUP_SCALAR_LR = 0.1


class ScalarBias(nn.Module):
    """Fixup's learnable scalar bias (Zhang et al. 2019), 0 at initialisation: one number per site, shared by all
    channels, in place of a norm layer's per-channel shift. Trained at `lr_factor` times the learning rate."""

    lr_factor = FIXUP_SCALAR_LR

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Multiplier(nn.Module):
    """Fixup's learnable scalar multiplier of a branch (Zhang et al. 2019), 1 at initialisation. Trained at
    `lr_factor` times the learning rate."""

    lr_factor = FIXUP_SCALAR_LR

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Gate(nn.Module):
    """The learnable scalar a of y = a·F(x) + x (ReZero, Bachlechner et al. 2020), initialised to 0 so each block
    starts as the identity. A module of its own so summaries and telemetry can find it by name."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.a * f


def make_shortcut(option: str, ops: Ops, cin: int, cout: int, stride: int, norm: str) -> nn.Module:
    """The shortcut W_s of He et al. 2015 §3.3: identity where shapes match (A, B), zero-pad (A) or a 1x1 projection
    with norm (B) where they change, a projection on every block (C)."""
    same_shape = cin == cout and stride == 1
    if option not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {option!r}; valid: {', '.join(SHORTCUTS)}")
    if same_shape and option in ("A", "B"):
        return nn.Identity()
    if option == "A":
        if cout < cin:
            raise ValueError(f"shortcut A cannot shrink channels ({cin} -> {cout}); use B or C")
        return ZeroPadShortcut(stride, cout - cin, ops.dims)
    bias = norm == "none"
    proj = ops.linear(cin, cout, bias) if ops.dims == 0 else ops.conv(cin, cout, 1, stride=stride, bias=bias)
    return nn.Sequential(proj, ops.norm(cout, norm)) if norm != "none" else proj


class Block(nn.Module):
    """One unit of depth. With F = `branch` and S = `shortcut`:

    - plain:    y = post(F(x))             (no shortcut at all)
    - residual: y = post(F(x) + S(x))      (He 2015)
    - preact:   y = F(x) + S(x)            (He 2016; F starts with norm-ReLU)
    - rezero:   y = a·F(x) + S(x), a = 0   (ReZero)

    `scale` multiplies F(x) by a fixed number (depth-scaled branches, Hayou et al. 2021) and `shortcut_scale`
    S(x) (DeepNet's alpha, Wang et al. 2022); `reslab.models.remedy_init` sets them once the whole net is built.
    `gate` passes in a gate that another block shares (a Transformer block's two sublayers, Bachlechner et al.
    2020); a rezero block makes its own otherwise.
    """

    def __init__(
        self,
        kind: str,
        branch: nn.Module,
        shortcut: nn.Module | None,
        post: nn.Module | None = None,
        gate: Gate | None = None,
    ) -> None:
        super().__init__()
        if kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block {kind!r}; valid: {', '.join(BLOCK_KINDS)}")
        if (kind == "plain") != (shortcut is None):
            raise ValueError("a plain block has no shortcut and every other block has one")
        self.kind = kind
        self.branch = branch
        self.shortcut = shortcut
        if gate is not None and kind != "rezero":
            raise ValueError(f"only a rezero block has a gate, not {kind!r}")
        self.gate = (gate or Gate()) if kind == "rezero" else None
        self.post = post
        self.scale: float | None = None
        self.shortcut_scale: float | None = None
        self.tap: Tap | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb, xs = self.tap(x) if self.tap is not None else (x, x)
        out = self.branch(xb)
        if self.gate is not None:
            out = self.gate(out)
        if self.scale is not None:
            out = out * self.scale
        if self.shortcut is not None:
            s = self.shortcut(xs)
            out = out + (s if self.shortcut_scale is None else s * self.shortcut_scale)
        if self.post is not None:
            out = self.post(out)
        return out


def branch_layers(
    spec: NetSpec,
    ops: Ops,
    first: Callable[[bool], nn.Module],
    second: Callable[[bool], nn.Module] | None,
    cin: int,
    cout: int,
    act_after: bool = False,
) -> list[nn.Module]:
    """The layers of a branch F in order, the one place every family takes them from. `first(bias)` and
    `second(bias)` build its two weighted layers (convs or linears); `act_after` adds the activation after the
    second norm (the Keras example's convnet, whose blocks have no activation after the sum). Without `second`, a
    branch of one layer (the mlp's `branch_layers` 1): norm-act-first pre-activated, first-norm otherwise.

    - post-activation (He et al. 2015): first-norm-act-second-norm[-act]
    - pre-activation (He et al. 2016):  norm-act-first-norm-act-second
    - Fixup (Zhang et al. 2019):        bias-first-bias-act-bias-second-multiplier-bias (no norm layers)
    """
    bias = spec.norm == "none"
    if second is None:
        if spec.block == "preact":
            return [ops.norm(cin, spec.norm), ops.act(spec.norm), first(bias)]
        return [first(bias), ops.norm(cout, spec.norm)]
    if spec.init == "fixup":
        return [ScalarBias(), first(False), ScalarBias(), ops.act(spec.norm), ScalarBias(), second(False),
                Multiplier(), ScalarBias()]  # fmt: skip
    if spec.block == "preact":
        return [ops.norm(cin, spec.norm), ops.act(spec.norm), first(bias),
                ops.norm(cout, spec.norm), ops.act(spec.norm), second(bias)]  # fmt: skip
    layers = [first(bias), ops.norm(cout, spec.norm), ops.act(spec.norm), second(bias), ops.norm(cout, spec.norm)]
    return [*layers, ops.act(spec.norm)] if act_after else layers


def param_groups(model: nn.Module, lr: float, eps: float | None = None) -> list[dict]:
    """The optimizer's parameter groups: every parameter at `lr`, except those of modules that declare an
    `lr_factor` (Fixup's scalars), which get `lr` times it. Learning-rate schedules scale every group alike.

    With `eps` (Adam's epsilon: the optimiser is AdamW), the hidden parameters of a depth-parametrized net (every
    weight, norm gain and bias inside its residual branches; `reslab.models.remedy_init.depth_parametrize`) get lr
    times (L/L0)^(alpha-1) and eps times (L/L0)^(-alpha), the rule of depth-muP and CompleteP for Adam (Yang et al.
    2023; Dey et al. 2025, as EleutherAI/nanoGPT-mup's `configure_optimizers` applies it): embeddings, the stem,
    the final norm and the head keep depth-free ones. Under SGD depth-muP's learning rate does not change with
    depth (Yang et al. 2023), so `eps=None` leaves every group as it is."""
    factors: dict[int, tuple[float, float]] = {}
    for module in model.modules():
        factor = getattr(type(module), "lr_factor", None)
        if factor is not None:
            factors.update({id(p): (factor, 1.0) for p in module.parameters(recurse=False)})
    if eps is not None:
        for module in model.modules():
            alpha = getattr(module, "depth_alpha", None)
            if alpha is not None:
                ratio = module.depth_ratio
                factors.update({id(p): (ratio ** (alpha - 1.0), ratio**-alpha) for p in module.branch.parameters()})
    groups: dict[tuple[float, float], list[nn.Parameter]] = {(1.0, 1.0): []}  # the weights' group first: its lr
    for p in model.parameters():  # is the one logged
        groups.setdefault(factors.get(id(p), (1.0, 1.0)), []).append(p)
    out = []
    for (lr_factor, eps_factor), params in groups.items():
        if params:
            out.append({"params": params, "lr": lr * lr_factor, **({} if eps is None else {"eps": eps * eps_factor})})
    return out


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (He et al. 2015, "Delving Deep into Rectifiers") for every conv and linear weight, zero
    biases, BN weight 1 and bias 0 — the initialisation both ResNet papers train from."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
