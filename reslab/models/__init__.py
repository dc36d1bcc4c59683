"""Pure-torch networks for depth-scaling studies: specs, blocks, the three family trunks and their complexity.

No Lightning and no I/O here, so the networks can be built, counted and benchmarked anywhere.
"""

from reslab.models.blocks import BLOCK_KINDS, NORMS, SHORTCUTS, Block, Gate
from reslab.models.registry import FAMILIES, Family, build_net
from reslab.models.rules import DepthRule, SpecError
from reslab.models.spec import NetSpec
from reslab.models.summary import LayerRow, ModelSummary, count_params, describe, summarize
from reslab.models.trunk import Trunk

__all__ = [
    "BLOCK_KINDS",
    "FAMILIES",
    "NORMS",
    "SHORTCUTS",
    "Block",
    "DepthRule",
    "Family",
    "Gate",
    "LayerRow",
    "ModelSummary",
    "NetSpec",
    "SpecError",
    "Trunk",
    "build_net",
    "count_params",
    "describe",
    "summarize",
]
