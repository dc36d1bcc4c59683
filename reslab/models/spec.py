"""`NetSpec`: the frozen, validated description of one network, and the depth rules of each family.

Depth is the input of a depth-scaling study (He et al. 2015 count weighted layers: 6n+2 for the CIFAR nets), so the
spec takes a depth and every family derives its block counts from it; an impossible depth is refused here, with the
nearest valid depths, before anything is built or trained. Change a spec with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reslab.models.catalog import (
    ACTIVATIONS,
    BLOCK_KINDS,
    BRANCH_SCALES,
    FAMILY_INFO,
    INITS,
    NORMS,
    REMEDY_FAMILIES,
    SHORTCUTS,
)
from reslab.models.remedies import remedy as find_remedy
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
    block: str | None = None
    depth: int | None = None
    width: int | None = None
    shortcut: str | None = None
    norm: str | None = None
    stages: tuple[tuple[int, bool], ...] | None = field(default=None)
    init: str | None = None
    activation: str | None = None
    branch_scale: str | None = None
    remedy: str | None = None

    def __post_init__(self) -> None:
        _one_of(self.family, tuple(FAMILY_INFO), "family")
        fam = FAMILY_INFO[self.family]
        if self.remedy is not None:
            self._expand_remedy()
        for name, default in (
            ("block", "residual"),
            ("init", INITS[0]),
            ("activation", ACTIVATIONS[0]),
            ("branch_scale", BRANCH_SCALES[0]),
            ("depth", fam.default_depth),
            ("width", fam.default_width),
            ("shortcut", fam.default_shortcut),
            ("norm", fam.default_norm),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        _one_of(self.block, BLOCK_KINDS, "block")
        _one_of(self.shortcut, SHORTCUTS, "shortcut")
        _one_of(self.norm, NORMS, "norm")
        _one_of(self.init, INITS, "init")
        _one_of(self.activation, ACTIVATIONS, "activation")
        _one_of(self.branch_scale, BRANCH_SCALES, "branch_scale")
        self._check_remedy_fields()
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

    def _expand_remedy(self) -> None:
        """Fill the fields the preset sets; a field given otherwise contradicts the preset and is refused."""
        preset = find_remedy(self.remedy)
        if self.family not in REMEDY_FAMILIES:
            raise SpecError(
                f"remedy {self.remedy!r} applies to the families {', '.join(REMEDY_FAMILIES)}, not {self.family!r}"
            )
        for name, value in preset.fields.items():
            given = getattr(self, name)
            if given is None:
                object.__setattr__(self, name, value)
            elif given != value:
                raise SpecError(
                    f"remedy {preset.summary} sets {name} {value}, but {name} {given} was asked for: leave {name} "
                    f"out or choose another remedy"
                )

    def _check_remedy_fields(self) -> None:
        """The combinations the papers define, whether set by a preset or one field at a time."""
        changed = [f"{k} {getattr(self, k)}" for k, default in
                   (("init", INITS[0]), ("activation", ACTIVATIONS[0]), ("branch_scale", BRANCH_SCALES[0]))
                   if getattr(self, k) != default]  # fmt: skip
        if changed and self.family not in REMEDY_FAMILIES:
            raise SpecError(f"{', '.join(changed)} apply to the families {', '.join(REMEDY_FAMILIES)}, not "
                            f"{self.family!r}")  # fmt: skip
        if self.init == "fixup" and (self.block != "residual" or self.norm != "none"):
            raise SpecError(
                f"init fixup (Zhang et al. 2019) replaces normalisation in residual nets: it needs block residual "
                f"and norm none, got block {self.block} and norm {self.norm}"
            )
        if self.activation == "tat" and (self.block != "plain" or self.norm != "none"):
            raise SpecError(
                f"activation tat (Zhang et al. 2022) is tailored to plain nets without normalisation: it needs block "
                f"plain and norm none, got block {self.block} and norm {self.norm}"
            )
        if self.branch_scale != "none" and self.block not in ("residual", "preact"):
            raise SpecError(
                f"branch_scale {self.branch_scale} scales the branch of a residual sum: it needs block residual or "
                f"preact, got {self.block}"
            )

    @property
    def blocks_per_stage(self) -> int:
        """n of the family's depth rule: blocks in each stage."""
        return FAMILY_INFO[self.family].depth_rule(self).blocks(self.depth)

    @property
    def name(self) -> str:
        """A readable identifier such as `residual-56-w16` or `mlp-fixup-20-w64` (run names add the seed): the
        family when it is not the default one, the remedy in place of the block."""
        family = "" if self.family == "resnet" else f"{self.family}-"
        return f"{family}{self.remedy or self.block}-{self.depth}-w{self.width}"
