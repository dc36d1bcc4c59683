"""Collect: a sweep's MLflow runs as tidy pandas tables. Never trains; works on partial sweeps.

- `runs`: one row per child run (every attempt), with its status, failure reason and, for a FINISHED run whose
  loss became NaN, why it diverged; runs superseded by a retry (their worker lost its lease) are left out;
- `cells`: one row per grid cell: the finished run (the best trial when tuned), else the last attempt, else
  `missing` for cells of the sweep's config that have no run yet;
- `epochs`: one row per finished cell x epoch (train/val/test error and loss, lr, epoch time), from MLflow's metric
  histories;
- `telemetry`: one row per finished cell x probed step x metric (gradient norms, gates, and at step 0 the probe of
  the signal at initialisation, `reslab.probe`), from each run's telemetry.csv artifact, or its metric histories
  when the artifact is missing.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

from reslab import tracking
from reslab.models.rules import SpecError
from reslab.models.spec import spec_fields, spec_from_values, spec_values, variant
from reslab.probe.result import BLOCK_KINDS as PROBE_KINDS
from reslab.redact import redact_uri
from reslab.sweep.parent import find_sweep, sweep_runs
from reslab.tags import Metric, Tag

EPOCH_KEYS = Metric.EPOCH
FINAL_KEYS = Metric.RESULTS
TELEMETRY = re.compile(rf"^(grad_branch|grad_shortcut|grad_out|gate|act|{'|'.join(PROBE_KINDS.values())})/b(\d+)$"
                       r"|^(grad_weight)/(\d+)\.(.+)$|^(probe_net)/([a-z0-9_]+)$")
#: A cell's columns: its key and run name, every `NetSpec` field, the seed, and the report's label for its net.
CELL_COLUMNS = ["cell", "name", *(f.name for f in spec_fields()), "seed", "variant"]


class ReportError(RuntimeError):
    """The sweep cannot be found or read: the message says where we looked."""


@dataclass
class SweepData:
    name: str
    uri: str
    experiment: str
    parent: dict[str, Any]
    config: dict[str, Any]
    runs: pd.DataFrame
    cells: pd.DataFrame
    epochs: pd.DataFrame
    telemetry: pd.DataFrame
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "FINISHED"]


def parse_telemetry_key(key: str) -> tuple[str, int, str] | None:
    """'grad_branch/b007' -> ('grad_branch', 7, ''); 'grad_weight/012.stages.0.1.branch.0' -> (..., 12, layer);
    the probe at initialisation's 'probe_act/b007' -> ('probe_act', 7, '') and whole-net 'probe_net/grad_ratio' ->
    ('probe_net', -1, 'grad_ratio')."""
    m = TELEMETRY.match(key)
    if m is None:
        return None
    if m.group(1):
        return m.group(1), int(m.group(2)), ""
    if m.group(6):
        return m.group(6), -1, m.group(7)
    return m.group(3), int(m.group(4)), m.group(5)


def collect(uri: str, sweep: str, experiment: str | None = None) -> SweepData:
    """Everything the report needs about `sweep` from the store at `uri`."""
    store = tracking.store(uri)
    if experiment is None:
        experiment, _ = find_sweep(store, sweep)
        if experiment is None:
            raise ReportError(
                f"no sweep named {sweep!r} in {redact_uri(uri)}: run `reslab sweep` first or pass --tracking-uri"
            )
    parent, children = sweep_runs(store, experiment, sweep)
    if parent is None:
        raise ReportError(f"no sweep named {sweep!r} in experiment {experiment!r} of {redact_uri(uri)}")
    config_text = store.read_artifact_text(parent.info.run_id, "config.yaml") or "{}"
    config = yaml.safe_load(config_text) or {}
    runs = _runs_frame(children)
    with ThreadPoolExecutor(max_workers=4) as pool:  # sqlite reads overlap well; MLflow clients are thread-safe
        finished = runs[runs["status"] == "FINISHED"]
        histories = list(pool.map(lambda r: _history(store, r), finished.to_dict("records")))
        telemetry = list(pool.map(lambda r: _telemetry(store, r), finished.to_dict("records")))
    epochs = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    tele = pd.concat(telemetry, ignore_index=True) if telemetry else pd.DataFrame()
    cells = _cells_frame(runs, config)
    keep = set(cells["run_id"].dropna())
    if not epochs.empty:
        epochs = epochs[epochs["run_id"].isin(keep)].reset_index(drop=True)
    if not tele.empty:
        tele = tele[tele["run_id"].isin(keep)].reset_index(drop=True)
    p = parent.info
    parent_info = {"run_id": p.run_id, "status": p.status, "start_time": p.start_time, "end_time": p.end_time,
                   "tags": dict(parent.data.tags)}  # fmt: skip
    provenance = _provenance(parent, children)
    return SweepData(sweep, uri, experiment, parent_info, config, runs, cells, epochs, tele, provenance)


def _runs_frame(children: list) -> pd.DataFrame:
    rows = []
    for run in children:
        tags, params, metrics, info = run.data.tags, run.data.params, run.data.metrics, run.info
        if Tag.SUPERSEDED in tags:
            continue
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "cell": tags.get(Tag.CELL),
            "name": info.run_name,
            **_net_columns(tags, tags.get(Tag.ARM, "")),
            "seed": _int(tags.get("seed")),
            "slot": _int(tags.get(Tag.SLOT, "0")),
            "status": info.status,
            "failure": tags.get(Tag.FAILURE, ""),
            "diverged": tags.get(Tag.DIVERGED, ""),
            "attempt": _int(tags.get(Tag.ATTEMPT, "1")),
            "params": _int(params.get("net.params")),
            "macs": _int(params.get("net.macs")),
            "lr": _float(params.get("train.lr")),
            "weight_decay": _float(params.get("train.weight_decay")),
            "tune_metric": tags.get(Tag.TUNE_METRIC),
            "start_time": info.start_time,
            "wall_s": (info.end_time - info.start_time) / 1000 if info.end_time else None,
        }
        for key in (*FINAL_KEYS, "epoch_time_s", "train_images_per_s"):
            row[key] = metrics.get(key)
        rows.append(row)
    columns = ["run_id", *CELL_COLUMNS, "slot", "status", "failure", "diverged", "attempt", "params", "macs", "lr",
               "weight_decay", "tune_metric", "start_time", "wall_s", *FINAL_KEYS, "epoch_time_s",
               "train_images_per_s"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _cells_frame(runs: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """One row per cell: its finished run (the best trial when tuned), else its last attempt; `missing` rows for
    cells of the config without any run."""
    rows = []
    for _, group in runs.groupby("cell", sort=False):
        done = group[group["status"] == "FINISHED"]
        if not done.empty:
            metric = done["tune_metric"].dropna()
            key = metric.iloc[0] if not metric.empty else "train_error"
            best = done.sort_values([key, "slot"], na_position="last").iloc[0]
            row = best.to_dict()
            row["attempts"] = len(group)
        else:
            row = group.sort_values("start_time").iloc[-1].to_dict()
            row["attempts"] = len(group)
        rows.append(row)
    cells = pd.DataFrame(rows, columns=[*runs.columns, "attempts"])
    present = set(cells["cell"])
    missing = [c for c in _grid_cells(config) if c["cell"] not in present]
    if missing:
        filler = pd.DataFrame([{**c, "status": "missing", "failure": "", "diverged": "", "attempts": 0}
                               for c in missing])  # fmt: skip
        cells = pd.concat([cells, filler], ignore_index=True) if not cells.empty else filler
    if cells.empty:
        return pd.DataFrame(columns=[*runs.columns, "attempts"])
    return cells.sort_values(["variant", "width", "lr", "depth", "seed"], kind="stable").reset_index(drop=True)


def _grid_cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    if not config.get("grid"):
        return []
    from reslab.sweep.config import GridConfig, SweepConfig
    from reslab.sweep.grid import expand

    try:
        cells = SweepConfig.model_validate(config).cells()
    except Exception:  # a config recorded by an older reslab: its grid at least
        try:
            cells = expand(GridConfig.model_validate(config["grid"]))
        except Exception:
            return []
    lr = (config.get("train") or {}).get("lr")
    return [{"cell": c.key, "name": c.name, **_net_columns(spec_values(c.net), c.arm), "seed": c.seed,
             "lr": c.lr if c.lr is not None else dict(c.train).get("lr", lr)} for c in cells]


def _history(store: tracking.Store, run: dict[str, Any]) -> pd.DataFrame:
    frames = []
    for key in EPOCH_KEYS:
        points = store.metric_history(run["run_id"], key)
        if points:
            frames.append(pd.DataFrame(points, columns=["epoch", key]).set_index("epoch"))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, axis=1).reset_index()
    for col in ("run_id", *CELL_COLUMNS):
        df[col] = run[col]
    return df


def _telemetry(store: tracking.Store, run: dict[str, Any]) -> pd.DataFrame:
    text = store.read_artifact_text(run["run_id"], "telemetry.csv")
    if text is not None:
        raw = pd.read_csv(io.StringIO(text))
    else:  # an older or interrupted run: read the metric histories one by one
        keys = [k for k in store.get_run(run["run_id"]).data.metrics if parse_telemetry_key(k)]
        rows = [(s, k, v) for k in keys for s, v in store.metric_history(run["run_id"], k)]
        raw = pd.DataFrame(rows, columns=["step", "key", "value"])
    if raw.empty:
        return pd.DataFrame()
    parsed = raw["key"].map(parse_telemetry_key)
    raw = raw[parsed.notna()].copy()
    parsed = parsed[parsed.notna()]
    raw["kind"] = [p[0] for p in parsed]
    raw["index"] = [p[1] for p in parsed]
    raw["layer"] = [p[2] for p in parsed]
    for col in ("run_id", *CELL_COLUMNS):
        raw[col] = run[col]
    return raw.drop(columns=["key"])


def _provenance(parent, children: list) -> dict[str, str]:
    tags = dict(parent.data.tags)
    child_tags = children[0].data.tags if children else {}
    out = {"git commit": tags.get(Tag.GIT_COMMIT) or child_tags.get(Tag.GIT_COMMIT, "unknown"),
           "config": tags.get(Tag.CONFIG, ""), "device": child_tags.get(Tag.DEVICE, "")}  # fmt: skip
    prefix = Tag.VERSION_PREFIX
    out.update({k.removeprefix(prefix): v for k, v in child_tags.items() if k.startswith(prefix)})
    return out


def _net_columns(values: dict[str, Any], arm: str = "") -> dict[str, Any]:
    """A run's `NetSpec` columns from its tags (text; a field older than the run is missing and takes its default)
    and the report's label for the net (`reslab.models.spec.variant`, with the settings of the sweep's arm it was
    trained in, `residual-warmup_epochs1`); tags that describe no valid net are kept as they are, without a label."""
    try:
        spec = spec_from_values(values)
    except (SpecError, ValueError):
        return {**{f.name: values.get(f.name) for f in spec_fields()}, "variant": values.get("block")}
    return {**spec_values(spec), "variant": variant(spec) + arm}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
