"""Benchmark results (pytest-benchmark's JSON, written by `nox -s bench`) as tables and figures."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from reslab.report import figures as F

THROUGHPUT_KEYS = ("family", "block", "depth", "phase", "variant", "images_per_s", "tflops", "fraction_of_peak",
                   "device", "dtype", "peak_memory_mb", "kind", "cells")  # fmt: skip


def is_gpu_name(device: str) -> bool:
    """Whether a benchmark's `device` (reslab.perf.device_name) names a GPU rather than the CPU."""
    return not device.startswith("CPU ")


def load_benchmark(path: str | Path) -> pd.DataFrame:
    """One row per throughput benchmark: family, block, depth, phase, variant, images/s, TFLOP/s, memory, device."""
    data = json.loads(Path(path).read_text())
    rows = [
        {k: b["extra_info"].get(k) for k in THROUGHPUT_KEYS}
        for b in data.get("benchmarks", [])
        if "images_per_s" in b.get("extra_info", {}) and "depth" in b["extra_info"]
    ]
    return pd.DataFrame(rows, columns=list(THROUGHPUT_KEYS))


def load_ratios(path: str | Path) -> pd.DataFrame:
    """One row per benchmark that compares two ways of doing the same work (`ratio` in its extra_info, with its
    target: at most `target_ratio`, or at least `target_ratio_min`): reslab's step against a plain loop or a
    hand-written net, the fast step against the eager one. These are the numbers a change must keep."""
    data = json.loads(Path(path).read_text())
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "ratio" in info:
            at_least = info.get("target_ratio_min") is not None
            rows.append({"benchmark": b["name"], "ratio": info["ratio"], "what": info.get("what", ""),
                         "target": info.get("target_ratio_min") if at_least else info.get("target_ratio"),
                         "at_least": at_least})  # fmt: skip
    return pd.DataFrame(rows, columns=["benchmark", "ratio", "target", "at_least", "what"])


def throughput_for_figure(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the throughput-vs-depth figure draws: He's ResNets in fp32 (other families and the bf16/compile
    variants have their own depths and would zig-zag the lines), or everything when the run has no such rows."""
    resnet = df[(df["family"] == "resnet") & (df["variant"] == "fp32")]
    return resnet if not resnet.empty else df


def load_depth_scaling(path: str | Path) -> dict | None:
    """The depth-scaling benchmark's points and fits, or None if the JSON has none."""
    for b in json.loads(Path(path).read_text()).get("benchmarks", []):
        info = b.get("extra_info", {})
        if "depth_scaling" in info:
            return info
    return None


def latest_benchmark(directory: str | Path = "reports/bench") -> Path | None:
    found = sorted(Path(directory).glob("*.json"))
    return found[-1] if found else None


def render_benchmark(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write `<stem>-throughput` and `<stem>-depth-scaling` figures (PNG and SVG) beside the JSON (or in out_dir)."""
    path = Path(path)
    out = Path(out_dir) if out_dir else path.parent
    out.mkdir(parents=True, exist_ok=True)
    written = []
    throughput = load_benchmark(path)
    figures = []
    if not throughput.empty:
        figures.append(("throughput", F.benchmark_figure(throughput_for_figure(throughput))))
    scaling = load_depth_scaling(path)
    if scaling is not None:
        points = pd.DataFrame(scaling["depth_scaling"])
        figures.append(("depth-scaling", F.depth_scaling_figure(points, scaling["time_fit"], scaling["memory_fit"],
                                                               scaling.get("memory_kind", "memory"))))  # fmt: skip
    for name, fig in figures:
        for ext in ("png", "svg"):
            target = out / f"{path.stem}-{name}.{ext}"
            fig.savefig(target, dpi=100, bbox_inches="tight")
            written.append(target)
        plt.close(fig)
    return written


def summary(path: str | Path) -> pd.DataFrame:
    """images/s by (family, block, depth) x (phase, variant): the table `reslab bench-report` prints."""
    df = load_benchmark(path)
    df = df[df["kind"].isna() | (df["kind"] == "single")]  # shared-device rates are the projection's to show
    if df.empty:
        return df
    table = df.pivot_table(index=["family", "block", "depth"], columns=["phase", "variant"], values="images_per_s")
    return table.round(0)
