"""Figures as pure functions, `figure(df) -> matplotlib Figure`: no I/O, no MLflow, so each is
tested on a small hand-built DataFrame and rendering is a separate step.

- `curves_figure`: training (solid) and test (dashed) error vs epoch, a line per depth, a panel per block —
  He et al. 2015 Fig. 1 / Fig. 6;
- `depth_figure`: final training and test error vs depth, hue = block, mean with 95 % CI over seeds, the
  papers' numbers overlaid when given — the depth-scaling curve;
- `gradient_flow_figure`: gradient norm at one block's input through the branch and through the shortcut over
  training — the gradient-norm experiment of the "Residual connection" explainer;
- `gradient_heatmap_figure`: gradient norm at each block's output by block index x step, a panel per block kind,
  one colour scale — vanishing gradients made visible;
- `weight_gradient_figure`: per-layer weight-gradient norm vs layer index early, midway and late in training;
- `gate_figure`: the rezero gates a over training;
- `throughput_figure`: training images/s vs depth as measured by the sweep;
- `benchmark_figure`: images/s and TFLOP/s vs depth from a pytest-benchmark JSON (hue = block, style = phase).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from reslab.report.measure import ERROR, Measure

BLOCK_ORDER = ["plain", "residual", "preact", "rezero"]
SPLIT_DASHES = {"training": "", "test": (4, 2)}
sns.set_theme(context="notebook", style="whitegrid")


#: What a sweep's figures group nets by: the block, or the remedy, with the norm where the sweep varies it
#: (`reslab.models.remedies.variant`), so nets that share a block but not a remedy or a norm never mix.
GROUP = "variant"


def _with_group(df: pd.DataFrame) -> pd.DataFrame:
    """Frames from older sweeps (or built by hand) have no variant: their block is the variant."""
    if GROUP in df and df[GROUP].notna().all():
        return df
    return df.assign(**{GROUP: df["block"]})


def _blocks(df: pd.DataFrame, column: str = GROUP) -> list[str]:
    present = list(dict.fromkeys(df[column]))
    return [b for b in BLOCK_ORDER if b in present] + [b for b in present if b not in BLOCK_ORDER]


#: Panels per row: a remedies sweep has nine kinds of net, which in one row would make figures too wide to read.
MAX_COLUMNS = 4


def _panels(n: int, width: float, height: float, **kwargs) -> tuple[Figure, list]:
    """A figure of `n` panels, at most `MAX_COLUMNS` to a row, each `width` x `height` inches."""
    cols = min(n, MAX_COLUMNS)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kwargs)
    axes = list(grid.flat)
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _ylabel(axes: list, label: str) -> None:
    """The y label on the first panel of every row."""
    for ax in axes[::MAX_COLUMNS]:
        ax.set_ylabel(label)


def _long(df: pd.DataFrame, measure: Measure, id_vars: list[str]) -> pd.DataFrame:
    """Long format: one row per id x split (training, test), the measure as plotted (error in percent) in `value`."""
    columns = {measure.train: "training", measure.held_out: "test"}
    present = {k: v for k, v in columns.items() if k in df and df[k].notna().any()}
    long = df.melt(id_vars=id_vars, value_vars=list(present), var_name="split", value_name="value")
    long["split"] = long["split"].map(present)
    long["value"] = measure.scale * long["value"].astype(float)
    return long.dropna(subset=["value"])


def _depth_label(df: pd.DataFrame) -> str:
    """What depth counts: a transformer's blocks (as the papers count them), else weighted layers (He et al. 2015)."""
    blocks = "family" in df and not df.empty and (df["family"] == "transformer").all()
    return "depth (blocks)" if blocks else "depth (weighted layers)"


def _depth_palette(depths: list[int]) -> dict[int, tuple]:
    colors = sns.color_palette("viridis", n_colors=max(len(depths), 2))
    return {d: colors[i] for i, d in enumerate(sorted(depths))}


def curves_figure(epochs: pd.DataFrame, log_scale: bool = False, measure: Measure = ERROR) -> Figure:
    """He et al. Fig. 6: training error (solid) and test error (dashed) vs epoch (or the loss of a language model);
    one line per depth (mean over seeds), one panel per block."""
    df = _long(_with_group(epochs), measure, [GROUP, "depth", "seed", "epoch"])
    blocks = _blocks(df)
    depths = sorted(df["depth"].unique())
    fig, axes = _panels(len(blocks), 4.4, 3.8, sharey=True)
    palette = _depth_palette(depths)
    for ax, block in zip(axes, blocks, strict=True):
        part = df[df[GROUP] == block]
        for depth in depths:
            for split, dashes in SPLIT_DASHES.items():
                line = part[(part["depth"] == depth) & (part["split"] == split)].groupby("epoch")["value"].mean()
                if line.empty:
                    continue
                y = line.clip(lower=1e-2) if log_scale else line
                (handle,) = ax.plot(line.index, y, color=palette[depth], label=f"{block}-{depth} {split}")
                if dashes:
                    handle.set_dashes(dashes)
        ax.set_title(block)
        ax.set_xlabel("epoch")
        if log_scale:
            ax.set_yscale("log")
    _ylabel(axes, measure.axis)
    handles = [plt.Line2D([], [], color=palette[d], label=f"depth {d}") for d in depths]
    handles += [plt.Line2D([], [], color="0.3", dashes=(4, 2) if s == "test" else (None, None), label=s)
                for s in SPLIT_DASHES]  # fmt: skip
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"Training (solid) and test (dashed) {measure.noun} vs epoch, mean over seeds", y=1.02)
    fig.tight_layout()
    return fig


def depth_figure(cells: pd.DataFrame, anchors: pd.DataFrame | None = None, measure: Measure = ERROR) -> Figure:
    """Final training and test error (or a language model's loss) vs depth, hue = block, mean and 95 % CI over
    seeds; a row per width when the sweep has several. `anchors` (block, depth, test_error in %, source) are drawn
    as stars on the test panels."""
    df = _long(_with_group(cells), measure, [GROUP, "depth", "width", "seed"])
    widths = sorted(df["width"].unique())
    blocks = _blocks(df)
    fig, axes = plt.subplots(len(widths), 2, figsize=(10, 3.8 * len(widths)), squeeze=False, sharex=True)
    for row, width in enumerate(widths):
        for col, split in enumerate(("training", "test")):
            ax = axes[row][col]
            part = df[(df["width"] == width) & (df["split"] == split)]
            sns.lineplot(data=part, x="depth", y="value", hue=GROUP, hue_order=blocks, marker="o",
                         errorbar=("ci", 95), err_style="bars", ax=ax, legend=(row == 0 and col == 0))  # fmt: skip
            if anchors is not None and split == "test" and not anchors.empty:
                for source, group in anchors.groupby("source"):
                    ax.scatter(group["depth"], group["test_error"], marker="*", s=90, color="black", zorder=5,
                               label=source)  # fmt: skip
                ax.legend(fontsize="small")
            ax.set_title(f"{split} {measure.noun}" + (f", width {width}" if len(widths) > 1 else ""))
            ax.set_xlabel(_depth_label(cells))
            ax.set_ylabel(f"final {measure.axis}")
            ax.set_xticks(sorted(df["depth"].unique()))
    first = axes[0][0]
    if first.get_legend() is not None:  # beside the panels: nine kinds of net would cover the curves
        handles, labels = first.get_legend_handles_labels()
        first.get_legend().remove()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"Final {measure.noun} vs depth (mean, 95 % CI over seeds)", y=1.02)
    fig.tight_layout()
    return fig


def _deepest(tele: pd.DataFrame) -> pd.DataFrame:
    """Telemetry of the deepest depth that has more than one block kind (else the deepest), lowest seed."""
    tele = _with_group(tele)
    kinds_per_depth = tele.groupby("depth")[GROUP].nunique()
    shared = kinds_per_depth[kinds_per_depth > 1]
    depth = (shared.index if not shared.empty else kinds_per_depth.index).max()
    part = tele[tele["depth"] == depth]
    return part[part["seed"] == part["seed"].min()]


def gradient_flow_figure(telemetry: pd.DataFrame, block_index: int | None = None) -> Figure | None:
    """The "Residual connection" explainer's experiment: the gradient norm reaching one block's input through the
    branch F (solid) and through the shortcut (dashed) over training, a panel per block kind at the deepest depth."""
    tele = telemetry[telemetry["kind"].isin(["grad_branch", "grad_shortcut"])]
    if tele.empty:
        return None
    tele = _deepest(tele)
    if block_index is None:
        block_index = int(tele["index"].max()) // 2
    tele = tele[tele["index"] == block_index]
    blocks = _blocks(tele)
    fig, axes = _panels(len(blocks), 4.4, 3.6, sharey=True)
    for ax, block in zip(axes, blocks, strict=True):
        part = tele[tele[GROUP] == block]
        for kind, style, label in (("grad_branch", "-", "through the branch F"),
                                   ("grad_shortcut", "--", "through the shortcut")):  # fmt: skip
            line = part[part["kind"] == kind].sort_values("step")
            if not line.empty:
                ax.plot(line["step"], line["value"].clip(lower=1e-12), style, label=label)
        ax.set_yscale("log")
        ax.set_title(f"{block}-{int(part['depth'].iloc[0])}, block {block_index}")
        ax.set_xlabel("training step")
        ax.legend(fontsize="small")
    _ylabel(axes, "gradient norm at block input")
    fig.suptitle("Gradient flow through branch vs shortcut", y=1.02)
    fig.tight_layout()
    return fig


def gradient_heatmap_figure(telemetry: pd.DataFrame, kind: str = "grad_out") -> Figure | None:
    """log10 of the gradient norm at each block's output, block index x training step, a panel per block kind
    (plain next to residual) on one colour scale: vanishing gradients show as dark rows near the input."""
    tele = telemetry[telemetry["kind"] == kind]
    if tele.empty:
        return None
    tele = _deepest(tele)
    blocks = _blocks(tele)
    grids = {}
    for block in blocks:
        part = tele[tele[GROUP] == block]
        grids[block] = part.pivot_table(index="index", columns="step", values="value", aggfunc="mean")
    values = np.log10(np.concatenate([g.to_numpy().ravel() for g in grids.values()]).clip(1e-12))
    vmin, vmax = np.nanpercentile(values, 2), np.nanpercentile(values, 98)
    fig, axes = _panels(len(blocks), 4.6, 3.8, sharey=True)
    image = None
    for ax, block in zip(axes, blocks, strict=True):
        grid = grids[block]
        image = ax.imshow(np.log10(grid.to_numpy().clip(1e-12)), aspect="auto", origin="lower", cmap="magma",
                          vmin=vmin, vmax=vmax,
                          extent=(grid.columns.min(), grid.columns.max(), -0.5, len(grid.index) - 0.5))  # fmt: skip
        ax.grid(False)
        ax.set_title(f"{block}-{int(tele['depth'].iloc[0])}")
        ax.set_xlabel("training step")
    _ylabel(axes, "block index (input at the bottom)")
    fig.colorbar(image, ax=axes, label="log10 gradient norm at block output")
    fig.suptitle("Gradient norm by block and training step", y=1.02)
    return fig


def weight_gradient_figure(telemetry: pd.DataFrame) -> Figure | None:
    """Per-layer weight-gradient norm vs layer index at the first, middle and last probed step, a panel per block
    kind at the deepest depth (lowest seed)."""
    tele = telemetry[telemetry["kind"] == "grad_weight"]
    if tele.empty:
        return None
    tele = _deepest(tele)
    blocks = _blocks(tele)
    fig, axes = _panels(len(blocks), 4.4, 3.6, sharey=True)
    for ax, block in zip(axes, blocks, strict=True):
        part = tele[tele[GROUP] == block]
        steps = sorted(part["step"].unique())
        picks = dict.fromkeys([steps[0], steps[len(steps) // 2], steps[-1]])
        for step, color in zip(picks, sns.color_palette("crest", n_colors=len(picks)), strict=True):
            line = part[part["step"] == step].sort_values("index")
            ax.plot(line["index"], line["value"].clip(lower=1e-12), color=color, label=f"step {step}")
        ax.set_yscale("log")
        ax.set_title(f"{block}-{int(part['depth'].iloc[0])}")
        ax.set_xlabel("layer index (input first)")
        ax.legend(fontsize="small")
    _ylabel(axes, "weight-gradient norm")
    fig.suptitle("Per-layer weight-gradient norm early, midway and late in training", y=1.02)
    fig.tight_layout()
    return fig


def gate_figure(telemetry: pd.DataFrame) -> Figure | None:
    """The rezero gates a (y = a·F(x) + x, a = 0 at init) over training, a line per block, a panel per depth."""
    tele = telemetry[telemetry["kind"] == "gate"]
    if tele.empty:
        return None
    tele = tele[tele["seed"] == tele["seed"].min()]
    depths = sorted(tele["depth"].unique())
    fig, axes = plt.subplots(1, len(depths), figsize=(4.4 * len(depths), 3.6), squeeze=False, sharey=True)
    for ax, depth in zip(axes[0], depths, strict=True):
        part = tele[tele["depth"] == depth]
        n = int(part["index"].max()) + 1
        colors = sns.color_palette("flare", n_colors=n)
        for index, line in part.groupby("index"):
            line = line.groupby("step")["value"].mean()
            ax.plot(line.index, line.to_numpy(), color=colors[int(index)], lw=1)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(f"rezero-{depth} ({n} gates; light = input side)")
        ax.set_xlabel("training step")
    axes[0][0].set_ylabel("gate a")
    fig.suptitle("ReZero gates over training", y=1.02)
    fig.tight_layout()
    return fig


def throughput_figure(cells: pd.DataFrame) -> Figure:
    """Training images/s vs depth as the sweep measured them (mean over seeds), hue = block."""
    df = _with_group(cells).dropna(subset=["train_images_per_s"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    sns.lineplot(data=df, x="depth", y="train_images_per_s", hue=GROUP, hue_order=_blocks(df), marker="o",
                 errorbar=None, ax=ax)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel("training images/s (last epoch)")
    ax.set_title("Training throughput vs depth in this sweep")
    fig.tight_layout()
    return fig


def benchmark_figure(bench: pd.DataFrame) -> Figure:
    """pytest-benchmark results: images/s and achieved TFLOP/s vs depth, hue = block, style = phase."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, column, label in ((axes[0], "images_per_s", "images/s"), (axes[1], "tflops", "achieved TFLOP/s")):
        sns.lineplot(data=bench, x="depth", y=column, hue="block", hue_order=_blocks(bench, "block"), style="phase",
                     marker="o", errorbar=None, ax=ax)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("depth (weighted layers)")
        ax.set_ylabel(label)
    device = ", ".join(sorted(bench["device"].dropna().unique())) if "device" in bench else ""
    fig.suptitle(f"Throughput vs depth (pytest-benchmark{', ' + device if device else ''})", y=1.02)
    fig.tight_layout()
    return fig


def depth_scaling_figure(points: pd.DataFrame, time_fit: dict, memory_fit: dict, memory_kind: str) -> Figure:
    """Step time and memory vs depth with their least-squares lines: linear growth means every block costs the
    same, however deep the net."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, column, fit, label in ((axes[0], "step_s", time_fit, "forward+backward step (s)"),
                                   (axes[1], "memory_mb", memory_fit, f"{memory_kind} (MiB)")):  # fmt: skip
        ax.plot(points["depth"], points[column], "o", label="measured")
        xs = np.linspace(points["depth"].min(), points["depth"].max(), 50)
        ax.plot(xs, fit["intercept"] + fit["slope"] * xs, "--", label=f"linear fit, R² = {fit['r2']:.3f}")
        ax.set_xlabel("depth (weighted layers)")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    fig.suptitle("ResNet cost vs depth (batch 128, width 16)", y=1.02)
    fig.tight_layout()
    return fig
