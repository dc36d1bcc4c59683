"""Grid expansion: a sweep's grid becomes its cells, each one network x seed, in a stable order.

The order runs the cheap cells first within each seed (depth ascending), so a partial sweep already has whole
depth curves for the first seed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from reslab.models.catalog import FAMILY_INFO
from reslab.models.remedies import NO_REMEDY, REMEDIES
from reslab.models.spec import NetSpec
from reslab.sweep.config import GridConfig

if TYPE_CHECKING:
    from reslab.train.config import TrainConfig


@dataclass(frozen=True)
class Cell:
    family: str
    block: str
    depth: int
    width: int
    shortcut: str
    norm: str
    seed: int
    remedy: str | None = None  # a preset of `reslab.models.remedies`; its fields are in block and norm already
    lr: float | None = None  # the grid's learning-rate axis; None: the recipe's
    #: the axes whose values differ between the cells of its sweep: a run name shows each of them
    varies: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def key(self) -> str:
        """The cell's identity in the queue and in MLflow (tag `reslab.cell`); a remedy and a learning rate from
        the grid are appended, so the cells of grids without them keep the keys they always had."""
        key = f"{self.family}-{self.block}-{self.depth}-w{self.width}-{self.shortcut}-{self.norm}"
        key += f"-{self.remedy}" if self.remedy else ""
        key += f"-lr{self.lr:g}" if self.lr is not None else ""
        return f"{key}-s{self.seed}"

    @property
    def name(self) -> str:
        """A readable run name such as `residual-56-w16-s0` or `fixup-110-w8-lr0.02-s0`: the remedy in place of
        the block; the family, shortcut and norm when they are not the family's own or differ within the sweep
        (a remedy's own norm and a plain block's absent shortcut are not repeated); the learning rate when the
        grid sweeps it. Unique within a sweep."""
        fam = FAMILY_INFO[self.family]
        fixed = REMEDIES[self.remedy].fields if self.remedy else {}
        family = f"{self.family}-" if self.family != "resnet" or "family" in self.varies else ""
        extra = ""
        if self.block != "plain" and (self.shortcut != fam.default_shortcut or "shortcut" in self.varies):
            extra += f"-{self.shortcut}"
        if "norm" not in fixed and (self.norm != fam.default_norm or "norm" in self.varies):
            extra += f"-norm{self.norm}"
        extra += f"-lr{self.lr:g}" if self.lr is not None else ""
        return f"{family}{self.remedy or self.block}-{self.depth}-w{self.width}{extra}-s{self.seed}"

    def run_name(self, slot: int | None = None) -> str:
        """The name of a run of this cell: `name`, or with a tuning slot (`residual-56-w16-s0-t3`) when the sweep
        tunes, where each cell has several runs."""
        return self.name if slot is None else f"{self.name}-t{slot}"

    def spec(self) -> NetSpec:
        return NetSpec(self.family, self.block, self.depth, self.width, self.shortcut, self.norm, remedy=self.remedy)

    def recipe(self, train: TrainConfig) -> TrainConfig:
        """The sweep's recipe for this cell: its seed, and its learning rate where the grid sweeps it."""
        return train.model_copy(update={"seed": self.seed, **({"lr": self.lr} if self.lr is not None else {})})


def expand(grid: GridConfig) -> list[Cell]:
    """Every cell of the grid once. A plain block has no shortcut, so its cells take the first shortcut only; a
    remedy sets its own block (and norm, where it has one), so it contributes one cell per value of the axes it
    leaves free."""
    cells: dict[str, Cell] = {}
    remedies = [None if r == NO_REMEDY else r for r in grid.remedies]
    for seed, width, lr, remedy, norm, block, depth, shortcut in itertools.product(
        grid.seeds, grid.widths, grid.lr or [None], remedies, grid.norms, grid.blocks, sorted(grid.depths),
        grid.shortcuts,
    ):  # fmt: skip
        fixed = REMEDIES[remedy].fields if remedy else {}
        block, norm = fixed.get("block", block), fixed.get("norm", norm)
        if block == "plain":
            shortcut = grid.shortcuts[0]
        cell = Cell(grid.family, block, depth, width, shortcut, norm, seed, remedy, lr)
        cells.setdefault(cell.key, cell)
    varies = frozenset(
        axis for axis in ("shortcut", "norm") if len({getattr(c, axis) for c in cells.values()}) > 1
    )
    return [replace(c, varies=varies) for c in cells.values()]
