"""Grid expansion: a sweep's grid becomes its cells, each one network x seed (x learning rate), in a stable order.

A cell is a `NetSpec` plus what the recipe sweeps: the seed, where the grid has an lr axis the learning rate, and
for the cells of an arm (`SweepConfig.arms`: more cells, trained with some recipe settings changed) those settings.
Every axis is a `NetSpec` field (`reslab.models.spec.axis_fields`), so a field added to the spec is a grid axis with
no change here. The order runs the cheap cells first within each seed (depth ascending), so a partial sweep
already has whole depth curves for the first seed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from reslab.models.catalog import FAMILY_INFO
from reslab.models.remedies import NO_REMEDY, REMEDIES
from reslab.models.spec import NetSpec, axis_fields, spec_extras, spec_fields, spec_key

if TYPE_CHECKING:
    from reslab.sweep.config import GridConfig
    from reslab.train.config import TrainConfig

_SPEC_FIELDS = frozenset(f.name for f in spec_fields())


@dataclass(frozen=True)
class Cell:
    """One network (`net`), one seed, and the grid's learning rate (None: the recipe's). The net's fields read
    through the cell (`cell.depth`)."""

    net: NetSpec
    seed: int
    lr: float | None = None
    #: an arm's recipe settings, sorted (field, value) pairs: the cell trains with them in place of the sweep's
    train: tuple[tuple[str, Any], ...] = ()
    #: the spec fields whose values differ between the cells of its sweep: a run name shows each of them
    varies: frozenset[str] = field(default=frozenset(), compare=False)

    def __getattr__(self, name: str) -> Any:
        if name in _SPEC_FIELDS:
            return getattr(self.net, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def key(self) -> str:
        """The cell's identity in the queue and in MLflow (tag `reslab.cell`): `spec_key`, the grid's learning
        rate, the seed. Fields a grid never set are not written, so old sweeps' cells keep their keys."""
        lr = f"-lr{self.lr:g}" if self.lr is not None else ""
        return f"{spec_key(self.net)}{lr}{self.arm}-s{self.seed}"

    @property
    def arm(self) -> str:
        """An arm's settings as its cells' keys and run names write them (`-warmup_epochs1`); '' for the grid's
        own cells."""
        return "".join(f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}" for k, v in self.train)

    @property
    def name(self) -> str:
        """A readable run name such as `residual-56-w16-s0` or `fixup-110-w8-lr0.02-s0`: the remedy in place of
        the block; the family, shortcut, norm and other fields when they are not the family's own or differ within
        the sweep (a remedy's own settings and a plain block's absent shortcut are not repeated); the learning
        rate when the grid sweeps it; an arm's settings. Unique within a sweep."""
        net = self.net
        fam = FAMILY_INFO[net.family]
        fixed = REMEDIES[net.remedy].fields_for(net.family) if net.remedy else {}
        family = f"{net.family}-" if net.family != "resnet" or "family" in self.varies else ""
        extra = ""
        if net.block != "plain" and (net.shortcut != fam.default_shortcut or "shortcut" in self.varies):
            extra += f"-{net.shortcut}"
        if "norm" not in fixed and (net.norm != fam.default("norm", net.block) or "norm" in self.varies):
            extra += f"-norm{net.norm}"
        extra += "".join(f"-{k}-{v}" for k, v in spec_extras(net, self.varies, label=True))
        extra += f"-lr{self.lr:g}" if self.lr is not None else ""
        return f"{family}{net.remedy or net.block}-{net.depth}-w{net.width}{extra}{self.arm}-s{self.seed}"

    def run_name(self, slot: int | None = None) -> str:
        """The name of a run of this cell: `name`, or with a tuning slot (`residual-56-w16-s0-t3`) when the sweep
        tunes, where each cell has several runs."""
        return self.name if slot is None else f"{self.name}-t{slot}"

    def spec(self) -> NetSpec:
        return self.net

    def recipe(self, train: TrainConfig) -> TrainConfig:
        """The sweep's recipe for this cell: its seed, its learning rate where the grid sweeps it, its arm's
        settings."""
        lr = {"lr": self.lr} if self.lr is not None else {}
        return train.model_copy(update={"seed": self.seed, **lr, **dict(self.train)})


def axis_values(grid: GridConfig) -> dict[str, list[Any]]:
    """Each spec field's values in the grid (a remedy's `none` as None), depths ascending; a field the grid does
    not sweep (the family, the convnet's stages, the transformer's heads and context) as its one value."""
    values: dict[str, list[Any]] = {}
    for f in spec_fields():
        if f.metadata["plural"]:
            given = getattr(grid, f.metadata["plural"])
            values[f.name] = sorted(given) if f.name == "depth" else list(given)
        else:
            values[f.name] = [getattr(grid, f.name)]
    values["remedy"] = [None if r == NO_REMEDY else r for r in values["remedy"]]
    return values


def _norm_beyond_block(net: NetSpec) -> str | None:
    """The net's norm where its block's default does not already say it (None where it does): ReZero without LN
    and post-norm with LN are each their block's own, so a grid of both names no norm."""
    return None if net.norm == FAMILY_INFO[net.family].default("norm", net.block) else net.norm


def expand(grid: GridConfig) -> list[Cell]:
    """Every cell of the grid once. A plain block has no shortcut, so its cells take the first shortcut only; a
    block takes those of the grid's norms it can (on the transformer each block has one: LN, or none for ReZero); a
    remedy sets its own fields (block, norm, init ...), so it contributes one cell per value of the axes it leaves
    free. Raises SpecError for a combination no family can build."""
    values = axis_values(grid)
    names = list(values)
    # Outer to inner: seed, width and lr as they always were, then the other axes in field order reversed, then
    # depth ascending and shortcut innermost.
    order = ["seed", "width", "lr", *[n for n in reversed(names) if n not in ("width", "depth", "shortcut")], "depth",
             "shortcut"]
    lists = {"seed": grid.seeds, "lr": grid.lr or [None], **values}
    cells: dict[str, Cell] = {}
    for combo in itertools.product(*(lists[n] for n in order)):
        chosen = dict(zip(order, combo, strict=True))
        seed, lr = chosen.pop("seed"), chosen.pop("lr")
        fixed = REMEDIES[chosen["remedy"]].fields_for(chosen["family"]) if chosen["remedy"] else {}
        chosen.update(fixed)
        if chosen["block"] == "plain":
            chosen["shortcut"] = values["shortcut"][0]
        takes = FAMILY_INFO[chosen["family"]].valid("norm", chosen["block"])
        if chosen["norm"] not in takes and any(n in takes for n in values["norm"]):
            continue  # the grid's other norm is this block's (the transformer's ReZero has none, its others LN)
        net = NetSpec(**chosen)
        cell = Cell(net, seed, lr)
        cells.setdefault(cell.key, cell)
    return with_varies(list(cells.values()), values)


def with_varies(cells: list[Cell], values: dict[str, list[Any]]) -> list[Cell]:
    """The cells with what their run names show: the shortcut and norm wherever the cells differ in them (a remedy
    may set the norm), and the other fields where the grid (`values`, each field's listed values) lists several (a
    remedy's own settings are in its name)."""
    varies = frozenset(
        ["shortcut"] * (len({c.net.shortcut for c in cells}) > 1)
        + ["norm"] * (len({_norm_beyond_block(c.net) for c in cells}) > 1)
        + [f.name for f in axis_fields() if f.name not in ("block", "depth", "width", "shortcut", "norm", "remedy")
           and len(values[f.name]) > 1]
    )  # fmt: skip
    return [replace(c, varies=varies) for c in cells]


def sweep_cells(grid: GridConfig, arms: list[tuple[GridConfig, dict[str, Any]]]) -> list[Cell]:
    """Every cell of a sweep once: the grid's, then each arm's (its grid's, each trained with its recipe settings).
    Run names show a field wherever the grid or any arm lists several values of it, so they read alike across arms."""
    cells = expand(grid)
    if not arms:
        return cells
    values = {k: list(v) for k, v in axis_values(grid).items()}
    for arm_grid, train in arms:
        settings = tuple(sorted(train.items()))
        cells += [replace(c, train=settings) for c in expand(arm_grid)]
        for name, listed in axis_values(arm_grid).items():
            values[name] += [v for v in listed if v not in values[name]]
    return with_varies(list({c.key: c for c in cells}.values()), values)
