"""Packing: several cells of a sweep that differ only in seed, trained as one grouped computation on one device.

He et al.'s CIFAR ResNets at width 16 are far too small to fill a GPU: one training step launches hundreds of tiny
kernels and the device idles between them. Cells that share their network (`NetSpec`) and recipe (`TrainConfig`)
and differ only in seed can run as one computation instead, as PyTorch's model-ensembling recipe does
(torch.func: `stack_module_state` stacks the members' parameters and buffers along a new leading dimension, and
`vmap` over `functional_call` runs the one network on each member's slice, turning each layer into a single
batched kernel). Nothing is shared between the members but the kernels:

- each member is built by `build_net` right after `torch.manual_seed(seed)`, exactly as a solo run of that seed,
  so it starts from the same weights;
- its batch-norm running statistics are its own slice of the stacked buffers (vmap maps over the buffers too, so
  batch norm updates each member's statistics in place);
- its data order is its own `DeviceBatches` with its own seed;
- the loss is the sum of the members' mean training losses, so each member's gradient is its solo gradient;
- the optimiser (SGD with momentum, Nesterov and weight decay, or AdamW) and the learning-rate schedule act element
  by element, so one step on the stacked parameters is K solo steps; each stacked parameter keeps its member
  parameter's lr factor;
- gradient-norm clipping takes the norm over each member's slice, never over the pack.

So a pack reproduces its members' solo runs up to floating-point summation order (vmap runs a conv of K members
as one grouped conv). At lr 0.1 with momentum, fp32 training of these nets amplifies that rounding within tens of
steps, as much between two solo runs of one seed on two conv backends as between a pack and its solo runs; at
lr 1e-3 without momentum fp32 losses agree to 1e-5, and a batch-norm bias to about 1 % (again as much as two solo
runs on two backends); in fp64 a pack holds its solo runs to ~1e-11 over 50 steps at the full recipe. `solo_run`
is the solo run, the same loop on one ordinary net; both take their loss and optimiser from
`reslab.train.objective`, and their batches from `Splits.train_batches`, as every run does.

Packing lives beside the benchmarks that time it (`test_pack_step.py`, `test_train_step.py`), not in the package:
no sweep or `reslab train` runs a pack, and none should until a GPU measurement shows a pack of K cells beats K
concurrent workers on one device (on the 2-core CPU it gains nothing over two workers).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from reslab.data.tensors import DeviceBatches, Splits
from reslab.models import NetSpec, build_net
from reslab.models.blocks import param_groups
from reslab.perf import StepTiming, median_step_s
from reslab.train.config import TrainConfig
from reslab.train.objective import build_optimizer, training_loss
from reslab.train.schedule import lr_lambda

#: Strategies that train on one device, the only ones a pack (one grouped computation) can run under.
SINGLE_DEVICE_STRATEGIES = ("auto", "single_device")
#: torch.nn.utils.clip_grad_norm_'s guard against a zero norm, kept so per-member clipping equals solo clipping.
_CLIP_EPS = 1e-6


def check_recipe(cfg: TrainConfig) -> None:
    """Refuse a recipe a pack cannot reproduce member by member (ValueError, one line: what, and how to fix).

    - several devices or a distributed strategy: a pack is one computation on one device;
    - fp16 mixed precision: its loss scaler skips a step when any gradient overflows, which would tie the members'
      steps together (bf16 needs no scaler and is packed).
    """
    if cfg.devices != 1 or cfg.strategy not in SINGLE_DEVICE_STRATEGIES:
        raise ValueError(
            f"a pack trains on one device, got devices {cfg.devices} and strategy {cfg.strategy}: set devices 1 and "
            f"strategy auto, or run these cells unpacked"
        )
    if cfg.precision == "16-mixed":
        raise ValueError(
            "a pack cannot train in precision 16-mixed (its loss scaler would skip every member's step when one "
            "member overflows): use bf16-mixed or 32-true, or run these cells unpacked"
        )


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds of a pack as a list: at least one, none repeated (a repeated seed trains the same net twice)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("a pack needs at least one seed: pass the seeds of the cells to train together")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed(s) {', '.join(map(str, repeated))} repeat in the pack: give each member its own seed")
    return seeds


def plan_pack(cells: Sequence[tuple[NetSpec, TrainConfig]]) -> tuple[NetSpec, TrainConfig, list[int]]:
    """The (spec, recipe, seeds) of one pack from sweep cells given as (spec, recipe) pairs; the recipe returned is
    the first cell's. Refuses (ValueError) cells that differ in anything but `TrainConfig.seed`, and recipes
    `check_recipe` refuses, so that only cells whose packed run equals their solo runs are packed."""
    if not cells:
        raise ValueError("a pack needs at least one cell: pass the (spec, recipe) of each cell to train together")
    spec, cfg = cells[0]
    for other_spec, other_cfg in cells[1:]:
        if other_spec != spec:
            field = next(k for k in vars(spec) if getattr(spec, k) != getattr(other_spec, k))
            raise ValueError(
                f"cells in a pack must share their network, but {spec.name} and {other_spec.name} differ in "
                f"{field} ({getattr(spec, field)!r} vs {getattr(other_spec, field)!r}): pack them separately"
            )
        mine, theirs = cfg.model_dump(exclude={"seed"}), other_cfg.model_dump(exclude={"seed"})
        if mine != theirs:
            field = next(k for k in mine if mine[k] != theirs[k])
            raise ValueError(
                f"cells in a pack must share their recipe but for the seed, and these differ in {field} "
                f"({mine[field]!r} vs {theirs[field]!r}): pack them separately"
            )
    check_recipe(cfg)
    return spec, cfg, check_seeds([c.seed for _, c in cells])


def build_member(
    spec: NetSpec, seed: int, input_shape: tuple[int, ...], num_classes: int, device: torch.device | str = "cpu"
) -> nn.Module:
    """The net a solo run of `seed` trains: `torch.manual_seed(seed)`, then `build_net`, then onto `device` (the
    order of `reslab.perf.plain_loop_step_times`), so a pack member and its solo twin start from the same weights."""
    torch.manual_seed(seed)
    return build_net(spec, input_shape, num_classes).to(device)


def lr_factors(net: nn.Module) -> dict[str, float]:
    """Each parameter's learning-rate factor by name, as `reslab.models.blocks.param_groups` assigns it (1 for
    weights, a module's `lr_factor` for its own parameters, e.g. Fixup's scalars)."""
    factor = {id(p): group["lr"] for group in param_groups(net, 1.0) for p in group["params"]}
    return {name: factor[id(p)] for name, p in net.named_parameters()}


class Pack:
    """K nets of one `spec`, one per seed, stacked into one grouped computation (torch.func model ensembling).

    `params` and `buffers` map each name of the member net to a tensor with a leading dimension of K (member i is
    slice i); the parameters are leaves that autograd and the optimiser update in place. `forward` takes inputs
    of shape (K, B, ...) and returns logits (K, B, classes); `unstack(i)` gives member i back as an ordinary net.
    """

    def __init__(
        self,
        spec: NetSpec,
        seeds: Sequence[int],
        input_shape: tuple[int, ...],
        num_classes: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.spec = spec
        self.seeds = check_seeds(seeds)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.device = torch.device(device)
        members = [build_member(spec, s, self.input_shape, num_classes, self.device) for s in self.seeds]
        self._factors = lr_factors(members[0])
        self.params, self.buffers = stack_module_state(members)
        # The members' structure (and plain attributes such as a TAT slope or a branch scale, which depend on the
        # spec alone) with no storage: functional_call runs it on each member's slice of the stacked tensors.
        self._skeleton = copy.deepcopy(members[0]).to("meta")
        self._batched = vmap(self._member_forward, in_dims=(0, 0, 0))
        self.train()

    def __len__(self) -> int:
        return len(self.seeds)

    def _member_forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor):
        return functional_call(self._skeleton, (params, buffers), (x,))

    def train(self, mode: bool = True) -> Pack:
        """Training mode (batch statistics, running statistics updated) or, with False, evaluation mode."""
        self._skeleton.train(mode)
        return self

    def eval(self) -> Pack:
        return self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, classes) of inputs (K, B, ...): member i sees x[i] only."""
        if x.shape[0] != len(self):
            raise ValueError(f"a pack of {len(self)} takes inputs (K={len(self)}, B, ...), got shape {tuple(x.shape)}")
        return self._batched(self.params, self.buffers, x)

    __call__ = forward

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimiser's groups: each stacked parameter at `lr` times its member parameter's factor, grouped in
        the order of `reslab.models.blocks.param_groups` (the weights' group first)."""
        groups: dict[float, list[torch.Tensor]] = {1.0: []}
        for name, p in self.params.items():
            groups.setdefault(self._factors[name], []).append(p)
        return [{"params": params, "lr": lr * factor} for factor, params in groups.items() if params]

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each member's gradient to norm `max_norm` (the 2-norm over that member's slices of every gradient,
        as `torch.nn.utils.clip_grad_norm_` clips a solo net), and return the K norms before clipping."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return torch.zeros(len(self), device=self.device)
        k = len(self)
        norms = torch.linalg.vector_norm(torch.stack([g.reshape(k, -1).norm(dim=1) for g in grads], dim=1), dim=1)
        coef = (max_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(k, *(1,) * (g.dim() - 1)).to(g.dtype))
        return norms

    def unstack(self, i: int) -> nn.Module:
        """Member i as an ordinary net of `spec` on the pack's device, holding a copy of its current weights and
        batch-norm buffers (to check it against its solo run, evaluate it, or save it)."""
        if not 0 <= i < len(self):
            raise IndexError(f"a pack of {len(self)} has members 0..{len(self) - 1}, not {i}")
        net = copy.deepcopy(self._skeleton).to_empty(device=self.device)
        state = {name: t[i].detach() for name, t in (*self.params.items(), *self.buffers.items())}
        net.load_state_dict(state)
        return net.train(self._skeleton.training)


def _batches(splits: Splits, cfg: TrainConfig, seed: int) -> DeviceBatches:
    """One member's training batches of `splits` (its training set on the device, moved there once for all
    members), as a run of `seed` draws them: its own order and augmentation."""
    return splits.train_batches(cfg.batch_size, seed=seed, drop_last=cfg.drop_last)


def _train_on(splits: Splits, device: torch.device) -> Splits:
    return dataclasses.replace(splits, train=splits.train.to(device))


def _endless(batches: DeviceBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class SoloTraining:
    """One ordinary net of `seed` trained by the loop a researcher writes by hand (forward, the training loss,
    backward, clipping, SGD, schedule); each `step()` trains one batch and returns its loss. The reference a pack
    member must reproduce."""

    def __init__(
        self, spec: NetSpec, seed: int, splits: Splits, cfg: TrainConfig, device: torch.device | str = "cpu"
    ) -> None:
        check_recipe(cfg)
        self.cfg, self.device = cfg, torch.device(device)
        self.net = build_member(spec, seed, splits.input_shape, splits.num_classes, self.device).train()
        self.opt = build_optimizer(self.net, cfg, self.device)
        batches = _batches(_train_on(splits, self.device), cfg, seed)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, len(batches)))
        self.data = _endless(batches)

    def step(self) -> torch.Tensor:
        x, y = next(self.data)
        with _autocast(self.cfg, self.device):
            logits = self.net(x)
        loss = training_loss(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad_norm)
        self.opt.step()
        self.sched.step()
        return loss.detach()


class PackTraining:
    """A `Pack` of `seeds` trained by the same loop as `SoloTraining`, each member on its own batches; each `step()`
    trains one batch per member and returns the K members' losses. The loop benchmarks time step by step."""

    def __init__(
        self, spec: NetSpec, seeds: Sequence[int], splits: Splits, cfg: TrainConfig, device: torch.device | str = "cpu"
    ) -> None:
        check_recipe(cfg)
        self.cfg, self.device = cfg, torch.device(device)
        self.pack = Pack(spec, seeds, splits.input_shape, splits.num_classes, self.device).train()
        self.opt = build_optimizer(self.pack.param_groups(cfg.lr), cfg, self.device)
        on_device = _train_on(splits, self.device)
        members = [_batches(on_device, cfg, s) for s in self.pack.seeds]
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, len(members[0])))
        self.data = [_endless(b) for b in members]

    def step(self) -> torch.Tensor:
        xs, ys = zip(*(next(d) for d in self.data), strict=True)
        x, y = torch.stack(xs), torch.stack(ys)
        with _autocast(self.cfg, self.device):
            logits = self.pack(x)
        per_prediction = training_loss(logits.flatten(0, 1), y.flatten(0, 1), reduction="none")
        losses = per_prediction.view(len(y), -1).mean(1)  # each member's mean over its batch (and positions)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # the sum of the members' means: each member's gradient is its solo gradient
        if self.cfg.clip_grad_norm is not None:
            self.pack.clip_grad_norm_(self.cfg.clip_grad_norm)
        self.opt.step()
        self.sched.step()
        return losses.detach()


def pack_run(
    spec: NetSpec,
    seeds: Sequence[int],
    splits: Splits,
    cfg: TrainConfig,
    steps: int,
    device: torch.device | str = "cpu",
) -> tuple[Pack, list[list[float]]]:
    """Train a pack of `seeds` for `steps` steps on `splits.train`; the trained pack and each member's loss per
    step (`cfg.seed` is not used: the members' seeds are)."""
    run = PackTraining(spec, seeds, splits, cfg, device)
    losses = torch.stack([run.step() for _ in range(steps)]) if steps else torch.zeros(0, len(run.pack))
    return run.pack, losses.T.tolist()


def solo_run(
    spec: NetSpec, seed: int, splits: Splits, cfg: TrainConfig, steps: int, device: torch.device | str = "cpu"
) -> tuple[nn.Module, list[float]]:
    """Train the net of `seed` alone by the pack's loop, the reference a pack member must reproduce; the trained
    net and its loss per step."""
    run = SoloTraining(spec, seed, splits, cfg, device)
    losses = torch.stack([run.step() for _ in range(steps)]) if steps else torch.zeros(0)
    return run.net, losses.tolist()


def packed_step_times(
    spec: NetSpec,
    seeds: Sequence[int],
    splits: Splits,
    cfg: TrainConfig,
    steps: int,
    warmup: int = 3,
    device: torch.device | str = "cpu",
) -> StepTiming:
    """Median seconds of one packed training step (batch gather included, the device synchronised inside the
    timed region), after `warmup` steps. Its batch size is K x `cfg.batch_size`, so `images_per_s` is the
    aggregate rate of all K cells."""
    run = PackTraining(spec, seeds, splits, cfg, device)
    return StepTiming(median_step_s(run.step, device, steps, warmup), steps, len(run.pack) * cfg.batch_size)
