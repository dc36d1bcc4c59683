"""reslab: a depth-scaling benchmark suite for residual networks (He et al. 2015, 2016)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reslab.report.collect import SweepData

__version__ = "0.1.0"


def load_sweep(name: str, tracking_uri: str | None = None) -> SweepData:
    """The tables the report is drawn from, for a notebook: `.cells` (one row per grid cell, its final errors and
    status), `.epochs` (one row per cell and epoch), `.telemetry` (gradient norms per cell, step and block) and
    `.runs` (every attempt), as pandas DataFrames, read from the tracking store (`tracking_uri`, else
    $MLFLOW_TRACKING_URI, else ./mlflow.db). Works on partial sweeps; raises `ReportError` for an unknown name."""
    from reslab.report.collect import collect
    from reslab.tracking import resolve_uri

    return collect(resolve_uri(tracking_uri), name)
