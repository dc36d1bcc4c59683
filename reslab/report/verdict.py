"""The verdict a report opens with: computed from the data, in plain words, with the numbers — never canned.

The degradation problem (He et al. 2015 §4.2) is *reproduced* when, at one width, the deepest plain net ends at a
training error at least `GAP` (2 points) above the shallowest plain net's, and the residual net at that depth ends
no more than `TOLERANCE` (1 point) above the shallowest residual net's and below the deep plain net. Training
error, not test error: degradation is an optimisation failure. Means over seeds of the final epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

GAP = 0.02
TOLERANCE = 0.01
RESIDUAL_KINDS = ("residual", "preact", "rezero")


@dataclass(frozen=True)
class Verdict:
    reproduced: bool | None  # None: the sweep cannot tell (no plain nets, one depth, no results yet)
    text: str
    numbers: dict[str, float] = field(default_factory=dict)  # e.g. {"plain-56": 0.62, "plain-20": 0.022}


def pct(x: float) -> str:
    return f"{100 * x:.2f} %" if abs(x) < 0.01 else f"{100 * x:.1f} %"


def verdict(cells: pd.DataFrame) -> Verdict:
    """The verdict over the finished cells (`variant` or `block`, `depth`, `width`, `seed`, `train_error`), one
    learning rate per net (the report passes each net at its best rate when the grid sweeps it)."""
    done = cells[(cells["status"] == "FINISHED") & cells["train_error"].notna()] if "status" in cells else cells
    if done.empty:
        return Verdict(None, "No finished runs yet: nothing to judge.")
    widths = sorted(done["width"].unique())
    parts = [_one_width(done[done["width"] == w], w if len(widths) > 1 else None) for w in widths]
    known = [p.reproduced for p in parts if p.reproduced is not None]
    reproduced = None if not known else any(known)
    numbers = {k: v for p in parts for k, v in p.numbers.items()}
    n_seeds = int(done.groupby([_group(done), "depth", "width"])["seed"].nunique().max())
    note = f" Final-epoch training error, mean over {n_seeds} seed{'s' * (n_seeds > 1)}."
    return Verdict(reproduced, " ".join(p.text for p in parts) + note, numbers)


def _group(df: pd.DataFrame) -> str:
    """Nets are told apart by their variant (block or remedy, and norm) where the sweep records it: a plain net
    with batch norm and one without, or TAT's plain net, are different nets."""
    return "variant" if "variant" in df and df["variant"].notna().all() else "block"


def _one_width(df: pd.DataFrame, width: int | None) -> Verdict:
    where = f" at width {width}" if width is not None else ""
    tag = f"-w{width}" if width is not None else ""
    mean = df.groupby([_group(df), "depth"])["train_error"].mean()
    plain = mean.get("plain")
    numbers = {f"{b}-{d}{tag}": float(v) for (b, d), v in mean.items()}
    residual_kind = next((k for k in RESIDUAL_KINDS if k in mean.index.get_level_values(0)), None)
    if plain is None or len(plain) < 2:
        what = "no plain nets" if plain is None else f"plain nets at one depth only ({plain.index[0]})"
        res = ""
        if residual_kind is not None:
            r = mean[residual_kind]
            res = f" {residual_kind}-{r.index.max()} ends at {pct(r.iloc[-1])} training error{where}."
        return Verdict(None, f"Degradation not tested{where}: the sweep has {what}.{res}", numbers)
    shallow, deep = int(plain.index.min()), int(plain.index.max())
    gap = plain[deep] - plain[shallow]
    head = f"plain-{deep} ends at {pct(plain[deep])} training error, plain-{shallow} at {pct(plain[shallow])}"
    head += f" ({100 * gap:+.1f} points)"
    if residual_kind is None or deep not in mean[residual_kind].index:
        ok = gap >= GAP
        label = "Plain nets degrade" if ok else "Degradation not reproduced"
        return Verdict(ok if ok else False, f"{label}{where}: {head}; no residual net at depth {deep} to compare.",
                       numbers)  # fmt: skip
    r = mean[residual_kind]
    r_shallow = int(r.index.min())
    res = f"{residual_kind}-{deep} at {pct(r[deep])}"
    if r_shallow != deep:
        res += f" ({residual_kind}-{r_shallow}: {pct(r[r_shallow])})"
    if gap < GAP:
        return Verdict(False, f"Degradation not reproduced{where}: {head}, under the {100 * GAP:.0f}-point "
                              f"threshold; {res}.", numbers)  # fmt: skip
    if r[deep] > r[r_shallow] + TOLERANCE or r[deep] >= plain[deep]:
        return Verdict(False, f"Degradation not removed{where}: {head}, but {res} degrades as well.", numbers)
    return Verdict(True, f"Degradation reproduced{where}: {head}; {res}.", numbers)
