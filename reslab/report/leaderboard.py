"""The remedies leaderboard: which remedies for depth train the deepest nets of a sweep, each at the shared recipe
and at its best learning rate, next to what its paper reports.

Learning rate decides whether a net without normalisation trains at all (a plain net at lr 0.1 may sit at chance
and train at 0.02), so a remedy is judged at the best rate of the sweep's `grid.lr` axis, by final training error
(degradation is an optimisation failure, He et al. 2015), and the shared recipe's rate is shown beside it.

A remedy *trains at depth D* when its best final training error at D is within `TRAINS_WITHIN` (5 points) of the
residual net with batch norm at D. The papers report CIFAR or ImageNet, so they are compared qualitatively; a
disagreement is stated only when at least two seeds agree on it, and flagged as tentative with one seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reslab.report.verdict import pct

TRAINS_WITHIN = 0.05
#: The reference every remedy is held against: He et al.'s residual net with batch norm.
REFERENCE = "residual"


@dataclass(frozen=True)
class Claim:
    """What a paper reports for a remedy, in its own setting, and whether that means "trains at depth"."""

    source: str
    text: str
    trains: bool


CLAIMS: dict[str, Claim] = {
    "plain": Claim("He et al. 2015", "a plain net with batch norm and no shortcut degrades with depth: plain-56 ends "
                   "at a higher training error than plain-20 (CIFAR-10, Fig. 6)", False),
    "residual": Claim("He et al. 2015", "residual nets with batch norm train at 110 layers (6.43 % CIFAR-10 test "
                      "error) and at 1202", True),
    "fixup": Claim("Zhang et al. 2019", "Fixup trains residual nets without normalisation to accuracy close to batch "
                   "norm, from 110 up to 10,000 layers (CIFAR-10, ImageNet)", True),
    "skipinit": Claim("De & Smith 2020", "SkipInit trains deep residual nets without normalisation (Wide-ResNets on "
                      "CIFAR-10, ResNet-50 to 101 on ImageNet)", True),
    "scaled": Claim("Hayou et al. 2021", "branches scaled by 1/sqrt(L) keep deep residual nets trainable (CIFAR-10, "
                    "ImageNet)", True),
    "scaled-normnone": Claim("Hayou et al. 2021", "branches scaled by 1/sqrt(L) keep deep residual nets trainable, "
                             "normalisation or not (CIFAR-10, ImageNet)", True),
    "tat": Claim("Zhang et al. 2022", "TAT trains vanilla nets of 50 to 200 layers close to ResNets (ImageNet, with "
                 "K-FAC; less so with SGD)", True),
}  # fmt: skip


def is_remedy_sweep(config: dict) -> bool:
    """A sweep gets a leaderboard when its grid has remedies or a learning-rate axis."""
    grid = config.get("grid") or {}
    return bool(grid.get("lr")) or any(r != "none" for r in grid.get("remedies") or [])


def _done(cells: pd.DataFrame) -> pd.DataFrame:
    done = cells[(cells["status"] == "FINISHED") & cells["train_error"].notna()].copy()
    done["lr"] = done["lr"].astype(float)
    return done


def best_lr(cells: pd.DataFrame) -> pd.DataFrame:
    """The finished cells at each (variant, width, depth)'s best learning rate: the one with the lowest mean final
    training error over seeds (every seed of it kept)."""
    done = _done(cells)
    if done.empty:
        return done
    means = done.groupby(["variant", "width", "depth", "lr"], dropna=False)["train_error"].mean().reset_index()
    best = means.sort_values(["train_error", "lr"], ascending=[True, False]).drop_duplicates(
        ["variant", "width", "depth"]
    )
    keep = best[["variant", "width", "depth", "lr"]]
    return done.merge(keep, on=["variant", "width", "depth", "lr"]).reset_index(drop=True)


@dataclass(frozen=True)
class Leaderboard:
    table: pd.DataFrame  # one row per variant x depth
    remedies: pd.DataFrame  # one row per variant: change with depth, verdict, the paper, agreement
    recipe_lr: float | None  # the shared recipe's rate, when the sweep ran it
    deepest: int | None


def leaderboard(cells: pd.DataFrame, recipe_lr: float | None) -> Leaderboard:
    """The leaderboard of a sweep's finished cells (`variant`, `depth`, `width`, `seed`, `lr`, errors): the widest
    width only, when a sweep has several."""
    done = _done(cells)
    if done.empty:
        return Leaderboard(pd.DataFrame(), pd.DataFrame(), recipe_lr, None)
    done = done[done["width"] == done["width"].max()]
    best = best_lr(done)
    lrs = sorted(done["lr"].unique())
    shared = recipe_lr if recipe_lr in lrs else None
    rows = []
    for (variant, depth), group in best.groupby(["variant", "depth"], sort=False):
        row = {"remedy": variant, "depth": int(depth), "best lr": f"{group['lr'].iloc[0]:g}"}
        if shared is not None:
            at = done[(done["variant"] == variant) & (done["depth"] == depth) & (done["lr"] == shared)]
            row[f"train @ lr {shared:g}"] = _errors(at, "train_error")
            row[f"test @ lr {shared:g}"] = _errors(at, "test_error")
        row["train @ best"] = _errors(group, "train_error")
        row["test @ best"] = _errors(group, "test_error")
        row["seeds"] = int(group["seed"].nunique())
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["remedy", "depth"], key=_order).reset_index(drop=True)
    deepest = int(best["depth"].max())
    return Leaderboard(table, _verdicts(best, deepest), shared, deepest)


def _order(col: pd.Series) -> pd.Series:
    if col.name != "remedy":
        return col
    first = ["plain", "plain-normnone", "residual", "residual-normnone"]
    return col.map(lambda v: (first.index(v), v) if v in first else (len(first), v))


def _errors(group: pd.DataFrame, column: str) -> str:
    values = group[column].dropna()
    if values.empty:
        return "-"
    text = pct(values.mean()) + (f" ± {100 * values.std():.1f}" if len(values) > 1 else "")
    diverged = int((group["diverged"].fillna("") != "").sum()) if "diverged" in group else 0
    return text + (f" ({diverged} diverged)" if diverged else "")


def _verdicts(best: pd.DataFrame, deepest: int) -> pd.DataFrame:
    reference = best[(best["variant"] == REFERENCE) & (best["depth"] == deepest)]
    ref_mean = reference["train_error"].mean() if not reference.empty else None
    ref_seed = reference.groupby("seed")["train_error"].mean()
    rows = []
    for variant, group in best.groupby("variant", sort=False):
        by_depth = group.groupby("depth")["train_error"].mean()
        row: dict[str, object] = {"remedy": variant}
        shallow = int(by_depth.index.min())
        change = by_depth.iloc[-1] - by_depth.iloc[0] if len(by_depth) > 1 else None
        points = (round(100 * change, 1) or 0.0) if change is not None else None  # never "-0.0"
        row[f"change {shallow} → {deepest}"] = f"{points:+.1f} points" if points is not None else "-"
        deep = group[group["depth"] == deepest]
        claim = CLAIMS.get(variant)
        row["paper"] = f"{claim.text} ({claim.source})" if claim else "-"
        if deep.empty or ref_mean is None:
            row["verdict"] = f"no result at depth {deepest}" if deep.empty else f"no {REFERENCE} net at {deepest}"
            row["agreement"] = "-"
            rows.append(row)
            continue
        mean = deep["train_error"].mean()
        trains = mean <= ref_mean + TRAINS_WITHIN
        gap = round(100 * (mean - ref_mean), 1) or 0.0
        row["verdict"] = (f"trains at depth {deepest}" if trains else f"does not train at depth {deepest}") + (
            f" ({pct(mean)} at lr {deep['lr'].iloc[0]:g}; {gap:+.1f} points vs {REFERENCE})"
        )
        row["agreement"] = _agreement(claim, trains, deep.groupby("seed")["train_error"].mean(), ref_seed, deepest)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("remedy", key=_order).reset_index(drop=True)


def _agreement(claim: Claim | None, trains: bool, seeds: pd.Series, ref_seed: pd.Series, depth: int) -> str:
    """Agrees, disagrees (when two or more seeds agree with each other), or a tentative disagreement (one seed)."""
    if claim is None:
        return "-"
    if trains == claim.trains:
        return "agrees"
    paired = [s for s in seeds.index if s in ref_seed.index]
    each = [bool(seeds[s] <= ref_seed[s] + TRAINS_WITHIN) for s in paired]
    if len(each) >= 2 and all(e == trains for e in each):
        outcome = "trains" if trains else "does not train"
        return f"disagrees with {claim.source}: {outcome} at depth {depth} with each of {len(each)} seeds"
    if len(each) >= 2:
        return "seeds disagree with each other: no conclusion"
    alone = f"seed {paired[0]} alone" if paired else "one seed alone"
    return f"{alone} disagrees: run a second seed (--set grid.seeds=[0,1]) before reading this as a disagreement"
