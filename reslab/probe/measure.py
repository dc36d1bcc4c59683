"""Measuring the signal at initialisation on a real net: one forward and one backward pass of a training batch with
hooks on every block, then one backward pass per class for the input-output Jacobian.

Poole et al. 2016 and Schoenholz et al. 2017 ("Deep Information Propagation") predict how the length and the
correlation of the signal evolve with depth in wide random nets, and Pennington et al. 2017 the Jacobian's
spectrum; Balduzzi et al. 2017 and Martens et al. 2021 (DKS C-maps) why correlations must neither collapse to 1 nor
decorrelate. This module measures those quantities on the finite nets reslab trains, with batch norm in training
mode (the statistics of the batch, as the first step sees them), block by block (`reslab.probe.result` says what
each number is).

Probing must not change the training it sits next to: it runs on a deep copy of the net (so no running statistic of
the original moves and no gradient lands on it), and every random-number state (torch CPU and CUDA, Python's
`random`, numpy's) is put back afterwards, so a run trains bit for bit the same with or without its probe. The
gradient through the branch and through the shortcut of each block is read with the block's `tap`, as gradient
telemetry reads it during training (`reslab.train.telemetry`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from reslab.models.blocks import Block
from reslab.probe.result import BlockSignal, SignalProbe
from reslab.train.objective import training_loss

if TYPE_CHECKING:
    from reslab.data.tensors import Splits
    from reslab.models.spec import NetSpec

#: Examples whose Jacobians are averaged: each costs nothing extra (the batch of them shares each backward pass).
JACOBIAN_EXAMPLES = 8


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Every random-number generator training draws from, as it was on entry: torch's CPU generator, each CUDA
    device's (where CUDA is already initialised), Python's `random` and numpy's global state."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def probe_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    seed: int,
    transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` examples of (x, y), drawn by a generator of their own from `seed` (the global RNG is not touched), on
    `device`, through the dataset's evaluation `transform` (normalisation without augmentation). Integer inputs
    without a transform are token ids (a text's windows) and stay integers."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=gen)[: min(batch, len(y))]
    xb, yb = x[idx].to(device), y[idx].to(device)
    if transform is not None:
        return transform(xb, None), yb
    return (xb.float() if xb.is_floating_point() else xb), yb


def probe_at_init(net: nn.Module, splits: Splits, batch: int, seed: int, device: str = "cpu") -> SignalProbe:
    """Probe `net` on a batch of `splits`' training set (`probe_batch`): what a run does before its first step."""
    x, y = probe_batch(splits.train.x, splits.train.y, batch, seed, splits.eval_transform, device)
    return probe_net(net, x, y)


def probe_spec(spec: NetSpec, splits: Splits, batch: int, seed: int, device: str = "cpu") -> SignalProbe:
    """Build `spec` at the initialisation `seed` gives it in training (the same seeding as `reslab.train.run`:
    Python, numpy and torch seeded, then the net built) and probe it. The caller's RNG states are kept."""
    from reslab.models.registry import build_net, output_units

    with preserved_rng():
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        net = build_net(spec, splits.input_shape, output_units(spec, splits.num_classes))
    return probe_at_init(net, splits, batch, seed, device)


def probe_net(net: nn.Module, x: torch.Tensor, y: torch.Tensor, jacobian_examples: int = JACOBIAN_EXAMPLES
              ) -> SignalProbe:  # fmt: skip
    """Probe `net` at the batch (x, y) on x's device. `net` itself, its running statistics and every RNG are left
    as they were."""
    with preserved_rng(), torch.enable_grad():
        model = copy.deepcopy(net).to(x.device)
        for p in model.parameters():
            p.grad = None
        return _measure(model, x, y, jacobian_examples)


def _rms(t: torch.Tensor) -> torch.Tensor:
    """Root mean square in float64, so a float32 value near its range's edges neither overflows nor underflows."""
    return torch.linalg.vector_norm(t.detach(), dtype=torch.float64) / math.sqrt(max(t.numel(), 1))


def mean_correlation(h: torch.Tensor) -> torch.Tensor:
    """Mean over every pair i != j of the batch of u_i·u_j / (|u_i| |u_j|), u_i example i's values flattened: the
    sum over pairs is |sum_i û_i|^2 - m for m unit vectors, so it costs one pass over h. Examples whose vector is 0
    or not finite are left out; fewer than two left gives NaN."""
    flat = h.detach().flatten(1).to(torch.float64)
    norms = torch.linalg.vector_norm(flat, dim=1)
    ok = torch.isfinite(norms) & (norms > 0)
    m = ok.sum()
    unit = flat[ok] / norms[ok, None]
    total = unit.sum(0).square().sum()
    return torch.where(m > 1, (total - m) / (m * (m - 1)).clamp(min=1), torch.full_like(total, math.nan))


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, jacobian_examples: int) -> SignalProbe:
    names_blocks = model.blocks() if hasattr(model, "blocks") else \
        [(n, m) for n, m in model.named_modules() if isinstance(m, Block)]  # fmt: skip
    blocks = [b for _, b in names_blocks]
    n = len(blocks)
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    act, cmap = [zero] * n, [zero] * n
    grad_in, grad_out, grad_branch, grad_shortcut = ([zero] * n for _ in range(4))
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def store(values: list[torch.Tensor], i: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            values[i] = _rms(grad)

        return hook

    def tap(i: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        def split(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if not inp.requires_grad:
                return inp, inp
            inp.register_hook(store(grad_in, i))  # the sum of what reaches it through the branch and the shortcut
            xb, xs = inp.view_as(inp), inp.view_as(inp)  # two autograd nodes: each sees its own consumer's gradient
            xb.register_hook(store(grad_branch, i))
            xs.register_hook(store(grad_shortcut, i))  # a plain block never reads xs: its shortcut gradient stays 0
            return xb, xs

        return split

    def output(i: int) -> Callable:
        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            act[i], cmap[i] = _rms(out), mean_correlation(out)
            if out.requires_grad:
                out.register_hook(store(grad_out, i))

        return hook

    def batch_statistics(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inp = args[0].detach()
        dims = [0, *range(2, inp.dim())]
        stats[module] = (inp.mean(dims), inp.var(dims, unbiased=False))  # what training-mode batch norm divides by

    embedded: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(batch_statistics) for m in _batch_norms(model)]
    if not x.is_floating_point():  # token ids: the signal starts at the embeddings, the stem's output
        handles.append(_stem(model).register_forward_hook(lambda m, a, out: embedded.append(out.detach())))
    for i, block in enumerate(blocks):
        block.tap = tap(i)
        handles.append(block.register_forward_hook(output(i)))
    model.train()
    inp = x.detach().clone()
    if inp.is_floating_point():  # so a net without a stem still has a gradient at its first block
        inp.requires_grad_(True)
    try:
        loss = training_loss(model(inp), y)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            block.tap = None
    del inp
    weight_grad = [_branch_weight_grad(b, x.device) for b in blocks]
    sv, cond, spread, k = _jacobian(model, x, stats, jacobian_examples)
    series = (act, grad_in, grad_out, grad_branch, grad_shortcut, cmap, weight_grad)
    a, gi, go, gb, gs, c, wg = torch.stack([torch.stack(v) for v in series]).cpu().tolist() if n else ([],) * 7
    signals = tuple(BlockSignal(name, a[i], gi[i], go[i], _share(gb[i], gs[i]), c[i], wg[i])
                    for i, (name, _) in enumerate(names_blocks))  # fmt: skip
    cmap_input = float(mean_correlation(embedded[0] if embedded else x))
    return SignalProbe(signals, float(loss.detach()), cmap_input, sv, cond, spread, k, len(y))


def _stem(model: nn.Module) -> nn.Module:
    """The layer that turns a language model's token ids into vectors (its embeddings)."""
    stem = getattr(model, "stem", None)
    if stem is None:
        raise ValueError(f"{type(model).__name__} takes token ids but has no stem to embed them")
    return stem


def _branch_weight_grad(block: Block, device: torch.device) -> torch.Tensor:
    """The Frobenius norm of the loss gradient of the last weight matrix (or conv kernel) of the block's branch:
    the second linear layer of a Transformer's MLP, whose gradient Xiong et al. 2020 (Thm 1, Fig. 3) show to be
    O(d sqrt(ln d)) at the last layer of a post-norm net whatever its depth, and O(d sqrt(ln d / L)) and alike across
    the layers of a pre-norm net of L layers; the second conv of a residual unit."""
    weights = [m.weight for m in block.branch.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.weight.grad is not None]  # fmt: skip
    if not weights:
        return torch.full((), math.nan, dtype=torch.float64, device=device)
    return torch.linalg.vector_norm(weights[-1].grad, dtype=torch.float64)


def _share(branch: float, shortcut: float) -> float:
    total = branch + shortcut
    return shortcut / total if math.isfinite(total) and total > 0 else math.nan


def _jacobian(
    model: nn.Module, x: torch.Tensor, stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]], examples: int
) -> tuple[tuple[float, ...], float, float, int]:
    """The Jacobian of the logits with respect to the input of the batch's first `examples` examples, exact: one
    backward pass per class, all examples at once. Each batch-norm layer normalises with the statistics it computed
    on the whole batch, held fixed (its running statistics set to them, eval mode), so each example's Jacobian is
    that of the function the first training step applies to it. Token ids are not continuous: for a language model
    it is the Jacobian of the last position's logits (the prediction that reads the whole window) with respect to
    the window's embeddings. Returns the singular values (mean over the examples, largest first), the condition
    number (geometric mean over the examples), the standard deviation of log10 of every singular value, and the
    number of examples."""
    with torch.no_grad():
        for module, (mean, var) in stats.items():
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
    model.eval()
    k = min(examples, x.shape[0])
    if x.is_floating_point():
        inp = x[:k].detach().clone().requires_grad_(True)
        logits = model(inp)
    else:
        leaf: list[torch.Tensor] = []

        def as_leaf(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
            leaf.append(out.detach().requires_grad_(True))
            return leaf[0]

        handle = _stem(model).register_forward_hook(as_leaf)
        try:
            logits = model(x[:k])[:, -1]
        finally:
            handle.remove()
        inp = leaf[0]
    classes = logits.shape[1]
    rows = []
    for c in range(classes):
        (grad,) = torch.autograd.grad(logits[:, c].sum(), inp, retain_graph=c < classes - 1)
        rows.append(grad.flatten(1))
    jac = torch.stack(rows, dim=1).to(torch.float64)  # (examples, classes, input size)
    nan = math.nan
    if not torch.isfinite(jac).all():
        return tuple([nan] * min(jac.shape[1:])), nan, nan, k
    sv = torch.linalg.svdvals(jac)  # (examples, min(classes, input size)), each row descending
    mean_sv = tuple(sv.mean(0).tolist())
    if not (sv > 0).all():  # a singular value that vanished: infinitely ill-conditioned
        return mean_sv, math.inf, math.inf, k
    logs = sv.log10()
    cond = float(10 ** (logs[:, 0] - logs[:, -1]).mean())
    spread = float(logs.flatten().std(correction=0)) if logs.numel() > 1 else 0.0
    return mean_sv, cond, spread, k
