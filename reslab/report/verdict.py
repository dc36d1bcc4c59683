"""The verdict a report opens with: computed from the data, in plain words, with the numbers — never canned.

The degradation problem (He et al. 2015 §4.2) is *reproduced* when, at one width, the deepest plain net ends at a
training error at least `gap` (2 points) above the shallowest plain net's, and the residual net at that depth ends
no more than `tolerance` (1 point) above the shallowest residual net's and below the deep plain net. Training
error, not test error: degradation is an optimisation failure. Means over seeds of the final epoch. Language models
are judged the same way by their training loss in bits per character (`reslab.report.measure`), and since their
sweeps compare several residual recipes (post-norm, pre-norm, ReZero, DeepNorm), the verdict then also gives each
recipe's loss at the shallowest and the deepest depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from reslab.report.measure import BITS, ERROR, Measure

RESIDUAL_KINDS = ("residual", "preact", "rezero")


@dataclass(frozen=True)
class Verdict:
    reproduced: bool | None  # None: the sweep cannot tell (no plain nets, one depth, no results yet)
    text: str
    numbers: dict[str, float] = field(default_factory=dict)  # e.g. {"plain-56": 0.62, "plain-20": 0.022}


def pct(x: float) -> str:
    return ERROR.format(x)


def verdict(cells: pd.DataFrame, measure: Measure = ERROR) -> Verdict:
    """The verdict over the finished cells (`variant` or `block`, `depth`, `width`, `seed`, and the measure's
    training column), one learning rate per net (the report passes each net at its best rate when the grid sweeps
    it)."""
    col = measure.train
    if col not in cells:
        return Verdict(None, "No finished runs yet: nothing to judge.")
    done = cells[(cells["status"] == "FINISHED") & cells[col].notna()] if "status" in cells else cells
    if done.empty:
        return Verdict(None, "No finished runs yet: nothing to judge.")
    widths = sorted(done["width"].unique())
    parts = [_one_width(done[done["width"] == w], w if len(widths) > 1 else None, measure) for w in widths]
    known = [p.reproduced for p in parts if p.reproduced is not None]
    reproduced = None if not known else any(known)
    numbers = {k: v for p in parts for k, v in p.numbers.items()}
    n_seeds = int(done.groupby([_group(done), "depth", "width"])["seed"].nunique().max())
    what = "training error" if measure is ERROR else f"training {measure.noun} in {measure.unit}"
    note = f" Final-epoch {what}, mean over {n_seeds} seed{'s' * (n_seeds > 1)}."
    return Verdict(reproduced, " ".join(p.text for p in parts) + note, numbers)


def _group(df: pd.DataFrame) -> str:
    """Nets are told apart by their variant (block or remedy, and norm) where the sweep records it: a plain net
    with batch norm and one without, or TAT's plain net, are different nets."""
    return "variant" if "variant" in df and df["variant"].notna().all() else "block"


def _one_width(df: pd.DataFrame, width: int | None, m: Measure) -> Verdict:
    where = f" at width {width}" if width is not None else ""
    tag = f"-w{width}" if width is not None else ""
    mean = df.groupby([_group(df), "depth"])[m.train].mean()
    plain = mean.get("plain")
    numbers = {f"{b}-{d}{tag}": float(v) for (b, d), v in mean.items()}
    residual_kind = next((k for k in RESIDUAL_KINDS if k in mean.index.get_level_values(0)), None)
    training = f"training {m.noun}"
    recipes = _every_recipe(mean) if m is BITS else ""
    if plain is None or len(plain) < 2:
        what = "no plain nets" if plain is None else f"plain nets at one depth only ({plain.index[0]})"
        res = ""
        if residual_kind is not None:
            r = mean[residual_kind]
            res = f" {residual_kind}-{r.index.max()} ends at {m.format(r.iloc[-1])} {training}{where}."
        return Verdict(None, f"Degradation not tested{where}: the sweep has {what}.{res}{recipes}", numbers)
    shallow, deep = int(plain.index.min()), int(plain.index.max())
    gap = plain[deep] - plain[shallow]
    head = f"plain-{deep} ends at {m.format(plain[deep])} {training}, plain-{shallow} at {m.format(plain[shallow])}"
    head += f" ({m.format_gap(gap)})"
    if residual_kind is None or deep not in mean[residual_kind].index:
        ok = gap >= m.gap
        label = "Plain nets degrade" if ok else "Degradation not reproduced"
        return Verdict(ok if ok else False, f"{label}{where}: {head}; no residual net at depth {deep} to compare."
                       f"{recipes}", numbers)  # fmt: skip
    r = mean[residual_kind]
    r_shallow = int(r.index.min())
    res = f"{residual_kind}-{deep} at {m.format(r[deep])}"
    if r_shallow != deep:
        res += f" ({residual_kind}-{r_shallow}: {m.format(r[r_shallow])})"
    if gap < m.gap:
        threshold = f"{m.scale * m.gap:g}-{m.difference.rstrip('s')}"  # "2-point", "0.1-bit"
        return Verdict(False, f"Degradation not reproduced{where}: {head}, under the {threshold} threshold; "
                              f"{res}.{recipes}", numbers)  # fmt: skip
    if r[deep] > r[r_shallow] + m.tolerance:
        return Verdict(False, f"Degradation not removed{where}: {head}, but {res} degrades as well.{recipes}",
                       numbers)  # fmt: skip
    if r[deep] >= plain[deep]:
        return Verdict(False, f"Degradation not removed{where}: {head}, but {res} ends no better than plain-{deep}."
                              f"{recipes}", numbers)  # fmt: skip
    return Verdict(True, f"Degradation reproduced{where}: {head}; {res}.{recipes}", numbers)


def _every_recipe(mean: pd.Series) -> str:
    """' From depth 2 to 12: plain 3.84 → 4.68 bits (degrades), preact 3.22 → 2.90 bits, ...': each net's change
    from its shallowest to its deepest depth, and which of them degrade by the measure's gap."""
    groups = list(dict.fromkeys(mean.index.get_level_values(0)))
    clauses = []
    for g in groups:
        series = mean[g]
        if len(series) < 2:
            continue
        lo, hi = int(series.index.min()), int(series.index.max())
        change = series[hi] - series[lo]
        worse = " (degrades)" if change >= BITS.gap else ""
        clauses.append(f"{g}-{lo} {BITS.format(series[lo])} → {g}-{hi} {BITS.format(series[hi])}{worse}")
    return f" Every net, shallowest to deepest: {'; '.join(clauses)}." if clauses else ""
