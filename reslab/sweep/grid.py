"""Grid expansion: a sweep's grid becomes its cells, each one network x seed, in a stable order.

The order runs the cheap cells first within each seed (depth ascending), so a partial sweep already has whole
depth curves for the first seed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from reslab.models.catalog import FAMILY_INFO
from reslab.models.spec import NetSpec
from reslab.sweep.config import GridConfig


@dataclass(frozen=True)
class Cell:
    family: str
    block: str
    depth: int
    width: int
    shortcut: str
    norm: str
    seed: int

    @property
    def key(self) -> str:
        """The cell's identity in the queue and in MLflow (tag `reslab.cell`)."""
        return f"{self.family}-{self.block}-{self.depth}-w{self.width}-{self.shortcut}-{self.norm}-s{self.seed}"

    @property
    def name(self) -> str:
        """A readable run name such as `residual-56-w16-s0` (shortcut and norm shown when not the family's)."""
        fam = FAMILY_INFO[self.family]
        extra = "" if self.block == "plain" or self.shortcut == fam.default_shortcut else f"-{self.shortcut}"
        extra += "" if self.norm == fam.default_norm else f"-norm{self.norm}"
        return f"{self.block}-{self.depth}-w{self.width}{extra}-s{self.seed}"

    def spec(self) -> NetSpec:
        return NetSpec(self.family, self.block, self.depth, self.width, self.shortcut, self.norm)

    def params(self) -> dict[str, object]:
        return {"block": self.block, "depth": self.depth, "width": self.width, "shortcut": self.shortcut,
                "norm": self.norm, "seed": self.seed}  # fmt: skip


def expand(grid: GridConfig) -> list[Cell]:
    """Every cell of the grid once; a plain block has no shortcut, so its cells take the first shortcut only."""
    cells: dict[str, Cell] = {}
    for seed, width, norm, block, depth, shortcut in itertools.product(
        grid.seeds, grid.widths, grid.norms, grid.blocks, sorted(grid.depths), grid.shortcuts
    ):
        if block == "plain":
            shortcut = grid.shortcuts[0]
        cell = Cell(grid.family, block, depth, width, shortcut, norm, seed)
        cells.setdefault(cell.key, cell)
    return list(cells.values())
