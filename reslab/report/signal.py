"""The signal at initialisation as figures (pure functions, `frame -> Figure`) and one sentence tying it to the
outcome of training.

The training curves show that a deep plain net fails; these show why, at step 0 (`reslab.probe`): the backward
signal that grows or decays over the blocks (Schoenholz et al. 2017, Pennington et al. 2017), how much of it the
shortcut carries (the gradient a residual block passes on without its branch, Balduzzi et al. 2017), and the
correlation of different inputs block by block, the empirical C-map of Martens et al. 2021 (DKS).

Each figure takes a tidy frame with columns `kind`, `index` (block, input first), `value`, `depth`, `seed` and the
report's `variant` (or `block`), as `reslab.report.collect` reads it from telemetry.csv and `reslab probe` builds
it from its measurements: kinds `probe_grad_in`, `probe_grad_out`, `probe_share`, `probe_cmap`, `probe_act` per
block and `probe_net` (the quantity in `layer`) for the whole net. A panel per variant, plain next to residual, a line
per depth (the mean over seeds, geometric for the gradients).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reslab.probe.result import SignalProbe
from reslab.report.figures import GROUP, _blocks, _depth_palette, _with_group
from reslab.report.figures import _panels as panel_grid
from reslab.report.measure import measure_of

PROBE_KINDS = ("probe_act", "probe_grad_in", "probe_grad_out", "probe_share", "probe_cmap", "probe_wgrad", "probe_net")


def probe_frame(probes: list[tuple[dict, SignalProbe]]) -> pd.DataFrame:
    """The tidy frame of (labels, probe) pairs, as `reslab probe` draws its figures from (labels: `variant`,
    `depth`, `seed`, ...)."""
    return pd.DataFrame([row for labels, probe in probes for row in probe.records(**labels)])


def probe_rows(telemetry: pd.DataFrame) -> pd.DataFrame:
    """The rows of the probe at initialisation in a telemetry table (empty when it has none), of one width: the
    smallest, where a sweep has several (a line per depth must not average nets of different widths)."""
    if telemetry.empty or "kind" not in telemetry:
        return pd.DataFrame()
    rows = telemetry[telemetry["kind"].isin(PROBE_KINDS)]
    if "width" in rows and rows["width"].nunique() > 1:
        rows = rows[rows["width"] == rows["width"].min()]
    return _with_group(rows)


def _per_depth(probe: pd.DataFrame, kind: str, geometric: bool = False) -> dict[tuple[str, int], pd.Series]:
    """(variant, depth) -> value by block index, mean over seeds (of log10 with `geometric`)."""
    part = probe[probe["kind"] == kind]
    out = {}
    for (group, depth), rows in part.groupby([GROUP, "depth"], sort=False):
        values = rows["value"].astype(float)
        if geometric:
            values = np.log10(values.where(values > 0))
        line = values.groupby(rows["index"]).mean().sort_index()
        out[(group, int(depth))] = 10**line if geometric else line
    return dict(sorted(out.items(), key=lambda item: item[0][1]))  # legends from the shallowest net


def _panels(probe: pd.DataFrame, title: str, height: float = 3.6) -> tuple[Figure, dict[str, plt.Axes], dict]:
    groups = _blocks(probe)
    fig, axes = panel_grid(len(groups), 4.6, height, sharey=True)  # four to a row, as the training figures
    fig.suptitle(title, y=1.02)
    return fig, dict(zip(groups, axes, strict=True)), _depth_palette(sorted(probe["depth"].unique()))


def _block_axis(ax: plt.Axes, probe: pd.DataFrame) -> None:
    """Block numbers 1 (input side) .. n; a log axis when the deepest net has over 20x the blocks of the shallowest,
    so a 20-layer and a 1202-layer net can be read on one panel."""
    counts = probe.groupby("depth")["index"].max() + 1
    if counts.max() > 20 * max(counts.min(), 1):
        ax.set_xscale("log")
    ax.set_xlabel("block (1 = input side)")


def _finish(fig: Figure, axes: dict[str, plt.Axes], probe: pd.DataFrame, ylabel: str) -> Figure:
    """What every signal figure's panels share: the group as title, the block axis, a legend, the y label."""
    for group, ax in axes.items():
        ax.set_title(group)
        _block_axis(ax, probe)
        ax.legend(fontsize="small")
    next(iter(axes.values())).set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def signal_gradient_figure(probe: pd.DataFrame) -> Figure | None:
    """RMS of the loss gradient at each block's input over the one at the last block's output, at initialisation:
    a line that rises to the left is a gradient that grows towards the input (explodes), one that falls vanishes."""
    probe = _with_group(probe)
    grad_in = _per_depth(probe, "probe_grad_in", geometric=True)
    grad_out = _per_depth(probe, "probe_grad_out", geometric=True)
    if not grad_in:
        return None
    fig, axes, palette = _panels(probe, "Gradient at initialisation, block input / last block's output (RMS)")
    for (group, depth), line in grad_in.items():
        last = grad_out.get((group, depth))
        ref = float(last.iloc[-1]) if last is not None and len(last) else math.nan
        ratio = (line / ref).replace([np.inf, -np.inf], np.nan)
        axes[group].plot(ratio.index + 1, ratio.to_numpy(), color=palette[depth], label=f"depth {depth}")
        finite = ratio.dropna()
        if not finite.empty and ratio.isna().any() and ratio.index.min() < finite.index.min():
            # nearer the input the gradient left float32's range: mark where the line ends
            first = finite.index.min()
            axes[group].plot([first + 1], [finite[first]], "x", color=palette[depth], ms=8)
            axes[group].annotate("overflows", (first + 1, finite[first]), textcoords="offset points", xytext=(-6, 0),
                                 ha="right", va="center", fontsize="small", color=palette[depth])  # fmt: skip
    for ax in axes.values():
        ax.set_yscale("log")
        ax.axhline(1, color="0.5", lw=0.8)
    return _finish(fig, axes, probe, "gradient RMS / RMS at the output")


def shortcut_share_figure(probe: pd.DataFrame) -> Figure | None:
    """The shortcut's share of the gradient reaching each block's input, ||g_s|| / (||g_b|| + ||g_s||), at
    initialisation: 0 without a shortcut, above 0.5 where the shortcut carries more than the branch."""
    probe = _with_group(probe)
    shares = _per_depth(probe, "probe_share")
    if not shares:
        return None
    fig, axes, palette = _panels(probe, "Shortcut's share of the gradient at each block's input, at initialisation")
    for (group, depth), line in shares.items():
        axes[group].plot(line.index + 1, line.to_numpy(), color=palette[depth], label=f"depth {depth}")
    for ax in axes.values():
        ax.set_ylim(-0.03, 1.03)
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    return _finish(fig, axes, probe, "shortcut share of the gradient")


def weight_gradient_at_init_figure(probe: pd.DataFrame) -> Figure | None:
    """The gradient norm of the last weight of each block's branch at initialisation: for a Transformer, every
    second block is an MLP sublayer and its value the gradient of its second linear layer, the quantity of Xiong et
    al. 2020 (Fig. 3: about constant across a pre-norm net's layers and shrinking with its depth, largest at the last
    layer of a post-norm net). None where no probe measured it (runs recorded before it existed)."""
    probe = _with_group(probe)
    grads = _per_depth(probe, "probe_wgrad", geometric=True)
    if not grads:
        return None
    fig, axes, palette = _panels(probe, "Gradient norm of each block's last weight, at initialisation")
    for (group, depth), line in grads.items():
        axes[group].plot(line.index + 1, line.to_numpy(), color=palette[depth], label=f"depth {depth}",
                         marker="." if len(line) < 60 else None)  # fmt: skip
    for ax in axes.values():
        ax.set_yscale("log")
    return _finish(fig, axes, probe, "‖∂L/∂W‖ of the branch's last weight")


def cmap_figure(probe: pd.DataFrame) -> Figure | None:
    """The mean correlation of two different inputs' representations at each block's output (the empirical C-map),
    with the inputs' own correlation dotted: a line that climbs to 1 is a net that maps every input alike."""
    probe = _with_group(probe)
    cmaps = _per_depth(probe, "probe_cmap")
    if not cmaps:
        return None
    net = probe[(probe["kind"] == "probe_net") & (probe["layer"] == "cmap_input")] if "layer" in probe else probe[:0]
    fig, axes, palette = _panels(probe, "Correlation of two inputs' representations by block, at initialisation")
    for (group, depth), line in cmaps.items():
        axes[group].plot(line.index + 1, line.to_numpy(), color=palette[depth], label=f"depth {depth}")
    for group, ax in axes.items():
        inputs = net[net[GROUP] == group]["value"]
        if not inputs.empty:
            ax.axhline(float(inputs.mean()), color="0.4", lw=0.9, ls=":", label="inputs")
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.02)
    return _finish(fig, axes, probe, "mean pairwise correlation (C-map)")


def gradient_ratios(probe: pd.DataFrame) -> pd.DataFrame:
    """One row per variant x depth x seed: log10 of the gradient at the first block's input over the one at the last
    block's output (NaN where either left float32's range)."""
    probe = _with_group(probe)
    rows = []
    for (group, depth, seed), part in probe.groupby([GROUP, "depth", "seed"], sort=False):
        grad_in = part[(part["kind"] == "probe_grad_in")].sort_values("index")["value"]
        grad_out = part[(part["kind"] == "probe_grad_out")].sort_values("index")["value"]
        if grad_in.empty or grad_out.empty:
            continue
        first, last = float(grad_in.iloc[0]), float(grad_out.iloc[-1])
        ok = all(math.isfinite(v) and v > 0 for v in (first, last))
        rows.append({GROUP: group, "depth": int(depth), "seed": seed,
                     "log10_ratio": math.log10(first / last) if ok else math.nan, "overflow": not ok})  # fmt: skip
    return pd.DataFrame(rows, columns=[GROUP, "depth", "seed", "log10_ratio", "overflow"])


def signal_sentence(cells: pd.DataFrame, probe: pd.DataFrame) -> str | None:
    """One sentence relating the gradient at initialisation to the final training error, at the deepest depth that
    more than one variant reached (else the deepest), e.g. "At initialisation, plain-56's gradient at its first
    block's input is 10^4.4 times the one at its last block's output, residual-56's 10^1.8; their final training
    errors are 66.4 % and 0.1 %." (a language model's final training losses in bits per character). Means over
    seeds; None without probe rows."""
    m = measure_of(cells)
    ratios = gradient_ratios(probe)
    if ratios.empty:
        return None
    cells = _with_group(cells) if not cells.empty else cells
    per_depth = ratios.groupby("depth")[GROUP].nunique()
    shared = per_depth[per_depth > 1]
    depth = int((shared.index if not shared.empty else per_depth.index).max())
    part = ratios[ratios["depth"] == depth]
    groups = _blocks(part)
    clauses, errors = [], []
    for group in groups:
        mine = part[part[GROUP] == group]
        value = mine["log10_ratio"].mean()
        factor = f"10^{value:.1f}" if math.isfinite(value) else "beyond float32's range (it overflows)"
        clauses.append((f"{group}-{depth}", factor))
        if not cells.empty and m.train in cells:
            done = cells[(cells[GROUP] == group) & (cells["depth"] == depth)][m.train].dropna()
            errors.append(m.format(done.mean(), short=True) if len(done) else None)
    (first, factor), rest = clauses[0], clauses[1:]
    text = f"At initialisation, {first}'s gradient at its first block's input is {factor} times the one at its " \
           f"last block's output"  # fmt: skip
    text += "".join(f", {name}'s {f}" for name, f in rest)
    known = [e for e in errors if e is not None]
    if known and len(known) == len(clauses):
        if len(known) == 1:
            text += f"; its final training {m.noun} is {known[0]}"
        else:
            text += f"; their final training {m.plural} are {', '.join(known[:-1])} and {known[-1]}"
    return text + "."


def signal_figures(cells: pd.DataFrame, telemetry: pd.DataFrame) -> list[tuple[str, str, str, Figure | None]]:
    """The report's "Signal at initialisation" figures as (slug, title, caption, figure); empty without probe
    rows. The first caption carries `signal_sentence`."""
    probe = probe_rows(telemetry)
    if probe.empty:
        return []
    if "width" in probe and "width" in cells and not cells.empty:
        cells = cells[cells["width"] == probe["width"].iloc[0]]
    sentence = signal_sentence(cells, probe)
    lead = (sentence + " ") if sentence else ""
    widths = sorted(telemetry["width"].dropna().unique()) if "width" in telemetry else []
    if len(widths) > 1:
        lead = f"Width {probe['width'].iloc[0]} (of {', '.join(str(w) for w in widths)}). " + lead
    return [
        ("signal_gradient", "Signal at initialisation: gradient by block",
         lead + "RMS of the loss gradient at each block's input over the one at the last block's output, measured "
         "before the first step (batch statistics, one training batch; Schoenholz et al. 2017): a line rising to "
         "the left is a gradient that explodes towards the input.", signal_gradient_figure(probe)),
        ("signal_shortcut", "Signal at initialisation: shortcut's share of the gradient",
         "||g_shortcut|| / (||g_branch|| + ||g_shortcut||) at each block's input before the first step: 0 for plain "
         "blocks, above 0.5 where the shortcut carries more of the gradient than the branch.",
         shortcut_share_figure(probe)),
        ("signal_cmap", "Signal at initialisation: correlation of inputs by block",
         "The mean correlation of two different inputs' representations at each block's output (the empirical "
         "C-map, Martens et al. 2021), dotted: the inputs' own. Near 1, the net maps every input alike.",
         cmap_figure(probe)),
        ("signal_weight_grad", "Signal at initialisation: gradient of each block's last weight",
         "Frobenius norm of the loss gradient of the last weight of each block's branch before the first step (a "
         "Transformer's attention output projection and, every second block, its MLP's second layer: Xiong et al. "
         "2020, Fig. 3, find it about equal across a pre-norm net's layers, shrinking as 1/sqrt(L) with its depth, "
         "and largest at the last layer of a post-norm net). A ReZero gate at 0 passes its branch no gradient.",
         weight_gradient_at_init_figure(probe)),
    ]  # fmt: skip
