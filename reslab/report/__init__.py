"""Reports: collect a sweep from MLflow into tidy tables, draw the figures (pure functions), judge the verdict,
render one self-contained HTML page plus Markdown. Never trains; works on partial sweeps."""

from reslab.report.collect import ReportError, SweepData, collect
from reslab.report.verdict import Verdict, verdict

__all__ = ["ReportError", "SweepData", "Verdict", "collect", "verdict"]
