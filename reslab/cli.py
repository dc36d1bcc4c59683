"""The `reslab` console script: summary, train, sweep, report, ui.

Each command imports what it needs when it runs, so `reslab summary` does not pay for Lightning or MLflow. Bad
input ends in one line on stderr that says what is wrong and what is valid, and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from reslab.models.blocks import BLOCK_KINDS, NORMS, SHORTCUTS

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (argparse's default prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' -> (3, 32, 32); '1x40' -> (1, 40)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(
            f"malformed input shape {text!r}: give positive sizes joined by 'x', e.g. 3x32x32 or 1x40"
        )
    return shape


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_net_arguments(p: argparse.ArgumentParser) -> None:
    """The options that describe one network (shared by summary and train)."""
    from reslab.models.registry import FAMILIES

    p.add_argument("--family", default="resnet", choices=list(FAMILIES), help="network family (default resnet)")
    p.add_argument("--block", default="residual", choices=BLOCK_KINDS, help="how each block combines F(x) and x")
    p.add_argument("--depth", type=_positive_int, help="weighted layers (resnet: 6n+2; mlp: 2n+2; convnet: 6k+1)")
    p.add_argument("--width", type=_positive_int, help="base width (resnet 16, mlp 64, convnet 32 by default)")
    p.add_argument("--shortcut", type=str.upper, choices=SHORTCUTS, help="A zero-pad, B projection, C all-projection")
    p.add_argument("--norm", choices=NORMS, help="batch (default; none for convnet) or none")


def _net_spec(args: argparse.Namespace):
    from reslab.models import NetSpec

    return NetSpec(
        family=args.family, block=args.block, depth=args.depth, width=args.width, shortcut=args.shortcut,
        norm=args.norm,
    )  # fmt: skip


def cmd_summary(args: argparse.Namespace) -> int:
    from reslab.models import describe

    spec = _net_spec(args)
    summary = describe(spec, args.input, args.classes)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(summary.table(f"{spec.family} {spec.name}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reslab", description="Depth-scaling benchmarks for plain and residual networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("summary", help="Keras-style table of the layers, parameters and MACs of one network")
    add_net_arguments(p)
    p.add_argument("--input", type=parse_shape, help="input shape without batch, e.g. 3x32x32 or 1x40")
    p.add_argument("--classes", type=_positive_int, help="outputs of the head (10; 1 for the seed's convnet)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from reslab.models.rules import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, UsageError) as exc:
        print(f"reslab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
