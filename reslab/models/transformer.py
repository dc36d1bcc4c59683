"""A decoder-only causal Transformer language model (Radford et al. 2018, 2019), with the block choice of every family.

Token ids (B, T) with T <= context become logits (B, T, vocab): token embedding plus a learned position embedding
(a table of `context` rows), N blocks of two sublayers each, causal multi-head self-attention (Vaswani et al. 2017)
and an MLP of width 4d with GELU (Hendrycks & Gimpel 2016), then a linear head over the vocabulary. Depth counts
blocks, width is d_model. The head is its own matrix, not tied to the token embedding, so each initialisation rule
below has one weight to speak about (the inits of GPT-2 and DeepNet treat the two differently).

Each sublayer F is one reslab `Block`, so the block names mean what they mean elsewhere, applied to F:

- residual: post-norm, x <- LN(x + F(x)), no final norm (Vaswani et al. 2017);
- preact:   pre-norm, x <- x + F(LN(x)), a final LN before the head (Xiong et al. 2020; GPT-2);
- rezero:   x <- x + a·F(x), a = 0 at init and one a per block shared by its two sublayers, no LN
            (Bachlechner et al. 2020, whose Transformer layer scales both sublayers by the same `resweight`);
- plain:    pre-norm's twin without the shortcut, x <- F(LN(x)), final LN included: the same layers and parameters.

Attention projects queries, keys and values with separate linear layers: DeepNet (Wang et al. 2022) starts the value
projection with another gain than the query and key projections.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from reslab.models.blocks import Block, Gate
from reslab.models.rules import SpecError
from reslab.models.trunk import Trunk

if TYPE_CHECKING:
    from reslab.models.spec import NetSpec

#: The MLP's hidden width in units of d_model (Vaswani et al. 2017; GPT-2).
MLP_RATIO = 4


class TokenEmbedding(nn.Module):
    """Token embedding plus a learned position embedding (GPT-2): ids (B, T) -> (B, T, d)."""

    def __init__(self, vocab: int, context: int, width: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t, context = ids.shape[-1], self.positions.num_embeddings
        if t > context:
            raise ValueError(f"a window of {t} tokens exceeds the net's context of {context}")
        return self.tokens(ids) + self.positions(torch.arange(t, device=ids.device))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position attends to itself and the positions before it: separate
    query, key and value projections, `scaled_dot_product_attention(is_causal=True)`, an output projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, heads, T, d / heads)
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Sequential):
    """fc1 (d -> 4d), GELU, fc2 (4d -> d), applied to each position alone."""

    def __init__(self, width: int) -> None:
        super().__init__(OrderedDict(fc1=nn.Linear(width, MLP_RATIO * width), act=nn.GELU(),
                                     fc2=nn.Linear(MLP_RATIO * width, width)))  # fmt: skip


class CausalTransformer(Trunk):
    """stem (embeddings) -> one stage of 2N sublayer blocks -> head; `vocab` and `context` say what it reads."""

    def __init__(self, stem: nn.Module, blocks: list[Block], head: nn.Module, vocab: int, context: int) -> None:
        super().__init__(stem, [blocks], head)
        self.vocab = vocab
        self.context = context


def sublayer(spec: NetSpec, layer: nn.Module, gate: Gate | None) -> Block:
    """One residual sublayer F around `layer`, as `spec.block` combines it with its input (see the module docstring)."""
    width = spec.width
    if spec.block in ("preact", "plain"):
        branch: nn.Module = nn.Sequential(nn.LayerNorm(width), layer)
    else:
        branch = layer
    shortcut = None if spec.block == "plain" else nn.Identity()
    post = nn.LayerNorm(width) if spec.block == "residual" else None
    return Block(spec.block, branch, shortcut, post, gate=gate)


def build_transformer(spec: NetSpec, input_shape: tuple[int, ...], num_classes: int) -> CausalTransformer:
    """The causal language model of `spec` for windows of `input_shape[0]` tokens over a vocabulary of
    `num_classes`."""
    (window,) = input_shape
    if window > spec.context:
        raise SpecError(
            f"the data's window {window} exceeds the net's context {spec.context}: set context >= {window} or "
            f"give the data a shorter window"
        )
    blocks: list[Block] = []
    for _ in range(spec.blocks_per_stage):
        gate = Gate() if spec.block == "rezero" else None  # one gate for both sublayers of the block
        blocks.append(sublayer(spec, CausalSelfAttention(spec.width, spec.heads), gate))
        blocks.append(sublayer(spec, FeedForward(spec.width), gate))
    head = [nn.LayerNorm(spec.width)] if spec.block in ("preact", "plain") else []
    head.append(nn.Linear(spec.width, num_classes))
    stem = TokenEmbedding(num_classes, spec.context, spec.width)
    return CausalTransformer(stem, blocks, nn.Sequential(*head), num_classes, spec.context)
