"""The depth coordinate check: the residual stream's size at the last block against depth, at initialisation and
after the first steps of training, per parametrization.

microsoft/mup's coordinate check (Yang et al. 2021, "Tensor Programs V", App. D) plots each layer's activation size
against width for the first few steps: under a parametrization that transfers, the curves are flat. Depth-muP
(Yang et al. 2023, "Tensor Programs VI", Sec. 4 and Fig. 2) asks the same of depth: with the branches multiplied by
(L/L0)^(-1/2), the last block's features are Theta(1) in L both at initialisation and after training steps, while
under the standard parametrization the stream's variance grows with every branch added (linearly at
initialisation in a pre-activation net without normalisation), and a step at a fixed learning rate moves a deeper
net's features further. Reading it next to the learning-rate transfer shows the cause (features that blow up or
stay put with depth) beside the effect (a best learning rate that moves or holds).

The values are the runs' own gradient telemetry (`reslab.train.telemetry`, key `act/bNNN`: the root mean square of
a block's output on the step's training batch), at step 0 (before the first update) and at the first probed step
after it (`train.telemetry_every`). Pure functions of the report's frames, no MLflow.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from reslab.report.transfer import Transfer, panel_grid, points

#: The telemetry kind of a block's output RMS.
KIND = "act"


def coordinate_points(telemetry: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run and step: its panel, depth, lr, seed, the step (0, or k: the first probed step
    after 0) and the RMS of its last block's output there. Empty where the telemetry has no block outputs (runs
    recorded before they were measured) or no probed step after 0."""
    if telemetry.empty or "kind" not in telemetry:
        return pd.DataFrame()
    act = telemetry[telemetry["kind"] == KIND]
    if act.empty:
        return pd.DataFrame()
    act = act[act["index"] == act.groupby("run_id")["index"].transform("max")]
    later = act.loc[act["step"] > 0, "step"]
    if later.empty:
        return pd.DataFrame()
    act = act[act["step"].isin([0, int(later.min())])]
    pts = points(cells)[["run_id", "panel", "depth", "lr", "seed"]]
    out = act[["run_id", "step", "value"]].merge(pts, on="run_id")
    out = out.rename(columns={"value": "rms"})
    out["rms"] = out["rms"].where(np.isfinite(out["rms"]))
    return out.reset_index(drop=True)


def _transferred_lr(df: pd.DataFrame, result: Transfer) -> float:
    """The grid rate nearest the shallowest depth's best rate: what a user tunes on the small net and reuses;
    the grid's middle rate where no depth trained."""
    lrs = sorted(df["lr"].unique())
    if not result.best:
        return float(lrs[len(lrs) // 2])
    target = math.log2(result.best[min(result.best)])
    return float(min(lrs, key=lambda lr: abs(math.log2(lr) - target)))


def _ratios(df: pd.DataFrame, lr: float, shallow: int, deep: int) -> tuple[float | None, float | None]:
    """The last block's RMS at depth `deep` over depth `shallow`, at initialisation (every rate: nothing has been
    updated yet) and after k steps at `lr` (seed means; None where a side has no finite value)."""

    def ratio(part: pd.DataFrame) -> float | None:
        mean = part.groupby("depth")["rms"].mean()
        a, b = mean.get(shallow), mean.get(deep)
        return float(b / a) if a is not None and b is not None and np.isfinite([a, b]).all() and a > 0 else None

    init = ratio(df[df["step"] == 0])
    after = ratio(df[(df["step"] > 0) & np.isclose(df["lr"], lr)])
    return init, after


def coordinate_figure(pts: pd.DataFrame, results: list[Transfer]) -> Figure | None:
    """The last block's RMS against depth (both axes log), one panel per parametrization (as the transfer figure):
    dashed black at initialisation, a line per learning rate after k steps (the transferred rate thick)."""
    if pts.empty or pts["depth"].nunique() < 2:
        return None
    panels = [r for r in results if r.panel in set(pts["panel"])]
    if not panels:
        return None
    fig, grid = panel_grid(len(panels))
    lrs = sorted(pts["lr"].unique())
    colours = dict(zip(lrs, sns.color_palette("flare", n_colors=max(len(lrs), 2)), strict=False))
    step = int(pts.loc[pts["step"] > 0, "step"].min())
    depths = sorted(int(d) for d in pts["depth"].unique())
    for ax, result in zip(grid.flat, panels, strict=False):
        df = pts[pts["panel"] == result.panel]
        chosen = _transferred_lr(df, result)
        for lr in lrs:
            line = df[(df["step"] == step) & (df["lr"] == lr)].groupby("depth")["rms"].mean().dropna()
            if not line.empty:
                thick = bool(np.isclose(lr, chosen))
                ax.plot(line.index, line.to_numpy(), marker="o", ms=3, color=colours[lr], lw=2.4 if thick else 1,
                        label=f"lr {lr:.3g}" + (" (tuned at the shallowest)" if thick else ""))
        init = df[df["step"] == 0].groupby("depth")["rms"].mean().dropna()
        ax.plot(init.index, init.to_numpy(), color="black", ls="--", marker="s", ms=3, label="initialisation")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_title(result.panel, fontsize=9)
        ax.set_xlabel("depth")
    for row in grid:
        row[0].set_ylabel(f"RMS at the last block (step 0, {step})")
    grid.flat[len(panels) - 1].legend(fontsize=6)
    return fig


def coordinate_sentence(pts: pd.DataFrame, results: list[Transfer]) -> str:
    """Per panel, how much bigger the residual stream at the last block is at the deepest depth than at the
    shallowest: at initialisation and after k steps at the transferred rate."""
    if pts.empty or pts["depth"].nunique() < 2:
        return ""
    step = int(pts.loc[pts["step"] > 0, "step"].min())
    shallow, deep = int(pts["depth"].min()), int(pts["depth"].max())
    parts = []
    for result in results:
        df = pts[pts["panel"] == result.panel]
        if df.empty:
            continue
        lr = _transferred_lr(df, result)
        init, after = _ratios(df, lr, shallow, deep)
        shown = [f"x{v:.2f}" if v is not None else "not finite" for v in (init, after)]
        parts.append(f"{result.panel} {shown[0]} at initialisation, {shown[1]} after {step} steps at lr {lr:.3g}")
    if not parts:
        return ""
    return (f"Coordinate check (the residual stream's RMS at the last block, depth {deep} over depth {shallow}): "
            + "; ".join(parts) + ".")
