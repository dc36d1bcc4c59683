"""`Trunk`: stem -> stages of blocks -> head, the one network shape every family builds (pycls' AnyNet layout).

Keeping one trunk means a plain and a residual net differ only in their blocks, and tools that walk a network
(summaries, gradient telemetry, benchmarks) find blocks the same way in every family.
"""

from __future__ import annotations

import torch
from torch import nn

from reslab.models.blocks import Block


class Trunk(nn.Module):
    """stem -> stages (each an nn.Sequential of `Block`) -> head."""

    def __init__(self, stem: nn.Module, stages: list[list[Block]], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))

    def blocks(self) -> list[tuple[str, Block]]:
        """Every block with its qualified name, input to output."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Block)]
