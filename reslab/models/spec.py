"""`NetSpec`: the frozen, validated description of one network, and the depth rules of each family.

Depth is the input of a depth-scaling study (He et al. 2015 count weighted layers: 6n+2 for the CIFAR nets), so the
spec takes a depth and every family derives its block counts from it; an impossible depth is refused here, with the
nearest valid depths, before anything is built or trained. Change a spec with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reslab.models.catalog import BLOCK_KINDS, FAMILY_INFO, NORMS, SHORTCUTS
from reslab.models.rules import SpecError


def _one_of(value: object, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise SpecError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class NetSpec:
    """One network of a family. Unset fields (None) take the family's defaults on construction, so a spec that
    exists is complete and valid; `stages` is the convnet family's list of (filters, pool) and derived from width
    when not given."""

    family: str = "resnet"
    block: str = "residual"
    depth: int | None = None
    width: int | None = None
    shortcut: str | None = None
    norm: str | None = None
    stages: tuple[tuple[int, bool], ...] | None = field(default=None)

    def __post_init__(self) -> None:
        _one_of(self.family, tuple(FAMILY_INFO), "family")
        fam = FAMILY_INFO[self.family]
        _one_of(self.block, BLOCK_KINDS, "block")
        for name, default in (
            ("depth", fam.default_depth),
            ("width", fam.default_width),
            ("shortcut", fam.default_shortcut),
            ("norm", fam.default_norm),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        _one_of(self.shortcut, SHORTCUTS, "shortcut")
        _one_of(self.norm, NORMS, "norm")
        for name in ("depth", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"{name} must be an integer, got {value!r}")
            if value <= 0:
                raise SpecError(f"{name} must be a positive integer, got {value}")
        if self.stages is not None:
            if self.family != "convnet":
                raise SpecError(f"stages apply to the convnet family only, not {self.family!r}")
            stages = tuple((int(f), bool(p)) for f, p in self.stages)
            if not stages or any(f <= 0 for f, _ in stages):
                raise SpecError(f"stages must be a non-empty list of (filters > 0, pool), got {self.stages!r}")
            object.__setattr__(self, "stages", stages)
        elif self.family == "convnet":
            w = self.width
            object.__setattr__(self, "stages", ((w, True), (2 * w, True), (4 * w, False)))
        rule = fam.depth_rule(self)
        if not rule.is_valid(self.depth):
            near = " or ".join(str(d) for d in rule.nearest(self.depth))
            raise SpecError(
                f"depth {self.depth} is not valid for family {self.family!r} (depth = {rule.form}, n >= 1); "
                f"nearest valid depths: {near}"
            )

    @property
    def blocks_per_stage(self) -> int:
        """n of the family's depth rule: blocks in each stage."""
        return FAMILY_INFO[self.family].depth_rule(self).blocks(self.depth)

    @property
    def name(self) -> str:
        """A readable identifier such as `residual-56-w16` (run names add the seed)."""
        return f"{self.block}-{self.depth}-w{self.width}"
