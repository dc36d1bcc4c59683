"""Pure-torch networks for depth-scaling studies: specs, blocks, the family trunks and their complexity.

No Lightning and no I/O here, so the networks can be built, counted and benchmarked anywhere. The names below load
on first use (PEP 562): `reslab.models.spec`, `catalog`, `rules` and `estimate` are plain Python, and importing
them (the CLI's checks do) must not import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "BLOCK_KINDS": "catalog", "NORMS": "catalog", "SHORTCUTS": "catalog", "Block": "blocks", "Gate": "blocks",
    "FAMILIES": "registry", "Family": "registry", "build_net": "registry", "DepthRule": "rules",
    "SpecError": "rules", "NetSpec": "spec", "LayerRow": "summary", "ModelSummary": "summary",
    "count_params": "summary", "describe": "summary", "summarize": "summary", "Trunk": "trunk",
}  # fmt: skip

__all__ = [
    "BLOCK_KINDS", "FAMILIES", "NORMS", "SHORTCUTS", "Block", "DepthRule", "Family", "Gate", "LayerRow",
    "ModelSummary", "NetSpec", "SpecError", "Trunk", "build_net", "count_params", "describe", "summarize",
]  # fmt: skip

if TYPE_CHECKING:
    from reslab.models.blocks import Block, Gate
    from reslab.models.catalog import BLOCK_KINDS, NORMS, SHORTCUTS
    from reslab.models.registry import FAMILIES, Family, build_net
    from reslab.models.rules import DepthRule, SpecError
    from reslab.models.spec import NetSpec
    from reslab.models.summary import LayerRow, ModelSummary, count_params, describe, summarize
    from reslab.models.trunk import Trunk


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"reslab.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'reslab.models' has no attribute {name!r}")
