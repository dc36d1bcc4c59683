"""A sweep's wall time projected from the training-step benchmarks (group `train_step`, `nox -s bench`).

A sweep is its cells, each `steps` training steps of its net plus an evaluation per epoch, run a few at a time: the
wall time is the critical path of that schedule, not the sum of the cells. Step times come from the benchmark run
on the machine the projection is for: the step time of each measured depth, and a straight line through them for
the depths in between (a 6n+2 net's step is n identical blocks: its time grows linearly with depth, as the
depth-scaling benchmark shows). Each way of sharing the device that was measured (one cell at a time, N cells at
once, a pack of K seeds) is projected; the fastest is the answer. Cells are scheduled longest first (LPT), which is
within 4/3 of the best schedule (Graham 1969).

Pure functions of the benchmark rows and the config: no torch, no device.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reslab.sweep.config import SweepConfig
from reslab.sweep.grid import Cell

#: A forward pass costs about a third of a training step (the backward computes two products per forward one).
EVAL_COST = 1 / 3
STEP_KEYS = ("family", "block", "depth", "width", "batch", "variant", "kind", "cells", "images_per_s", "step_s",
             "compile_s", "precision", "compile", "device", "dtype", "tflops", "peak_tflops")  # fmt: skip


class ProjectionError(ValueError):
    """The benchmark JSON cannot project this config (no train_step rows for its family or precision): the
    message says which rows exist and what to run."""


def load_train_steps(path: str | Path) -> pd.DataFrame:
    """One row per `train_step` benchmark: how fast reslab's real step ran, alone or shared."""
    data = json.loads(Path(path).read_text())
    rows = [{k: b["extra_info"].get(k) for k in STEP_KEYS} for b in data.get("benchmarks", [])
            if b.get("group") == "train_step" and "step_s" in b.get("extra_info", {})]  # fmt: skip
    return pd.DataFrame(rows, columns=list(STEP_KEYS))


@dataclass(frozen=True)
class CellWork:
    """One cell's work: its training steps, its evaluation examples, and its FLOPs."""

    cell: Cell
    steps: int
    eval_examples: int
    flops: float


@dataclass(frozen=True)
class Option:
    """One way of running the sweep on the device, projected."""

    label: str
    kind: str
    cells: int  # cells at once (concurrent) or per pack
    wall_s: float
    critical: str  # the cells on the slot that finishes last
    compile_s: float
    variant: str = ""

    @property
    def hours(self) -> str:
        return format_duration(self.wall_s)


@dataclass(frozen=True)
class Projection:
    config: str
    cells: int
    steps: int
    batch: int
    device: str
    flops: float
    options: list[Option] = field(default_factory=list)
    peak_tflops: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Option:
        return min(self.options, key=lambda o: o.wall_s)

    @property
    def tflops(self) -> float:
        """The sustained TFLOP/s the best option implies: the sweep's FLOPs over its wall time."""
        return self.flops / self.best.wall_s / 1e12

    def describe(self) -> str:
        lines = [f"projected wall time of {self.config}: {self.cells} cells x {self.steps:,} steps of batch "
                 f"{self.batch}, {self.flops / 1e15:.1f} PFLOP, on {self.device}"]  # fmt: skip
        width = max(len(o.label) for o in self.options)
        for o in sorted(self.options, key=lambda o: o.wall_s):
            lines.append(f"  {o.label:<{width}}  {o.hours:>10}   critical path: {o.critical}")
        best = self.best
        peak = f" ({100 * self.tflops / self.peak_tflops:.2f} % of the {self.peak_tflops:g} TFLOP/s peak)" if (
            self.peak_tflops) else ""  # fmt: skip
        lines.append(f"best: {best.label}, {best.hours}: {self.tflops:.2f} TFLOP/s sustained{peak}; compilation "
                     f"and warm-up {format_duration(best.compile_s)} per cell included")  # fmt: skip
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.1f} min"
    return f"{int(minutes // 60)} h {minutes % 60:02.0f} min"


def cell_work(config: SweepConfig) -> list[CellWork]:
    """Every cell of the config (all seeds) with its steps, evaluation examples and FLOPs."""
    from reslab.data.catalog import DATASET_INFO
    from reslab.limits import net_estimate

    info = DATASET_INFO[config.dataset.name]
    _, n_val, n_test = info.sizes(config.dataset.options)
    out = []
    for cell in config.cells():
        train = cell.recipe(config.train)  # an arm may change the epochs or the batch
        per_epoch = info.train_steps(config.dataset.options, train.batch_size, train.drop_last)
        steps = train.total_steps(per_epoch)
        eval_examples = train.num_epochs(per_epoch) * (n_val + n_test)
        macs = net_estimate(cell.spec(), config.dataset).macs
        flops = 2.0 * macs * (3.0 * steps * train.batch_size + eval_examples)
        out.append(CellWork(cell, steps, eval_examples, flops))
    return out


def _step_time(rows: pd.DataFrame, depth: int) -> float:
    """Seconds per step at `depth`: the measured value, linear interpolation between measured depths, and the line
    through the two nearest measured depths beyond them (one measured depth scales in proportion)."""
    import numpy as np

    by_depth = rows.groupby("depth")["step_s"].min().sort_index()
    xs, ys = by_depth.index.to_numpy(float), by_depth.to_numpy(float)
    if len(xs) == 1:
        return float(ys[0] * depth / xs[0])
    if xs[0] <= depth <= xs[-1]:
        return float(np.interp(depth, xs, ys))
    (x0, y0), (x1, y1) = ((xs[0], ys[0]), (xs[1], ys[1])) if depth < xs[0] else ((xs[-2], ys[-2]), (xs[-1], ys[-1]))
    extrapolated = y1 + (y1 - y0) / (x1 - x0) * (depth - x1)
    nearest = (xs[0], ys[0]) if depth < xs[0] else (xs[-1], ys[-1])
    return float(extrapolated if extrapolated > 0 else nearest[1] * depth / nearest[0])


def _lpt(durations: Sequence[tuple[float, str]], slots: int) -> tuple[float, str]:
    """Longest-processing-time-first schedule of (duration, name) jobs on `slots`: the makespan and the names on
    the slot that ends last."""
    heap = [(0.0, i, []) for i in range(slots)]
    for duration, name in sorted(durations, reverse=True):
        end, i, names = heapq.heappop(heap)
        heapq.heappush(heap, (end + duration, i, [*names, name]))
    end, _, names = max(heap)
    shown = " -> ".join(names[:3]) + (f" -> ... ({len(names) - 3} more)" if len(names) > 3 else "")
    return end, shown


def _matching_rows(rows: pd.DataFrame, config: SweepConfig) -> tuple[pd.DataFrame, list[str]]:
    """The rows measured with the config's family, width and precision (else, with a note, the precision whose
    steps were fastest) and the notes; each way of sharing the device then takes its variant in `_option_rows`."""
    if rows.empty:
        raise ProjectionError("the benchmark JSON has no train_step results: run `nox -s bench` (benchmarks/"
                              "test_train_step.py) on the machine to project for")  # fmt: skip
    train = config.train
    device = str(rows["device"].iloc[0])
    widths = sorted(set(config.grid.widths))
    net = rows[(rows["family"] == config.grid.family) & rows["width"].isin(widths)]
    if net.empty:
        have = sorted({f"{r.family} w{r.width}" for r in rows.itertuples()})
        raise ProjectionError(f"no train_step result for {config.grid.family} width {widths} on {device}; measured: "
                              f"{'; '.join(have)}")  # fmt: skip
    same = net[net["precision"] == train.precision]
    notes = []
    if same.empty:
        fastest = str(net.groupby("precision")["step_s"].mean().idxmin())
        same = net[net["precision"] == fastest]
        notes.append(f"the config trains with precision {train.precision}, not measured on {device}: projected with "
                     f"the {fastest} steps")  # fmt: skip
    return same, notes


def _option_rows(group: pd.DataFrame, compile_setting: str) -> pd.DataFrame:
    """One variant's rows of a way of sharing the device: the one compiled as the config asks, else the fastest
    (a pack runs uncompiled)."""
    matching = group[group["compile"] == compile_setting]
    if not matching.empty:
        return matching
    fastest = group.groupby("variant")["step_s"].mean().idxmin()
    return group[group["variant"] == fastest]


def project(config: SweepConfig, rows: pd.DataFrame, name: str | None = None) -> Projection:
    """The sweep's wall time under each measured way of sharing the device, from `load_train_steps` rows."""
    from reslab.devices import compile_mode
    from reslab.report.bench import is_gpu_name

    rows, notes = _matching_rows(rows, config)
    work = cell_work(config)
    device = str(rows["device"].iloc[0])
    compile_setting = compile_mode(config.train.compile, "cuda" if is_gpu_name(device) else "cpu") or "off"
    measured = {(str(kind), int(cells)): _option_rows(group, compile_setting)
                for (kind, cells), group in rows.groupby(["kind", "cells"])}  # fmt: skip
    pack_sizes = sorted(cells for kind, cells in measured if kind == "pack")

    def rows_for(group: pd.DataFrame, cell: Cell) -> pd.DataFrame:
        same_block = group[group["block"] == cell.block]
        return same_block if not same_block.empty else group

    def member_rows(m: int, k: int) -> pd.DataFrame:
        """The rows that time a pack of m members: a single cell's for one, else the smallest measured pack that
        holds them (a pack is as slow as its size, whatever members it has)."""
        if m == 1 and ("single", 1) in measured:
            return measured[("single", 1)]
        return measured[("pack", min((c for c in pack_sizes if c >= m), default=k))]

    options = []
    largest_pack = 1
    for (kind, cells), group in measured.items():
        variant = str(group["variant"].iloc[0])
        compile_s = float(group["compile_s"].max())
        if kind == "pack":
            packs: dict[tuple, list[CellWork]] = {}
            for w in work:
                packs.setdefault((w.cell.spec(), w.cell.lr), []).append(w)
            jobs = []
            for members in packs.values():
                for start in range(0, len(members), cells):
                    chunk = members[start : start + cells]
                    largest_pack = max(largest_pack, len(chunk))
                    timing = member_rows(len(chunk), cells)
                    seconds, _ = _duration(chunk[0], rows_for(timing, chunk[0].cell), float(timing["compile_s"].max()))
                    jobs.append((seconds, f"{chunk[0].cell.name.rsplit('-s', 1)[0]} x{len(chunk)}"))
            wall, critical = _lpt(jobs, 1)
            label = f"packs of {cells} seeds, {variant}"
        else:
            jobs = [_duration(w, rows_for(group, w.cell), compile_s) for w in work]
            wall, critical = _lpt(jobs, cells)
            label = ("1 cell at a time" if cells == 1 else f"{cells} cells at once") + f", {variant}"
        options.append(Option(label, kind, cells, wall, critical, compile_s, variant))
    if pack_sizes and largest_pack == 1:
        notes.append("no two cells differ in the seed alone: packs have one member each, timed as single cells")
    notes.append("a block without its own measurement in an option is timed as that option's measured block (plain "
                 "and residual steps differ by one add per block)")  # fmt: skip
    depths = sorted(set(rows["depth"]))
    if any(w.cell.depth not in depths for w in work):
        notes.append(f"depths other than {depths} from a straight line through the measured step times")
    notes.append(f"evaluation timed as {EVAL_COST:.2f} of a training step per example; data loading is on the device")
    peak = rows["peak_tflops"].dropna()
    return Projection(
        config=name or config.name, cells=len(work), steps=work[0].steps if work else 0,
        batch=config.train.batch_size, device=device,
        flops=sum(w.flops for w in work), options=options, peak_tflops=float(peak.iloc[0]) if len(peak) else None,
        notes=notes,
    )  # fmt: skip


def _duration(w: CellWork, rows: pd.DataFrame, compile_s: float) -> tuple[float, str]:
    """(seconds, name) of one cell, or of one pack whose rows time all its members' steps at once: its steps at the
    measured step time, its evaluation, its compilation."""
    step = _step_time(rows, w.cell.depth)
    evaluation = w.eval_examples * step / float(rows["batch"].iloc[0]) * EVAL_COST  # per member, members together
    return w.steps * step + evaluation + compile_s, w.cell.name


def projection_hint(config: SweepConfig, source: str, bench_dir: str | Path = "reports/bench") -> str | None:
    """The line `reslab sweep --dry-run` prints under its table: the sweep's projected wall time from the newest
    benchmark JSON that has training-step results for its nets, or None when there is none."""
    for path in sorted(Path(bench_dir).glob("*.json"), reverse=True):
        try:
            rows = load_train_steps(path)
            if rows.empty:
                continue
            result = project(config, rows)
        except (ProjectionError, ValueError, KeyError):
            continue
        best = result.best
        return (f"projected wall time on {result.device} ({path}): {best.hours} with {best.label}; "
                f"`reslab bench-report {path} --project {source}` shows every option")  # fmt: skip
    return None
