"""`NetSpec`: the frozen, validated description of one network, and the depth rules of each family.

Depth is the input of a depth-scaling study (He et al. 2015 count weighted layers: 6n+2 for the CIFAR nets), so the
spec takes a depth and every family derives its block counts from it; an impossible depth is refused here, with the
nearest valid depths, before anything is built or trained. Change a spec with `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

from reslab.models.catalog import (
    ACTIVATIONS,
    BLOCK_KINDS,
    BRANCH_SCALES,
    FAMILY_INFO,
    INITS,
    NORMS,
    PARAMETRIZATIONS,
    SHORTCUTS,
)
from reslab.models.remedies import REMEDIES
from reslab.models.remedies import remedy as find_remedy
from reslab.models.rules import DepthRule, SpecError


def _one_of(value: object, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise SpecError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _field(help: str, choices: tuple[str, ...] | None = None, plural: str | None = None, key: str | None = None,
           default: str | None = None) -> Any:
    """A `NetSpec` field and what the rest of reslab derives from it: the CLI option and its help, the grid axis,
    the cell key, run names, MLflow tags and report columns.

    - `help`: one line for `--help`; `choices`: the valid names, when the field is a name;
    - `plural`: the sweep config's grid key (`grid.inits`); None for a field that is not swept: the family (one per
      sweep, since families have different depth rules) and the convnet's structured `stages` (set, not swept);
    - `key`: how the field always appears in a cell's key (`"w{}"` for the width); None: it appears as `-name-value`
      only when it is not its default, so the cells of sweeps that never set it keep their keys;
    - `default`: the family-independent default; None: the family's own (`FamilyInfo.default`), or unset on the
      families a field does not apply to (the transformer's heads and context elsewhere).
    """
    meta = {"help": help, "choices": choices, "plural": plural, "key": key, "default": default}
    return field(default=None, metadata=meta)


def default_stages(width: int) -> tuple[tuple[int, bool], ...]:
    """The convnet's stages when none are given: the Keras residual convnet example's (32, pool), (64, pool),
    (128, no pool) at width 32, scaled with the width."""
    return (width, True), (2 * width, True), (4 * width, False)


def format_stages(stages: tuple[tuple[int, bool], ...] | None) -> str:
    """(32, True), (64, True), (128, False) -> '32:pool,64:pool,128', as the CLI takes it and MLflow tags hold it."""
    return ",".join(f"{f}:pool" if pool else str(f) for f, pool in stages or ())


def parse_stages(text: str) -> tuple[tuple[int, bool], ...]:
    """'32:pool,64:pool,128' -> ((32, True), (64, True), (128, False)); SpecError on anything else."""
    stages = []
    for part in text.split(","):
        filters, _, pool = part.strip().partition(":")
        if not filters.isdigit() or int(filters) <= 0 or pool not in ("", "pool"):
            raise SpecError(f"malformed stages {text!r}: give filters > 0, each with ':pool' where the stage pools, "
                            f"joined by ',', e.g. 32:pool,64:pool,128")  # fmt: skip
        stages.append((int(filters), pool == "pool"))
    return tuple(stages)


@dataclass(frozen=True)
class NetSpec:
    """One network of a family. Unset fields (None) take the family's defaults on construction, so a spec that
    exists is complete and valid; `stages` is the convnet family's list of (filters, pool) and derived from width
    when not given; `heads` and `context` are the transformer's and unset on every other family. Every field is
    described once, here: see `_field`."""

    family: str = field(default="resnet", metadata={
        "help": "network family", "choices": tuple(FAMILY_INFO), "plural": None, "key": "{}", "default": "resnet"})
    block: str | None = _field("how each block combines F(x) and x", BLOCK_KINDS, "blocks", "{}", "residual")
    depth: int | None = _field("weighted layers", None, "depths", "{}")
    width: int | None = _field("base width", None, "widths", "w{}")
    shortcut: str | None = _field("A zero-pad, B projection, C all-projection (He et al. 2015, section 3.3)",
                                  SHORTCUTS, "shortcuts", "{}")
    norm: str | None = _field("normalisation", NORMS, "norms", "{}")
    stages: tuple[tuple[int, bool], ...] | None = _field(
        "the convnet's stages: filters, with ':pool' where the stage pools, e.g. 32:pool,64:pool,128 (default "
        "w:pool,2w:pool,4w for width w)")
    heads: int | None = _field("the transformer's attention heads per block (width must be a multiple)")
    context: int | None = _field("the transformer's context: the most tokens it attends over (its table of learned "
                                 "positions)")
    init: str | None = _field("weight initialisation", INITS, "inits")
    activation: str | None = _field("nonlinearity", ACTIVATIONS, "activations")
    branch_scale: str | None = _field("fixed multiplier in every residual sum (of the branch, or DeepNet's of the "
                                      "shortcut)", BRANCH_SCALES, "branch_scales")
    remedy: str | None = _field("a remedy for depth, short for the settings it names", tuple(REMEDIES), "remedies")
    parametrization: str | None = _field("how the residual update and the optimiser scale with depth: sp, depth_mup "
                                         "(Yang et al. 2023) or completep (Dey et al. 2025)", PARAMETRIZATIONS,
                                         "parametrizations")  # fmt: skip
    branch_layers: int | None = _field("the mlp's weighted layers per residual branch, 1 or 2 (depth k·n + 2)", None,
                                       "branch_layers")  # fmt: skip
    base_depth: int | None = _field("the depth a depth parametrization is tuned at, L0 (default: the family's "
                                    "smallest)", None, "base_depths")  # fmt: skip

    def __post_init__(self) -> None:
        _one_of(self.family, tuple(FAMILY_INFO), "family")
        fam = FAMILY_INFO[self.family]
        if self.remedy is not None:
            self._expand_remedy()
        for f in spec_fields():
            if getattr(self, f.name) is None and f.name not in ("stages", "remedy", "base_depth"):
                default = f.metadata["default"] or fam.default(f.name, self.block)
                object.__setattr__(self, f.name, default)
        for f in spec_fields():
            if f.metadata["choices"] and f.name not in ("family", "remedy"):
                _one_of(getattr(self, f.name), f.metadata["choices"], f.name)
        self._check_family_choices()
        self._check_remedy_fields()
        for name in _OWN_FIELDS:
            if name not in fam.own_fields and getattr(self, name) is not None:
                owners = " or ".join(n for n, info in FAMILY_INFO.items() if name in info.own_fields)
                raise SpecError(f"{name} applies to the {owners} family only, not {self.family!r}")
        for name in ("depth", "width", *fam.own_fields):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"{name} must be an integer, got {value!r}")
            if value <= 0:
                raise SpecError(f"{name} must be a positive integer, got {value}")
        if self.branch_layers not in (None, 1, 2):
            raise SpecError(f"branch_layers must be 1 or 2, got {self.branch_layers}")
        if self.branch_layers == 1 and self.init == "fixup":
            raise SpecError("init fixup (Zhang et al. 2019) scales a branch of m >= 2 layers by L^(-1/(2m-2)): it "
                            "needs branch_layers 2")  # fmt: skip
        if self.heads is not None and self.width % self.heads:
            low, high = self.width - self.width % self.heads, self.width - self.width % self.heads + self.heads
            raise SpecError(
                f"width {self.width} is not a multiple of heads {self.heads}: each head attends over width/heads "
                f"channels; choose a width such as {' or '.join(str(w) for w in (low, high) if w > 0)}, or other heads"
            )
        if self.stages is not None:
            if self.family != "convnet":
                raise SpecError(f"stages apply to the convnet family only, not {self.family!r}")
            stages = tuple((int(f), bool(p)) for f, p in self.stages)
            if not stages or any(f <= 0 for f, _ in stages):
                raise SpecError(f"stages must be a non-empty list of (filters > 0, pool), got {self.stages!r}")
            object.__setattr__(self, "stages", stages)
        elif self.family == "convnet":
            object.__setattr__(self, "stages", default_stages(self.width))
        rule = fam.depth_rule(self)
        if not rule.is_valid(self.depth):
            near = " or ".join(str(d) for d in rule.nearest(self.depth))
            raise SpecError(
                f"depth {self.depth} is not valid for family {self.family!r} (depth = {rule.form}, n >= 1); "
                f"nearest valid depths: {near}"
            )
        self._check_base_depth(rule)

    def _check_base_depth(self, rule: DepthRule) -> None:
        """L0 of a depth parametrization: fixed when the spec is made (the family's smallest depth unless given),
        never taken from a sweep's depths, so adding depths to a sweep does not change its nets. Without a depth
        parametrization (`sp`) it is unused and always the smallest, so it never tells two identical nets apart."""
        if self.base_depth is None or self.parametrization == "sp":
            object.__setattr__(self, "base_depth", rule.smallest)
        base = self.base_depth
        if isinstance(base, bool) or not isinstance(base, int):
            raise SpecError(f"base_depth must be an integer, got {base!r}")
        if not rule.is_valid(base):
            near = " or ".join(str(d) for d in rule.nearest(base))
            raise SpecError(f"base_depth {base} is not a valid depth of family {self.family!r} (depth = "
                            f"{rule.form}); nearest valid depths: {near}")  # fmt: skip
        if base > self.depth:
            raise SpecError(f"base_depth {base} is larger than depth {self.depth}: a depth parametrization scales "
                            f"from the base depth up; give a base_depth <= {self.depth}")  # fmt: skip

    def _expand_remedy(self) -> None:
        """Fill the fields the preset sets; a field given otherwise contradicts the preset and is refused."""
        preset = find_remedy(self.remedy)
        if self.family not in preset.families:
            where = "family" if len(preset.families) == 1 else "families"
            raise SpecError(
                f"remedy {self.remedy!r} applies to the {where} {', '.join(preset.families)}, not {self.family!r}"
            )
        for name, value in preset.fields_for(self.family).items():
            given = getattr(self, name)
            if given is None:
                object.__setattr__(self, name, value)
            elif given != value:
                raise SpecError(
                    f"remedy {preset.summary} sets {name} {value}, but {name} {given} was asked for: leave {name} "
                    f"out or choose another remedy"
                )

    def _check_family_choices(self) -> None:
        """Each named field holds a value this family builds: batch norm is the convolutional and dense families',
        layer norm the transformer's, the remedies' inits theirs, and each of the transformer's blocks takes one norm,
        so that two names never describe the same net."""
        fam = FAMILY_INFO[self.family]
        for name in fam.choices:
            value, valid = getattr(self, name), fam.valid(name, self.block)
            if value in valid:
                continue
            if value in fam.choices[name]:  # the family's, but not this block's
                per_block = "; ".join(f"{b}: {' or '.join(fam.valid(name, b))}" for b in fam.choices["block"])
                raise SpecError(f"block {self.block} takes {name} {' or '.join(valid)} on the {self.family} family "
                                f"({per_block}), got {value}")  # fmt: skip
            owners = [n for n, info in FAMILY_INFO.items() if value in info.choices[name]]
            where = "family" if len(owners) == 1 else "families"
            raise SpecError(f"{name} {value} applies to the {where} {', '.join(owners)}, not {self.family!r}; valid: "
                            f"{', '.join(valid)}")  # fmt: skip

    def _check_remedy_fields(self) -> None:
        """The combinations the papers define, whether set by a preset or one field at a time."""
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
        if self.branch_scale == "deepnorm" and self.block != "residual":
            raise SpecError(
                f"branch_scale deepnorm (Wang et al. 2022) weights the shortcut of post-norm sums, LN(alpha·x + F(x)): "
                f"it needs block residual, got {self.block}"
            )
        if self.parametrization != "sp":
            self._check_parametrization()
        if self.branch_scale != "none" and self.block not in ("residual", "preact"):
            raise SpecError(
                f"branch_scale {self.branch_scale} scales the branch of a residual sum: it needs block residual or "
                f"preact, got {self.block}"
            )

    def _check_parametrization(self) -> None:
        """Depth-muP and CompleteP are derived for pre-activation (pre-norm) residual updates x + F(x) without batch
        norm (Yang et al. 2023; Dey et al. 2025): a ReLU or a norm after the sum, a gate or a fixed multiplier of its
        own is outside the theory."""
        name = self.parametrization
        needs_norm = "layer" if self.family == "transformer" else "none"
        if self.block != "preact" or self.norm != needs_norm:
            raise SpecError(
                f"parametrization {name} is defined for pre-activation residual blocks (x + F(x), nothing after the "
                f"sum) with norm {needs_norm} on the {self.family} family: use block preact and norm {needs_norm}, "
                f"got block {self.block} and norm {self.norm}"
            )
        for field_name, plain in (("branch_scale", "none"), ("init", FAMILY_INFO[self.family].choices["init"][0])):
            if getattr(self, field_name) != plain:
                raise SpecError(f"parametrization {name} sets the branch multiplier itself: it cannot be combined "
                                f"with {field_name} {getattr(self, field_name)}; leave {field_name} out")  # fmt: skip

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


def spec_fields() -> tuple[Field, ...]:
    """`NetSpec`'s fields, each with the metadata of `_field`."""
    return fields(NetSpec)


#: The fields only some families have (the transformer's heads and context), unset elsewhere.
_OWN_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(name for info in FAMILY_INFO.values() for name in info.own_fields))


def axis_fields() -> Iterator[Field]:
    """The fields a sweep's grid can vary, each under its plural key (`grid.inits`)."""
    return (f for f in spec_fields() if f.metadata["plural"])


def spec_values(spec: NetSpec) -> dict[str, Any]:
    """Every field as a scalar, an unset one (remedy, a non-convnet's stages, a non-transformer's heads) as `none`,
    stages as text: the MLflow tags of a run, the columns of a report, the labels of a probe."""
    values = {f.name: getattr(spec, f.name) for f in spec_fields()}
    values["stages"] = format_stages(spec.stages) if spec.stages else None
    return {k: "none" if v is None else v for k, v in values.items()}


def spec_from_values(values: Mapping[str, Any]) -> NetSpec:
    """The spec that `spec_values` or a run's MLflow tags (text) describe; a field left out takes its default, as
    it did when a run older than the field was recorded."""
    given: dict[str, Any] = {}
    for f in spec_fields():
        value = values.get(f.name)
        if value is None or (value == "none" and "none" not in (f.metadata["choices"] or ())):
            continue  # unset: `none` is a value of the norm and the branch scale only
        if f.name == "stages":
            value = parse_stages(value) if isinstance(value, str) else value
        elif f.type.startswith("int"):
            value = int(value)
        given[f.name] = value
    return NetSpec(**given)


def spec_extras(spec: NetSpec, always: frozenset[str] = frozenset(), label: bool = False) -> list[tuple[str, str]]:
    """The fields beyond He et al.'s six (family, block, depth, width, shortcut, norm) that `spec` sets away from
    their defaults (or that are in `always`), less those its remedy sets: cell keys, run names and report labels
    write them as `name-value`, so nets that never set them keep the names they always had. A `label` (a run name,
    a report's name for a net) leaves out the transformer's heads and context, which a sweep sets once for all its
    nets (not swept); the key keeps them."""
    fixed = REMEDIES[spec.remedy].fields_for(spec.family) if spec.remedy else {}
    own = {f.name for f in spec_fields() if f.name in FAMILY_INFO[spec.family].own_fields and not f.metadata["plural"]}
    own = own if label else set()
    out = []
    for f in spec_fields():
        if f.metadata["key"] or f.name == "remedy" or f.name in fixed or f.name in own:
            continue
        value = getattr(spec, f.name)
        default = f.metadata["default"] or FAMILY_INFO[spec.family].default(f.name, spec.block)
        if f.name == "stages":
            default = default_stages(spec.width) if spec.family == "convnet" else None
        if f.name == "base_depth":
            default = FAMILY_INFO[spec.family].depth_rule(spec).smallest
        if value != default or f.name in always:
            out.append((f.name, format_stages(value) if f.name == "stages" else str(value)))
    return out


def spec_key(spec: NetSpec) -> str:
    """The network's part of a sweep cell's identity (`resnet-residual-56-w16-A-batch`, then the remedy and the
    other fields as `spec_extras` writes them): stable, since stored queues and MLflow runs are found by it."""
    parts = [f.metadata["key"].format(getattr(spec, f.name)) for f in spec_fields() if f.metadata["key"]]
    parts += [spec.remedy] if spec.remedy else []
    parts += [f"{name}-{value}" for name, value in spec_extras(spec)]
    return "-".join(parts)


def variant(spec: NetSpec) -> str:
    """What a report calls a net and groups its runs by: the remedy (else the block), with `-norm<norm>` when the
    norm is not the family's default and not the remedy's own, as run names write it (`residual-normnone`), and
    the other fields that differ from their defaults (`residual-init-delta_orthogonal`)."""
    fixed = REMEDIES[spec.remedy].fields_for(spec.family) if spec.remedy else {}
    name = spec.remedy or spec.block
    if "norm" not in fixed and spec.norm != FAMILY_INFO[spec.family].default("norm", spec.block):
        name += f"-norm{spec.norm}"
    return name + "".join(f"-{k}-{v}" for k, v in spec_extras(spec, label=True))
