"""The papers' numbers, with their sources, overlaid on CIFAR reports so a reproduction can be judged at a glance.

He et al. 2015, "Deep Residual Learning for Image Recognition", Table 6: CIFAR-10 test error (%) of the 6n+2
ResNets (option A), and their parameter counts. He et al. 2016, "Identity Mappings in Deep Residual Networks",
Table 3: original vs pre-activation residual units (CIFAR-10 and CIFAR-100 test error, %; their 164 and 1001 use
bottleneck blocks).
"""

from __future__ import annotations

import pandas as pd

HE2015 = "He et al. 2015, Table 6"
HE2016 = "He et al. 2016, Table 3"

# (dataset, block, depth) -> (test error %, params, source)
ANCHORS: dict[tuple[str, str, int], tuple[float, float | None, str]] = {
    ("cifar10", "residual", 20): (8.75, 0.27e6, HE2015),
    ("cifar10", "residual", 32): (7.51, 0.46e6, HE2015),
    ("cifar10", "residual", 44): (7.17, 0.66e6, HE2015),
    ("cifar10", "residual", 56): (6.97, 0.85e6, HE2015),
    ("cifar10", "residual", 110): (6.43, 1.7e6, HE2015),
    ("cifar10", "residual", 1202): (7.93, 19.4e6, HE2015),
    ("cifar10", "residual", 164): (5.93, 1.7e6, HE2016),
    ("cifar10", "residual", 1001): (7.61, 10.2e6, HE2016),
    ("cifar10", "preact", 164): (5.46, 1.7e6, HE2016),
    ("cifar10", "preact", 1001): (4.92, 10.2e6, HE2016),
    ("cifar100", "residual", 164): (25.16, 1.7e6, HE2016),
    ("cifar100", "preact", 164): (24.33, 1.7e6, HE2016),
    ("cifar100", "residual", 1001): (27.82, 10.2e6, HE2016),
    ("cifar100", "preact", 1001): (22.71, 10.2e6, HE2016),
}


def anchors_for(dataset: str, blocks: list[str] | None = None, depths: list[int] | None = None) -> pd.DataFrame:
    """Rows (block, depth, test_error %, params, source) of the papers' numbers for `dataset` (empty off CIFAR),
    limited to the sweep's blocks and depths when given (a 1202 star would stretch a 20..110 axis)."""
    rows = [
        {"block": b, "depth": d, "test_error": e, "params": p, "source": s}
        for (ds, b, d), (e, p, s) in ANCHORS.items()
        if ds == dataset and (blocks is None or b in blocks) and (depths is None or d in depths)
    ]
    return pd.DataFrame(rows, columns=["block", "depth", "test_error", "params", "source"])
