"""What a report judges nets by: final training error for classifiers, training loss in bits per character for
character-level language models.

He et al. 2015 judge degradation by training error (§4.2: an optimisation failure, not over-fitting). A language
model's error, the share of next characters mispredicted, moves little while its loss falls, and the papers on deep
Transformers judge by loss (Xiong et al. 2020; Wang et al. 2022), so on text the depth figures, the cell table and
the verdict use the training loss in bits per character where they use training error for images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Measure:
    """One quantity a report plots and judges: its training and held-out columns (a run's final metrics and its
    per-epoch history carry the same names), how it is written, and the verdict's thresholds in its own units."""

    train: str
    held_out: str
    noun: str  # "error" or "loss"
    plural: str  # "errors" or "losses"
    unit: str  # axis label unit
    scale: float  # column value -> plotted value (fractions -> percent)
    gap: float  # how much worse the deepest plain net must end for degradation, in column units
    tolerance: float  # how much worse a deep residual net may end and still not degrade
    difference: str  # how a gap is written: "points" or "bits"

    def format(self, value: float, short: bool = False) -> str:
        """A value as the report writes it: `66.4 %` (`0.25 %` below 1 %, unless `short`) or `3.18 bits`."""
        if not math.isfinite(value):
            return str(value)
        if self.scale == 100:
            return f"{100 * value:.2f} %" if abs(value) < 0.01 and not short else f"{100 * value:.1f} %"
        return f"{value:.2f} bits"

    def format_gap(self, value: float) -> str:
        """A difference of two values: `+1.2 points` or `+0.35 bits`."""
        digits = 1 if self.scale == 100 else 2
        return f"{self.scale * value:+.{digits}f} {self.difference}"

    @property
    def axis(self) -> str:
        return f"{self.noun} ({self.unit})"


#: Final training error of a classifier, as He et al. 2015 judge degradation: 2 points worse counts, 1 point is noise.
ERROR = Measure("train_error", "test_error", "error", "errors", "%", 100.0, 0.02, 0.01, "points")
#: Training loss of a character-level language model in bits per character. 0.1 bits is about 3 % of a loss near 3
#: bits and above the spread of two seeds in the transformer sweep; 0.05 bits is what a deeper net may lose.
BITS = Measure("train_bpc", "test_bpc", "loss", "losses", "bits per character", 1.0, 0.1, 0.05, "bits")


def measure_of(cells: pd.DataFrame) -> Measure:
    """Bits per character where the runs logged them (a sweep on the `text` dataset), else error."""
    if BITS.train in cells and cells[BITS.train].notna().any():
        return BITS
    return ERROR
