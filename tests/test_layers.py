"""reslab's packages import one way, down a fixed order of layers (the README's Architecture section explains it):
a module may import its own layer and the layers below, never one above. Read from the source with `ast`, every
import counted, those inside functions too, since a lazy import pointing up is still a cycle waiting to happen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Bottom to top. `tracking` sits below `data` and `train` because a training run records itself through it.
LAYERS: list[set[str]] = [
    {"models", "devices", "redact", "tags", "atomic", "paths", "interrupts"},
    {"tracking"},
    {"data"},
    {"train", "probe"},
    {"limits"},
    {"sweep"},
    {"report"},
    {"perf", "profiling"},
    {"cli", "cli_options", "__init__", "__main__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """'reslab.sweep.grid' -> 'sweep'; 'reslab' (the package itself) -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> list[str]:
    """Every reslab module `path` imports (`from reslab import tracking` is reslab.tracking)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("reslab")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "reslab":
                out += [f"reslab.{a.name}" for a in node.names]
            elif node.module.startswith("reslab."):
                out.append(node.module)
    return out


MODULES = sorted((ROOT / "reslab").rglob("*.py"))


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {unit_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in MODULES}
    assert units <= set(LAYER), f"add {sorted(units - set(LAYER))} to a layer"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT / "reslab")))
def test_no_import_points_up(path: Path) -> None:
    importer = unit_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
    up = [m for m in imports_of(path) if LAYER[unit_of(m)] > LAYER[importer]]
    assert not up, f"{importer} (layer {LAYER[importer]}) imports {up} from above it"


def test_the_check_catches_an_import_pointing_up(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from reslab.report.collect import CELL_COLUMNS\n")
    assert [LAYER[unit_of(m)] for m in imports_of(source)] == [LAYER["report"]] and LAYER["report"] > LAYER["train"]
