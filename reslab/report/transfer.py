"""Does a tuned learning rate survive depth? The learning-rate transfer of a sweep with an lr axis and several depths.

Depth-muP (Yang et al. 2023, "Tensor Programs VI"; Bordelon et al. 2023) and CompleteP (Dey et al. 2025) claim
that with their branch multiplier and per-group learning rates the best learning rate stops moving with depth;
under the standard parametrization it moves. What a reader needs to judge that, per parametrization (and per
number of layers in a branch, where the theory's one-layer case differs from two):

- the final training loss against log2(lr), one curve per depth (mean over seeds); a diverged cell is drawn at the
  top of its panel, not left out;
- each depth's best lr: the vertex of a quadratic in log2(lr) through the grid's minimum and its two neighbours
  (the three lowest points at an edge), kept inside the grid's range; a depth where every lr diverged is named;
- the slope of log2(best lr) against log2(depth) over the depths that trained, with a 95 % interval from a
  bootstrap over seeds (at least 3 seeds) or, with fewer, from the least-squares fit's standard error;
- the penalty of reusing the shallowest depth's best lr at the deepest depth, in the loss's units: the deepest
  depth's loss at the grid lr nearest that rate, minus its loss at its own best grid lr.

Pure functions of the report's cells frame (`reslab.report.collect`), no MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reslab.models.catalog import PARAMETRIZATIONS
from reslab.report.figures import _depth_palette

#: What the transfer is judged by: the final training loss (nats; bits per character for a language model are the
#: same ranking), as the depth-muP papers plot it.
METRIC = "train_loss"
#: Bootstrap resamples of the seeds for the slope's interval.
BOOTSTRAP = 1000


@dataclass(frozen=True)
class Transfer:
    """One panel's answer: `best` maps each depth that trained to its best lr; `diverged` names depths where every
    lr diverged; `slope` is d log2(best lr) / d log2(depth) with its 95 % interval `ci`; `penalty` the deepest
    depth's loss at the shallowest depth's best lr minus its best loss."""

    panel: str
    best: dict[int, float]
    diverged: tuple[int, ...]
    slope: float | None
    ci: tuple[float, float] | None
    penalty: float | None
    grid_steps: float | None  # how far the best lr moved over the depths swept, in steps of the lr grid
    at_edge: tuple[int, ...] = ()  # depths whose best lr is the grid's lowest or highest: the optimum may lie beyond


def has_transfer(cells: pd.DataFrame) -> bool:
    """Whether the sweep asks the question: several learning rates and several depths among its finished cells."""
    done = cells[cells["status"] == "FINISHED"]
    return not done.empty and done["lr"].nunique() > 1 and done["depth"].nunique() > 1


def panel_of(row: pd.Series, by_layers: bool) -> str:
    """A panel per parametrization, and per layers in a branch where the sweep has several."""
    name = str(row.get("parametrization", "sp"))
    return f"{name}, {int(row['branch_layers'])}-layer branches" if by_layers else name


def points(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per finished cell: its run, panel, depth, lr, seed and the final training loss (NaN where it
    diverged)."""
    done = cells[cells["status"] == "FINISHED"].copy()
    loss = pd.to_numeric(done[METRIC], errors="coerce")
    diverged = done.get("diverged", pd.Series("", index=done.index)).fillna("") != ""
    layers = done.get("branch_layers", pd.Series("none", index=done.index))
    by_layers = layers.nunique() > 1
    out = pd.DataFrame({
        "run_id": done.get("run_id", pd.Series("", index=done.index)),
        "panel": done.apply(panel_of, axis=1, by_layers=by_layers), "depth": done["depth"].astype(int),
        "lr": done["lr"].astype(float),
        "seed": done["seed"], "loss": loss.where(~diverged & np.isfinite(loss)),
    })  # fmt: skip
    return out.reset_index(drop=True)


def best_log2_lr(log2_lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """The vertex of a quadratic in log2(lr) through the lowest loss and its neighbours, inside the grid's range;
    the grid's minimum itself where the three points make no minimum. None where every loss is NaN."""
    ok = np.isfinite(losses)
    if not ok.any():
        return None
    x, y = np.asarray(log2_lrs, float)[ok], np.asarray(losses, float)[ok]
    order = np.argsort(x)
    x, y = x[order], y[order]
    i = int(np.argmin(y))
    if len(x) < 3:
        return float(x[i])
    lo = min(max(i - 1, 0), len(x) - 3)
    a, b, _ = np.polyfit(x[lo : lo + 3], y[lo : lo + 3], 2)
    if a <= 0:
        return float(x[i])
    return float(np.clip(-b / (2 * a), x[0], x[-1]))


def _best_per_depth(df: pd.DataFrame) -> dict[int, float]:
    """log2 of each depth's best lr from the seed-mean losses (depths where every lr diverged left out)."""
    best = {}
    for depth, group in df.groupby("depth"):
        mean = group.groupby("lr")["loss"].mean()  # NaN if any seed diverged at that lr: that lr is not the best
        found = best_log2_lr(np.log2(mean.index.to_numpy()), mean.to_numpy())
        if found is not None:
            best[int(depth)] = found
    return best


def _slope(best: dict[int, float]) -> float | None:
    if len(best) < 2:
        return None
    depths = np.log2(np.array(sorted(best), float))
    return float(np.polyfit(depths, np.array([best[d] for d in sorted(best)]), 1)[0])


def _fit_ci(best: dict[int, float]) -> tuple[float, float] | None:
    """The slope's 95 % interval from the least-squares fit's standard error (t with n - 2 degrees of freedom); a
    fit without residuals (every depth's best rate the same) has an interval of width 0."""
    if len(best) < 3:
        return None
    from scipy import stats

    x = np.log2(np.array(sorted(best), float))
    y = np.array([best[d] for d in sorted(best)])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    stderr = math.sqrt(float(residual @ residual) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
    half = float(stats.t.ppf(0.975, len(x) - 2)) * stderr
    return float(slope - half), float(slope + half)


def _bootstrap_ci(df: pd.DataFrame, seed: int = 0) -> tuple[float, float] | None:
    """The slope's 95 % interval from resampling seeds with replacement (the same draw at every depth and lr, so a
    seed's runs stay paired, as they were trained)."""
    cube = df.pivot_table(index="seed", columns=["depth", "lr"], values="loss", aggfunc="mean", dropna=False)
    depths = sorted(df["depth"].unique())
    lrs = np.array(sorted(df["lr"].unique()), float)
    values = cube.reindex(columns=pd.MultiIndex.from_product([depths, lrs])).to_numpy()
    values = values.reshape(len(cube.index), len(depths), len(lrs))
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(BOOTSTRAP):
        mean = values[rng.integers(0, len(values), len(values))].mean(axis=0)  # NaN where a drawn seed diverged
        best = {int(d): b for d, row in zip(depths, mean, strict=True)
                if (b := best_log2_lr(np.log2(lrs), row)) is not None}  # fmt: skip
        slope = _slope(best)
        if slope is not None:
            slopes.append(slope)
    if len(slopes) < BOOTSTRAP // 2:
        return None
    return float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5))


def analyse(cells: pd.DataFrame) -> list[Transfer]:
    """Each panel's transfer (see the module docstring)."""
    pts = points(cells)
    out = []
    for panel in sorted(pts["panel"].unique(), key=_panel_order):
        df = pts[pts["panel"] == panel]
        best = _best_per_depth(df)
        diverged = tuple(int(d) for d in sorted(df["depth"].unique()) if int(d) not in best)
        slope = _slope(best)
        ci = (_bootstrap_ci(df) if df["seed"].nunique() >= 3 else _fit_ci(best)) if slope is not None else None
        grid = np.log2(np.sort(df["lr"].unique()))
        step = float(np.median(np.diff(grid))) if len(grid) > 1 else None
        moved = (max(best.values()) - min(best.values())) / step if best and step else None
        edge = tuple(d for d, v in sorted(best.items()) if np.isclose(v, grid[0]) or np.isclose(v, grid[-1]))
        out.append(Transfer(str(panel), {d: 2.0**v for d, v in sorted(best.items())}, diverged, slope, ci,
                            _penalty(df, best), moved, edge))  # fmt: skip
    return out


def _panel_order(panel: str) -> tuple[str, int]:
    """Panels by layers per branch, then in the parametrizations' own order (sp, depth-muP, CompleteP)."""
    name, _, layers = panel.partition(", ")
    return layers, PARAMETRIZATIONS.index(name) if name in PARAMETRIZATIONS else len(PARAMETRIZATIONS)


def _penalty(df: pd.DataFrame, best: dict[int, float]) -> float | None:
    if len(best) < 2:
        return None
    shallow, deep = min(best), max(best)
    mean = df[df["depth"] == deep].groupby("lr")["loss"].mean().dropna()
    if mean.empty:
        return None
    nearest = min(mean.index, key=lambda lr: abs(math.log2(lr) - best[shallow]))
    return float(mean[nearest] - mean.min())


def panel_grid(n: int) -> tuple[Figure, np.ndarray]:
    """A figure of `n` panels sharing y, one column per parametrization (rows per layers in a branch); the grid's
    unused cells hidden."""
    cols = min(n, len(PARAMETRIZATIONS))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax in grid.flat[n:]:
        ax.set_visible(False)
    return fig, grid


def transfer_figure(cells: pd.DataFrame, results: list[Transfer]) -> Figure:
    """Final training loss vs log2(lr), one curve per depth (mean over seeds), one panel per parametrization; a
    diverged point (every seed of it, or any) at the top of its panel as an x; each depth's best lr a dotted line."""
    pts = points(cells)
    fig, grid = panel_grid(len(results))
    axes = list(grid.flat[: len(results)])
    colours = _depth_palette(list(pts["depth"].unique()))
    finite = pts["loss"].dropna()
    top = float(finite.max()) * 1.08 if not finite.empty else 1.0
    for ax, result in zip(axes, results, strict=True):
        df = pts[pts["panel"] == result.panel]
        for depth, group in df.groupby("depth"):
            mean = group.groupby("lr")["loss"].mean()
            x = np.log2(mean.index.to_numpy())
            ax.plot(x, mean.to_numpy(), marker="o", ms=3, color=colours[depth], label=f"depth {depth}")
            gone = mean.isna().to_numpy()
            if gone.any():
                ax.scatter(x[gone], np.full(gone.sum(), top), marker="x", color=colours[depth])
            if int(depth) in result.best:
                ax.axvline(math.log2(result.best[int(depth)]), color=colours[depth], ls=":", lw=1)
        slope = "" if result.slope is None else f"\nslope {result.slope:+.2f}"
        if result.ci is not None:
            slope += f" [{result.ci[0]:+.2f}, {result.ci[1]:+.2f}]"
        ax.set_title(result.panel + slope, fontsize=9)
        ax.set_xlabel("log2(learning rate)")
        ax.set_ylim(0, top * 1.02)
    for row in grid:
        row[0].set_ylabel("final training loss")
    axes[-1].legend(fontsize=7)
    return fig


def transfer_sentence(results: list[Transfer]) -> str:
    """The plain-language answer: per panel, whether the best lr held within one grid step over the depths swept,
    the slope with its interval and the penalty of reusing the shallowest depth's rate."""
    parts = []
    for r in results:
        if r.slope is None:
            parts.append(f"{r.panel}: fewer than two depths trained, no slope")
            continue
        held = r.grid_steps is not None and r.grid_steps <= 1.0
        ci = f" (95 % CI {r.ci[0]:+.2f} to {r.ci[1]:+.2f})" if r.ci else ""
        moved = f"{r.grid_steps:.1f} grid steps" if r.grid_steps is not None else "?"
        text = (f"{r.panel}: the best learning rate {'held' if held else 'moved'} ({moved} over depths "
                f"{min(r.best)}-{max(r.best)}), slope of log2(best lr) vs log2(depth) {r.slope:+.2f}{ci}")  # fmt: skip
        if r.penalty is not None:
            text += f"; reusing depth {min(r.best)}'s rate at depth {max(r.best)} costs {r.penalty:.3f} in loss"
        if r.diverged:
            text += f"; every learning rate diverged at depth {', '.join(map(str, r.diverged))}"
        if r.at_edge:
            text += (f"; the best rate is at the edge of the grid at depth {', '.join(map(str, r.at_edge))}, so the "
                     f"optimum may lie beyond it: widen grid.lr")  # fmt: skip
        parts.append(text)
    return ". ".join(parts) + "."
