"""Size, compute and training memory of a network from its spec alone, without building it.

A dry run and the config checks must know how large a net is and whether a batch of it fits in memory before
anything is allocated: building a 600002-layer net takes minutes, and the dense net of width 100000 has 2·10^10
parameters at its smallest depth, 80 GB of fp32 weights before their gradients and momentum. So this module
restates the builders of the plain and residual nets of He et al. 2015 ("Deep Residual Learning for Image
Recognition", arXiv:1512.03385), their pre-activation and gated variants, the dense net, the convnet and the causal
Transformer as plain integer arithmetic: no torch, no modules, no tensors. Each stage is a first block plus n - 1
identical ones, so the cost of a spec is independent of its depth.

Parameters and multiply-accumulates are exact (the counts of `build_net` and of `summary.describe`, which counts
convolutions and linear layers only). Activation memory models what autograd saves for the backward pass of a
training-mode forward pass, tensor by tensor, as PyTorch's CPU kernels save it (its CUDA attention kernels save
somewhat different statistics); the tests hold it against the saved-tensors hooks of real nets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable

    from reslab.models.spec import NetSpec

_FLOAT = 4  # bytes of an fp32 value
_INDEX = 8  # bytes of an int64 max-pool index or token id
_INPUT_RANKS = {"resnet": (2, 3), "mlp": (1, 2, 3), "convnet": (2, 3), "transformer": (1,)}
_MLP_RATIO = 4  # the transformer's MLP width in units of its width (`reslab.models.transformer.MLP_RATIO`)


@dataclass(frozen=True)
class Estimate:
    """What a net costs: `params` parameters, `macs` multiply-accumulates per example and `activation_bytes`, the
    fp32 bytes per example that a training step keeps alive between forward and backward."""

    params: int
    macs: int
    activation_bytes: int

    def training_bytes(self, batch_size: int, bytes_per_value: int = 4) -> int:
        """Memory one SGD step needs for a batch: fp32 weights, gradients and momentum (3 copies of the parameters,
        which mixed precision keeps in fp32 too) plus the saved activations of the batch at `bytes_per_value`
        (2 for bf16 or fp16; the model's int64 max-pool indices are scaled with them, a small overestimate).
        Batch-norm statistics (4 values per channel, independent of the batch), the input batch itself, the
        allocator's slack and the framework are not counted: this is a lower bound to compare against a device."""
        if batch_size < 0 or bytes_per_value <= 0:
            raise ValueError(f"batch_size must be >= 0 and bytes_per_value > 0, got {batch_size}, {bytes_per_value}")
        return self.params * _FLOAT * 3 + self.activation_bytes * batch_size * bytes_per_value // _FLOAT


class _Tensor:
    """An activation of one example: channels x spatial, and whether some op already saved it for backward (each
    storage counts once, however many ops save it)."""

    __slots__ = ("channels", "saved", "spatial")

    def __init__(self, channels: int, spatial: tuple[int, ...]) -> None:
        self.channels = channels
        self.spatial = spatial
        self.saved = False

    @property
    def numel(self) -> int:
        return self.channels * math.prod(self.spatial)


class _Tally:
    """Walks a net op by op the way its forward pass runs, adding each op's parameters, MACs and the tensors
    autograd saves: convolutions and linear layers their input, batch norm its input (its per-channel statistics
    are batch-independent and left out), ReLU its output, max-pool its input and int64 indices, the ReZero gate
    the branch output it scales. Additions, padding, slicing, flattening and the global average pool (a mean for
    an output of size 1) save nothing."""

    def __init__(self, norm: str, activation: str = "relu") -> None:
        self.tailored = activation == "tat"
        self.batch_norm = norm == "batch"
        self.bias = norm == "none"
        self.params = 0
        self.macs = 0
        self.bytes = 0

    def totals(self) -> tuple[int, int, int]:
        return self.params, self.macs, self.bytes

    def save(self, x: _Tensor) -> None:
        if not x.saved:
            x.saved = True
            self.bytes += x.numel * _FLOAT

    def conv(self, x: _Tensor, cout: int, kernel: int, stride: int = 1, bias: bool | None = None) -> _Tensor:
        """Conv1d/Conv2d with padding kernel // 2, or a linear layer for a tensor without spatial dimensions."""
        bias = self.bias if bias is None else bias
        pad = kernel // 2
        out = _Tensor(cout, tuple((s + 2 * pad - kernel) // stride + 1 for s in x.spatial))
        taps = kernel ** len(x.spatial)
        self.params += cout * x.channels * taps + (cout if bias else 0)
        self.macs += cout * x.channels * taps * math.prod(out.spatial)
        self.save(x)
        return out

    def norm(self, x: _Tensor) -> _Tensor:
        if not self.batch_norm:
            return x
        self.params += 2 * x.channels
        self.save(x)
        return _Tensor(x.channels, x.spatial)

    def relu(self, x: _Tensor) -> _Tensor:
        """ReLU saves its output; TAT's leaky ReLU saves its input, and the gain after it saves nothing."""
        out = _Tensor(x.channels, x.spatial)
        self.save(x if self.tailored else out)
        return out

    def scalar_bias(self, x: _Tensor) -> _Tensor:
        """Fixup's x + b: one parameter, nothing saved."""
        self.params += 1
        return _Tensor(x.channels, x.spatial)

    def max_pool(self, x: _Tensor) -> _Tensor:
        # kernel 2, stride 2 and ceil_mode keep a last window that starts inside the input: ceil(s / 2)
        out = _Tensor(x.channels, tuple((s + 1) // 2 for s in x.spatial))
        self.save(x)
        self.bytes += out.numel * _INDEX
        return out

    def gate(self, f: _Tensor, shared: bool = False) -> _Tensor:
        """a·f saves f; a gate `shared` with the block's sublayer before it has no parameter of its own."""
        self.params += 0 if shared else 1
        self.save(f)
        return _Tensor(f.channels, f.spatial)

    def layer_norm(self, x: _Tensor) -> _Tensor:
        """Layer norm over the channels of each position: weight and bias, its input and two fp32 statistics per
        position (mean and reciprocal std) saved."""
        self.params += 2 * x.channels
        self.save(x)
        self.bytes += 2 * math.prod(x.spatial) * _FLOAT
        return _Tensor(x.channels, x.spatial)

    def attention(self, x: _Tensor, heads: int) -> _Tensor:
        """q, k and v projections (x saved once), scaled-dot-product attention saving q, k, v, its output and one
        log-sum-exp per head and position, the output projection (its input is the attention output itself)."""
        qkv = [self.conv(x, x.channels, 1, bias=True) for _ in range(3)]
        for y in qkv:
            self.save(y)
        out = _Tensor(x.channels, x.spatial)
        self.save(out)
        self.bytes += heads * math.prod(x.spatial) * _FLOAT
        return self.conv(out, x.channels, 1, bias=True)

    def feed_forward(self, x: _Tensor) -> _Tensor:
        """fc1, GELU (saves its input) and fc2 (saves the GELU's output)."""
        h = self.conv(x, _MLP_RATIO * x.channels, 1, bias=True)
        self.save(h)
        return self.conv(_Tensor(h.channels, h.spatial), x.channels, 1, bias=True)

    def shortcut(self, option: str, x: _Tensor, cout: int, stride: int) -> None:
        """He et al. 2015 §3.3: identity where the shape holds (A, B), zero-padding (A, parameter-free) or a 1x1
        projection with its norm (B) where it changes, a projection on every block (C)."""
        if x.channels == cout and stride == 1 and option in ("A", "B"):
            return
        if option == "A":
            if cout < x.channels:
                _refuse(f"shortcut A cannot shrink channels ({x.channels} -> {cout}); use B or C")
            return
        self.norm(self.conv(x, cout, 1, stride))

    def head(self, x: _Tensor, classes: int) -> None:
        """Global average pooling where there are spatial dimensions, then the biased linear classifier."""
        self.conv(_Tensor(x.channels, ()), classes, 1, bias=True)


def _refuse(message: str) -> NoReturn:
    from reslab.models.rules import SpecError  # the error path only: the package is loaded by then anyway

    raise SpecError(message)


def _two_conv_block(t: _Tally, spec: NetSpec, x: _Tensor, cout: int, stride: int, kernel: int) -> _Tensor:
    """The resnet and mlp block: conv-BN-ReLU-conv-BN (+ shortcut, ReLU), gated, pre-activated, or Fixup's
    bias-conv-bias-ReLU-bias-conv-multiplier-bias (the multiplier saves its input, like the gate); the mlp's
    one-layer branch BN-ReLU-conv pre-activated, conv-BN otherwise."""
    if spec.branch_layers == 1 and spec.block == "preact":
        f = t.conv(t.relu(t.norm(x)), cout, kernel, stride)
    elif spec.branch_layers == 1:
        f = t.norm(t.conv(x, cout, kernel, stride))
    elif spec.init == "fixup":
        h = t.relu(t.scalar_bias(t.conv(t.scalar_bias(x), cout, kernel, stride, bias=False)))
        f = t.scalar_bias(t.gate(t.conv(t.scalar_bias(h), cout, kernel, bias=False)))
    elif spec.block == "preact":
        h = t.conv(t.relu(t.norm(x)), cout, kernel, stride)
        f = t.conv(t.relu(t.norm(h)), cout, kernel)
    else:
        h = t.relu(t.norm(t.conv(x, cout, kernel, stride)))
        f = t.norm(t.conv(h, cout, kernel))
    if spec.block == "rezero":
        f = t.gate(f)
    if spec.block != "plain":
        t.shortcut(spec.shortcut, x, cout, stride)
        f = _Tensor(f.channels, f.spatial)
    return t.relu(f) if spec.block in ("plain", "residual") else f


def _pooled_block(t: _Tally, spec: NetSpec, x: _Tensor, cout: int, pool: bool) -> _Tensor:
    """The convnet block: conv-BN-ReLU-conv-BN-ReLU[-pool] or pre-activated, plus shortcut, no activation after."""
    if spec.block == "preact":
        h = t.conv(t.relu(t.norm(x)), cout, 3)
        f = t.conv(t.relu(t.norm(h)), cout, 3)
    else:
        h = t.relu(t.norm(t.conv(x, cout, 3)))
        f = t.relu(t.norm(t.conv(h, cout, 3)))
    if pool:
        f = t.max_pool(f)
    if spec.block == "rezero":
        f = t.gate(f)
    if spec.block == "plain":
        return f
    t.shortcut(spec.shortcut, x, cout, 2 if pool else 1)
    return _Tensor(f.channels, f.spatial)


def _transformer_block(t: _Tally, spec: NetSpec, x: _Tensor) -> _Tensor:
    """Attention and MLP sublayers as `spec.block` combines each with its input: post-norm LN(x + F(x)), pre-norm
    x + F(LN(x)), ReZero x + a·F(x) with one a for both, or F(LN(x)) without a shortcut."""
    for index, layer in enumerate((lambda h: t.attention(h, spec.heads), t.feed_forward)):
        if spec.block in ("preact", "plain"):
            f = layer(t.layer_norm(x))
            x = f if spec.block == "plain" else _Tensor(f.channels, f.spatial)
        elif spec.block == "residual":
            f = layer(x)
            x = t.layer_norm(_Tensor(f.channels, f.spatial))  # of the sum, a fresh tensor
        else:
            f = t.gate(layer(x), shared=index == 1)
            x = _Tensor(f.channels, f.spatial)
    return x


def _transformer(spec: NetSpec, window: int, vocab: int) -> Estimate:
    """Token and position embeddings (the ids saved, 8 bytes each), N blocks, a final LN (pre-norm and plain) and
    the linear head over the vocabulary, for a window of `window` tokens."""
    if window > spec.context:
        _refuse(f"the data's window {window} exceeds the net's context {spec.context}: set context >= {window} or "
                f"give the data a shorter window")  # fmt: skip
    t = _Tally("none")
    t.params += (vocab + spec.context) * spec.width
    t.bytes += window * _INDEX
    x = _Tensor(spec.width, (window,))

    def block(x: _Tensor) -> _Tensor:
        return _transformer_block(t, spec, x)

    x = _stage(t, x, spec.blocks_per_stage, block, block)
    if spec.block in ("preact", "plain"):
        x = t.layer_norm(x)
    t.conv(x, vocab, 1, bias=True)
    return Estimate(t.params, t.macs, t.bytes)


def _stage(
    t: _Tally, x: _Tensor, n: int, first: Callable[[_Tensor], _Tensor], rest: Callable[[_Tensor], _Tensor]
) -> _Tensor:
    """n blocks: `first(x)`, then n - 1 of `rest`. From the third block on each one adds exactly what the one
    before it added, so the stage costs three block walks whatever n is."""
    x = first(x)
    for done in range(1, n):
        before = t.totals()
        x = rest(x)
        if done == 2 and n > 3:
            step = [after - b for after, b in zip(t.totals(), before, strict=True)]
            t.params += step[0] * (n - 3)
            t.macs += step[1] * (n - 3)
            t.bytes += step[2] * (n - 3)
            break
    return x


def estimate(spec: NetSpec, input_shape: tuple[int, ...], classes: int) -> Estimate:
    """Parameters, MACs and saved activations of `build_net(spec, input_shape, classes)` for inputs of
    `input_shape` (without the batch dimension) and `classes` outputs, without building it."""
    shape = tuple(int(d) for d in input_shape)
    ranks = _INPUT_RANKS.get(spec.family)
    if ranks is None:
        _refuse(f"no estimate for family {spec.family!r}; known: {', '.join(_INPUT_RANKS)}")
    if len(shape) not in ranks or any(d <= 0 for d in shape):
        _refuse(f"family {spec.family!r} takes inputs of rank {' or '.join(map(str, ranks))}; got {shape}")
    if classes <= 0:
        _refuse(f"the number of classes must be positive, got {classes}")
    if spec.family == "transformer":
        return _transformer(spec, shape[0], classes)
    t = _Tally(spec.norm, spec.activation)
    n = spec.blocks_per_stage
    preact = spec.block == "preact"
    if spec.family == "mlp":
        x = t.conv(_Tensor(math.prod(shape), ()), spec.width, 1)
        if not preact:
            x = t.relu(t.norm(x))

        def block(x: _Tensor) -> _Tensor:
            return _two_conv_block(t, spec, x, spec.width, 1, 1)

        x = _stage(t, x, n, block, block)
        if preact:
            x = t.relu(t.norm(x))
        t.conv(x, classes, 1, bias=True)
        return Estimate(t.params, t.macs, t.bytes)
    x = _Tensor(shape[0], shape[1:])
    if spec.family == "resnet":
        x = t.conv(x, spec.width, 3)
        if not preact:
            x = t.relu(t.norm(x))
        for index, cout in enumerate((spec.width, 2 * spec.width, 4 * spec.width)):
            stride = 2 if index > 0 else 1
            x = _stage(
                t, x, n,
                lambda x, c=cout, s=stride: _two_conv_block(t, spec, x, c, s, 3),
                lambda x, c=cout: _two_conv_block(t, spec, x, c, 1, 3),
            )  # fmt: skip
    else:
        for filters, pool in spec.stages:
            x = _stage(
                t, x, n,
                lambda x, c=filters, p=pool: _pooled_block(t, spec, x, c, p),
                lambda x, c=filters: _pooled_block(t, spec, x, c, False),
            )  # fmt: skip
    if preact:
        x = t.relu(t.norm(x))
    t.head(x, classes)
    return Estimate(t.params, t.macs, t.bytes)
