"""The command line's network and training options, derived from `NetSpec`'s and `TrainConfig`'s fields.

A network is described once, by `NetSpec` (its fields carry their help, choices and grid key), and a recipe once, by
`TrainConfig` (its fields carry their descriptions and defaults): every option here, its choices, its help and the
defaults the help shows are read from them, so a field added there is an option here with no other change.
Torch-free, like the catalog: `reslab --help` and argument errors answer without importing torch.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from typing import Any

from reslab.models.catalog import FAMILY_INFO
from reslab.models.remedies import REMEDIES

#: `reslab probe`'s width where none is given: the default sweep's (configs/default.yaml), for the resnet family.
PROBE_WIDTH = {"resnet": 8}
#: The fields `reslab probe --block plain,residual --depth 20,56` takes as comma-separated lists.
LIST_FIELDS = ("block", "depth")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def list_of(kind: Callable[[str], object], what: str) -> Callable[[str], tuple]:
    """An argparse type for comma-separated values, each parsed by `kind` (`reslab probe --depth 20,56,110`)."""

    def parse(text: str) -> tuple:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return tuple(kind(part) for part in parts)

    return parse


def one_of(choices: tuple[str, ...], transform: Callable[[str], str] = str) -> Callable[[str], str]:
    """An argparse type that accepts one of `choices` (after `transform`), with argparse's own wording."""

    def parse(text: str) -> str:
        value = transform(text)
        if value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return value

    return parse


def _stages(text: str) -> tuple[tuple[int, bool], ...]:
    from reslab.models.spec import parse_stages

    try:
        return parse_stages(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _per_family(what: Callable[[Any], object]) -> str:
    from reslab.models.spec import NetSpec

    values = ((name, what(NetSpec(name))) for name in FAMILY_INFO)
    return "; ".join(f"{name}: {value}" for name, value in values if value is not None)  # None: not the family's


def add_net_arguments(p: argparse.ArgumentParser, lists: bool = False) -> None:
    """One option per `NetSpec` field (`--branch-scale` for `branch_scale`), with the field's choices and help and
    the defaults of each family. With `lists` (reslab probe), --block and --depth take comma-separated lists: one
    network per combination."""
    from reslab.models.spec import spec_fields

    for f in spec_fields():
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        choices: tuple[str, ...] | None = meta["choices"]
        if f.name == "family":
            p.add_argument(flag, default="resnet", type=one_of(choices), metavar="{" + ",".join(choices) + "}",
                           help=f"{meta['help']}: {', '.join(choices)} (default resnet)")  # fmt: skip
            continue
        if f.name == "remedy":
            described = "; ".join(r.summary for r in REMEDIES.values())
            p.add_argument(flag, type=one_of(choices), metavar="{" + ",".join(choices) + "}",
                           help=f"{meta['help']}: {described}")  # fmt: skip
            continue
        if f.name == "stages":
            p.add_argument(flag, type=_stages, metavar="F[:pool],...", help=meta["help"])
            continue
        kind: Callable[[str], Any]
        if choices:
            kind = one_of(choices, str.upper if f.name == "shortcut" else str)
            metavar = "{" + ",".join(choices) + "}"
        else:
            kind, metavar = positive_int, "N"
        if meta["default"]:
            default = f"default {meta['default']}"
        elif f.name == "depth":
            default = _per_family(lambda s: FAMILY_INFO[s.family].depth_rule(s).form)
        elif f.name == "width" and lists:
            default = "default " + _per_family(lambda s: PROBE_WIDTH.get(s.family, s.width))
        else:
            default = "default " + _per_family(lambda s, name=f.name: getattr(s, name))
        help_text = f"{meta['help']} ({default})"
        if lists and f.name in LIST_FIELDS:
            p.add_argument(flag, type=list_of(kind, f"{f.name}s"), metavar=f"{metavar}[,...]",
                           required=f.name == "depth", help=f"{f.name}s to probe, comma-separated: {help_text}")
        else:
            p.add_argument(flag, type=kind, metavar=metavar, help=help_text)


def net_specs(args: argparse.Namespace, lists: bool = False) -> list:
    """The networks the options name, each checked against its family's rules before anything is built (NetSpec
    raises SpecError with what is valid): one, or with `lists` one per (block, depth) combination."""
    import itertools

    from reslab.models.spec import NetSpec, spec_fields

    given = {f.name: getattr(args, f.name) for f in spec_fields()}
    if not lists:
        return [NetSpec(**given)]
    if given["width"] is None:
        given["width"] = PROBE_WIDTH.get(given["family"])
    axes = [tuple(dict.fromkeys(given[name] or (None,))) for name in LIST_FIELDS]
    return [NetSpec(**{**given, **dict(zip(LIST_FIELDS, combo, strict=True))}) for combo in itertools.product(*axes)]


def _bare(annotation: Any) -> Any:
    """`int | None` -> int; `int | str` and `bool` as they are."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One option per `TrainConfig` field (`--batch-size` for `batch_size`), its help the field's description and
    default; booleans as --x / --no-x. Values are checked by `TrainConfig` itself (one line per problem)."""
    from reslab.train.config import TrainConfig

    for name, info in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = _bare(info.annotation)
        default = info.default
        shown = {None: "off", True: "on", False: "off"}.get(default, default) if not isinstance(default, float) \
            else f"{default:g}"
        if isinstance(default, tuple):
            shown = ",".join(f"{v:g}" for v in default)
        help_text = info.description or name.replace("_", " ")
        if "(default" not in help_text:  # a default that depends on the device says so itself
            help_text += f" (default {shown})"
        if annotation is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kwargs: dict[str, Any] = {"help": help_text}
        if typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(annotation)
        elif typing.get_origin(annotation) is tuple:
            kwargs.update(type=floats, metavar="X[,X...]")
        elif name == "devices":
            kwargs["type"] = _devices
        elif annotation is int:
            gt = [m.gt for m in info.metadata if hasattr(m, "gt")]
            kwargs["type"] = positive_int if gt == [0] else int
        elif annotation is float:
            kwargs["type"] = float
        p.add_argument(flag, **kwargs)


def train_values(args: argparse.Namespace) -> dict[str, Any]:
    """The `TrainConfig` fields given on the command line (the rest keep the recipe's defaults)."""
    from reslab.train.config import TrainConfig

    return {name: getattr(args, name) for name in TrainConfig.model_fields if getattr(args, name) is not None}
