"""Keras-style summaries and complexity (parameters, multiply-accumulates) computed from the built module.

Nothing here restates an architecture as a formula (pycls' hand-written complexity() functions drift from the
model they describe): output shapes come from forward hooks and MACs from torch's own FLOP counter on one example.
(The meta device, which allocates nothing, is slower than the CPU for deep nets because its norm layers run through
Python decompositions, so it is an option for nets too large for memory.)
MACs count convolutions and linear layers, as He et al. do; norms, activations, pooling, additions, embedding
look-ups and attention's score and weighted-sum products are not (torch counts the last on some devices and
attention kernels only, so leaving them out keeps a count the same everywhere). A language model's MACs are also
given per token: its example is a window of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reslab.models.blocks import param_groups
from reslab.models.registry import FAMILIES, build_net, example_input
from reslab.models.spec import NetSpec
from reslab.models.transformer import CausalTransformer

#: Leaf modules that change nothing a summary shows (Keras folds activations into the layer before them).
_FOLDED = (nn.ReLU, nn.Identity)


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    output_shape: tuple[int | None, ...]  # with the batch dimension as None, like Keras
    params: int
    macs: int


@dataclass(frozen=True)
class GroupRow:
    """One optimiser parameter group: its parameters and the multipliers of the recipe's lr (under SGD and under
    AdamW) and of AdamW's eps (`reslab.models.blocks.param_groups`)."""

    name: str
    params: int
    sgd_lr: float
    adamw_lr: float
    adamw_eps: float


@dataclass(frozen=True)
class ModelSummary:
    input_shape: tuple[int, ...]
    layers: tuple[LayerRow, ...]
    params: int
    trainable_params: int
    macs: int  # per example
    tokens: int | None = None  # a language model's window: its example is this many tokens
    groups: tuple[GroupRow, ...] = ()  # the optimiser's parameter groups, when there is more than one

    @property
    def macs_per_token(self) -> int | None:
        """A language model's MACs for one token of its window (every position costs the same linear layers)."""
        return None if self.tokens is None else self.macs // self.tokens

    def to_dict(self) -> dict:
        """The `reslab summary --json` object (`macs_per_token` for a language model only)."""
        per_token = {} if self.tokens is None else {"macs_per_token": self.macs_per_token}
        return {
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            **per_token,
            "input_shape": list(self.input_shape),
            "layers": [
                {
                    "name": r.name,
                    "type": r.type,
                    "output_shape": list(r.output_shape),
                    "params": r.params,
                    "macs": r.macs,
                }
                for r in self.layers
            ],
            "groups": [vars(g) for g in self.groups],
        }

    def table(self, title: str = "Model") -> str:
        """A Keras-style text table: layer (type), output shape, params, MACs, then the totals."""
        rows = [(f"{r.name} ({r.type})", _shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}") for r in self.layers]
        header = ("Layer (type)", "Output Shape", "Param #", "MACs")
        widths = [max(len(header[i]), *(len(row[i]) for row in rows)) + 2 for i in range(4)] if rows else [20] * 4
        line = "".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
        width = max(len(line), 60)
        out = [f'Model: "{title}"', "_" * width, line, "=" * width]
        out += ["".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        out += [
            "=" * width,
            f"Total params: {self.params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.params - self.trainable_params:,}",
            f"MACs per example: {self.macs:,} ({self.macs / 1e6:.1f} M)",
            *([] if self.tokens is None else [f"MACs per token: {self.macs_per_token:,} (a window of {self.tokens})"]),
            "_" * width,
        ]
        if self.groups:
            out.append("Optimiser groups: multipliers of the recipe's lr (SGD, AdamW) and eps (AdamW)")
            out += [f"  {g.name:<28} {g.params:>12,} params  SGD lr x{g.sgd_lr:.4g}  AdamW lr x{g.adamw_lr:.4g}  "
                    f"eps x{g.adamw_eps:.4g}" for g in self.groups]  # fmt: skip
            out.append("_" * width)
        return "\n".join(out)


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSummary:
    """Run one example of `input_shape` through `model` (in eval mode, no grad, on the model's device) and record
    every leaf layer in execution order with its output shape, own parameters and MACs. A layer called twice (the
    gate a Transformer block's two sublayers share) is a row each time, its parameters and MACs on the first."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    rows: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
        rows.append((names[module], module, tuple(output.shape[1:])))

    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, _FOLDED)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_input(model, input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    root = type(model).__name__
    flops = counter.get_flop_counts()

    def macs_of(scope: str) -> int:
        counted = flops.get(scope, {})
        return int(sum(n for op, n in counted.items() if "scaled_dot_product" not in str(op)) // 2)

    layers, seen = [], set()
    for name, m, shape in rows:
        first = name not in seen
        seen.add(name)
        params = sum(p.numel() for p in m.parameters(recurse=False)) if first else 0
        macs = macs_of(f"{root}.{name}") if first else 0
        layers.append(LayerRow(name, type(m).__name__, (None, *shape), params, macs))
    return ModelSummary(
        input_shape=tuple(input_shape),
        layers=tuple(layers),
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=macs_of("Global"),
        tokens=input_shape[0] if isinstance(model, CausalTransformer) else None,
    )


def describe(
    spec: NetSpec,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    device: str = "cpu",
) -> ModelSummary:
    """The summary of the network `spec` builds for `input_shape` (the family's default when None)."""
    shape = tuple(input_shape) if input_shape is not None else FAMILIES[spec.family].default_input
    with torch.device(device):
        model = build_net(spec, shape, num_classes)
    return replace(summarize(model, shape), groups=optimiser_groups(model))


def optimiser_groups(model: nn.Module) -> tuple[GroupRow, ...]:
    """The parameter groups SGD and AdamW give `model`, as multipliers; none when every parameter takes the recipe's
    lr and eps as they are."""
    sgd = {id(p): g["lr"] for g in param_groups(model, 1.0) for p in g["params"]}
    rows: dict[tuple[float, float, float], int] = {}
    for g in param_groups(model, 1.0, 1.0):
        for p in g["params"]:
            key = (sgd[id(p)], g["lr"], g["eps"])
            rows[key] = rows.get(key, 0) + p.numel()
    if len(rows) < 2:
        return ()
    def name(key: tuple[float, float, float]) -> str:
        if key == (1.0, 1.0, 1.0):
            return "the recipe's"
        return "a remedy's scalars" if key[0] != 1.0 else "residual branches (depth)"

    return tuple(GroupRow(name(key), n, *key) for key, n in rows.items())


def count_params(model: nn.Module) -> int:
    """All parameters of `model` (a convenience for logs and tables)."""
    return sum(p.numel() for p in model.parameters())
