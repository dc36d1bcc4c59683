"""Every MLflow call in reslab lives here: one place that states the tracking contract.

The contract (what the sweep, the report and users' own queries may rely on):
- store: `--tracking-uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db` (MLflow 3's own default,
  so a bare `mlflow ui` in that folder shows the runs);
- one run per training; tags `family block depth width shortcut seed dataset`, `reslab.git_commit`,
  `reslab.device`, `reslab.version.<package>`; params `net.*`, `train.*`, `data.*`;
- per-epoch metrics at step = epoch (1-based): train_error, train_loss, val_error, val_loss, test_error, test_loss,
  lr, epoch_time_s, train_images_per_s; gradient telemetry at step = training iteration: `grad_branch/bNNN`,
  `grad_shortcut/bNNN`, `grad_out/bNNN`, `gate/bNNN`, `grad_weight/LLL.<parameter>`; MLflow system metrics;
- artifacts `config.yaml`, `model_summary.txt`, `final_metrics.json`;
- sweeps: a parent run tagged `reslab.sweep=<name>` and children tagged `mlflow.parentRunId`, `reslab.cell`.

FACTS measured here: one `log_batch` of 1000 metrics costs what ~16 single `log_metric` calls do, so everything is
logged per epoch or in batches; two processes creating one fresh sqlite DB corrupt it, so `prepare_store` creates
it once before workers start.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars per artifact read
warnings.filterwarnings("ignore", message=".*noload.*")  # SQLAlchemy deprecation printed by sqlite stores
for _name in ("mlflow.store.db.utils", "alembic", "mlflow.system_metrics"):  # start-up and monitor chatter
    logging.getLogger(_name).setLevel(logging.WARNING)

DEFAULT_EXPERIMENT = "reslab"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class TrackingError(RuntimeError):
    """The tracking store cannot be used: the message says which URI and what to do."""


def resolve_uri(uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute, so every worker agrees)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@functools.lru_cache(maxsize=8)
def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def prepare_store(uri: str, experiment: str = DEFAULT_EXPERIMENT, timeout: float = 30.0) -> str:
    """Create (or open) the store and the experiment; return the experiment id. Call once before workers start.
    An unreachable server is one clear error here, before any training."""
    check_server(uri, timeout)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return experiment_id(uri, experiment)
    except Exception as exc:  # MLflow raises many kinds; the user needs the URI and the cause
        raise TrackingError(f"cannot use tracking store {uri}: {exc}") from exc


def check_server(uri: str, timeout: float = 30.0) -> None:
    """An http(s) tracking URI must answer /health: otherwise one clear TrackingError (other stores: nothing)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it (mlflow server --host ... --port ...) "
            f"or pass another --tracking-uri"
        ) from None


def experiment_id(uri: str, name: str) -> str:
    """Id of experiment `name`, created if missing (race-safe: a concurrent creator wins, we read its id)."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return c.create_experiment(name)
    except Exception:
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    tags: dict[str, Any],
    params: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run with its tags and params in two calls; return its id."""
    all_tags = {k: str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client(uri).create_run(experiment_id(uri, experiment), tags=all_tags, run_name=run_name)
    if params:
        log_params(uri, run.info.run_id, params)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client(uri).log_batch(run_id, params=items[i : i + 100])


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def set_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(uri: str, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
    """Log (key, value, step) rows in batches of 1000 (one call each)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
    for i in range(0, len(metrics), _BATCH):
        client(uri).log_batch(run_id, metrics=metrics[i : i + _BATCH])


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def log_json(uri: str, run_id: str, data: Any, artifact_file: str) -> None:
    client(uri).log_text(run_id, json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file)


def finish_run(uri: str, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """Mark a run FINISHED, FAILED or KILLED; a failure's reason goes to tag `reslab.failure`."""
    if reason:
        set_tags(uri, run_id, {"reslab.failure": reason[:5000]})
    client(uri).set_terminated(run_id, status)


def lightning_logger(uri: str, run_id: str):
    """Lightning's MLFlowLogger attached to an existing run (tracking_uri always passed: its default is a file store
    that MLflow 3 refuses). It never ends the run: Lightning's `finalize` marks it FINISHED as soon as `fit` returns,
    before the final metrics and telemetry are written, and a crash in between would leave a FINISHED run that a
    resumed sweep counts as done. `finish_run` ends it once everything is recorded."""
    from lightning.pytorch.loggers import MLFlowLogger

    class _RunKeepingLogger(MLFlowLogger):
        def finalize(self, status: str = "success") -> None:
            """Leave the run's status to `finish_run`."""

    return _RunKeepingLogger(tracking_uri=uri, run_id=run_id)


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str, interval_s: float = 1.0, samples_per_log: int = 1) -> Iterator[None]:
    """MLflow system metrics (CPU, memory, disk, network; GPU when nvidia-ml-py is present) for the block's duration.
    A sample still being taken when the block ends is dropped, so runs shorter than `interval_s` log none."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, samples_before_logging=samples_per_log, tracking_uri=uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


# --- sweeps -------------------------------------------------------------------------------------------------------


def sweep_filter(sweep: str) -> str:
    return f"tags.`reslab.sweep` = '{sweep}' and tags.`reslab.role` = 'sweep'"


def ensure_sweep_run(
    uri: str,
    experiment: str,
    sweep: str,
    config_yaml: str,
    tags: dict[str, str],
    *,
    sweep_id: str = "",
    known_parent: str | None = None,
) -> tuple[str, list[str]]:
    """The sweep's parent run and the ids of parents it supersedes.

    `known_parent` is the parent the sweep's queue recorded on an earlier start: it is used as long as it exists.
    Otherwise parents are found by tag: those of this queue incarnation (`sweep_id`) are the sweep's own (two
    coordinators starting at once may both create one: the oldest is kept, the other deleted, so every worker
    attaches its children to the same parent); those of another incarnation (the queue was deleted to start over,
    or another queue was named) are kept for the record but retagged `reslab.role=superseded`, so their children
    are never mixed with this sweep's in a report or counted as this sweep's finished cells.
    """
    c = client(uri)
    if known_parent:
        try:
            run = c.get_run(known_parent)
        except Exception:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            return _reopen_parent(uri, run, config_yaml), []
    runs = search_runs(uri, experiment, sweep_filter(sweep))
    stale = [r for r in runs if r.data.tags.get("reslab.sweep_id", "") != sweep_id]
    for run in stale:
        set_tags(uri, run.info.run_id, {"reslab.role": "superseded", "reslab.superseded_by": sweep_id})
    ours = [r for r in runs if r not in stale]
    if not ours:
        sweep_tags = {"reslab.sweep": sweep, "reslab.role": "sweep", "reslab.sweep_id": sweep_id, **tags}
        mine = start_run(uri, experiment, f"sweep-{sweep}", sweep_tags)
        ours = [r for r in search_runs(uri, experiment, sweep_filter(sweep))
                if r.data.tags.get("reslab.sweep_id", "") == sweep_id]  # fmt: skip
        keeper = min(ours, key=lambda r: (r.info.start_time, r.info.run_id))
        if keeper.info.run_id != mine:
            c.delete_run(mine)
    else:
        keeper = min(ours, key=lambda r: (r.info.start_time, r.info.run_id))
    return _reopen_parent(uri, keeper, config_yaml), [r.info.run_id for r in stale]


def _reopen_parent(uri: str, run: Any, config_yaml: str) -> str:
    run_id = run.info.run_id
    if run.info.status != "RUNNING":
        client(uri).update_run(run_id, status="RUNNING")
    log_text(uri, run_id, config_yaml, "config.yaml")
    return run_id


def sweep_runs(uri: str, experiment: str, sweep: str) -> tuple[Any, list]:
    """(parent run or None, its child runs) of a sweep."""
    parents = search_runs(uri, experiment, sweep_filter(sweep))
    if not parents:
        return None, []
    parent = min(parents, key=lambda r: (r.info.start_time, r.info.run_id))
    children = search_runs(uri, experiment, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, children


def running_children(uri: str, experiment: str, parent_run_id: str) -> list:
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    return search_runs(uri, experiment, query)


def find_sweep(uri: str, sweep: str) -> tuple[str | None, Any]:
    """(experiment name, parent run) of a sweep in any experiment of the store, newest experiment first."""
    c = client(uri)
    for exp in sorted(c.search_experiments(), key=lambda e: e.creation_time or 0, reverse=True):
        runs = c.search_runs([exp.experiment_id], filter_string=sweep_filter(sweep), max_results=10)
        if runs:
            return exp.name, min(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    return None, None


# --- provenance ---------------------------------------------------------------------------------------------------

_PACKAGES = ("reslab", "torch", "lightning", "mlflow", "optuna", "numpy")


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the checkout reslab runs from, with `-dirty` if it has uncommitted changes; `unknown` outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def versions() -> dict[str, str]:
    import platform

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def provenance_tags(device: str) -> dict[str, str]:
    tags = {"reslab.git_commit": git_commit(), "reslab.device": device}
    tags.update({f"reslab.version.{k}": v for k, v in versions().items()})
    return tags


# --- reading back (sweeps resume from it, reports are built from it) ----------------------------------------------


def search_runs(uri: str, experiment: str, filter_string: str = "", max_results: int = 50_000) -> list:
    """Runs of `experiment` matching an MLflow filter (all pages)."""
    c = client(uri)
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = c.search_runs(
            [found.experiment_id], filter_string=filter_string, max_results=min(max_results, 1000), page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token or len(runs) >= max_results:
            return runs


def get_run(uri: str, run_id: str):
    return client(uri).get_run(run_id)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def download_artifact(uri: str, run_id: str, path: str, dst: str | Path) -> Path:
    return Path(client(uri).download_artifacts(run_id, path, str(dst)))


def read_artifact_text(uri: str, run_id: str, path: str) -> str | None:
    """The text of one artifact, or None if the run has no such artifact."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return download_artifact(uri, run_id, path, tmp).read_text()
        except Exception:
            return None


def log_artifact_dir(uri: str, run_id: str, directory: str | Path, artifact_path: str) -> None:
    client(uri).log_artifacts(run_id, str(directory), artifact_path)


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    return [a.path for a in client(uri).list_artifacts(run_id, path)]
