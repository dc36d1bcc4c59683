"""Every MLflow call in reslab lives here: one place that states the tracking contract.

A `Store` is one tracking URI: every read and write of runs, metrics and artifacts is one of its methods.
`store(uri)` returns the shared one for a URI (one MlflowClient per URI per process). The tag names are constants
in `reslab.tags`; the sweep's parent run (find, create, supersede, reopen; its children) is built on a Store in
`reslab.sweep.parent`.

The contract (what the sweep, the report and users' own queries may rely on):
- store: `--tracking-uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db` (MLflow 3's own default,
  so a bare `mlflow ui` in that folder shows the runs);
- one run per training; tags `family block depth width shortcut seed dataset`, `reslab.git_commit`,
  `reslab.device`, `reslab.version.<package>`; params `net.*`, `train.*`, `data.*` (a text's `data.sha256`,
  `data.chars`, `data.vocab_size`, `data.train_chars`, `data.test_chars` and `data.source` among them);
- per-epoch metrics at step = epoch (1-based): train_error, train_loss, val_error, val_loss, test_error, test_loss,
  lr, epoch_time_s, train_images_per_s, and for sequence models (the `text` dataset) train_bpc and test_bpc, the
  losses in bits per character; gradient telemetry summaries at step = training iteration:
  `telemetry/grad_out_first`, `telemetry/grad_out_middle`, `telemetry/grad_out_last`,
  `telemetry/shortcut_share_last`, `telemetry/grad_weight_first`, `telemetry/grad_weight_last`,
  `telemetry/gate_mean` (see `reslab.train.telemetry`); MLflow system metrics. The number of metric keys does not
  grow with depth;
- artifacts `config.yaml`, `model_summary.txt`, `final_metrics.json` and `telemetry.csv` (`step,key,value`: every
  per-block and per-layer value, `grad_branch/bNNN`, `grad_shortcut/bNNN`, `grad_out/bNNN`, `gate/bNNN`,
  `grad_weight/LLL.<parameter>`, also for runs that failed or were stopped; runs recorded before it existed have
  these as metrics);
- sweeps: a parent run tagged `reslab.sweep=<name>` and children tagged `mlflow.parentRunId`, `reslab.cell`.

Each MLflow write is a database transaction, and one `log_batch` of many metrics costs about what a few single
`log_metric` calls do, so everything is logged per epoch or in batches; two processes creating one fresh sqlite DB
corrupt it, so `Store.prepare` creates it once, under a file lock, before workers start.
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

from reslab.redact import PASSWORD_ENV, USERNAME_ENV, redact, redact_uri, remember, split_credentials
from reslab.tags import Tag

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
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute, so every worker agrees).

    Credentials in an http(s) URI (`http://user:pw@host:5000`) move to MLflow's own `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD` (inherited by the workers) and the URI loses them: MLflow's REST client would send
    the userinfo to name resolution, and every message naming the server would show the password."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    remember(uri)
    bare, user, password = split_credentials(uri)
    if user is not None:
        os.environ[USERNAME_ENV] = user
    if password is not None:
        os.environ[PASSWORD_ENV] = password
        remember()  # the decoded password, now in the environment, is masked as a bare word too
    return bare


@contextlib.contextmanager
def _creating(uri: str) -> Iterator[None]:
    """For a sqlite store, an exclusive lock beside the file while it may be created: two sweeps started at once
    on a fresh store would both run its migrations and corrupt it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_server(uri: str, timeout: float = 30.0) -> None:
    """An http(s) tracking URI must answer /health and take the credentials of MLFLOW_TRACKING_USERNAME/PASSWORD
    (or of its userinfo): otherwise one clear TrackingError, the password never in it (other stores: nothing)."""
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.error
    import urllib.request

    uri = resolve_uri(uri)
    headers = {}
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if user is not None and password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    # /health answers without authentication; an API call shows whether the server takes these credentials.
    for path in ("health", "api/2.0/mlflow/experiments/search?max_results=1"):
        request = urllib.request.Request(f"{uri.rstrip('/')}/{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                given = "refused the credentials" if headers else "needs credentials"
                raise TrackingError(
                    f"MLflow tracking server {uri} {given} (HTTP {exc.code}): set {USERNAME_ENV} and {PASSWORD_ENV} "
                    f"(or http://user:password@host in --tracking-uri) to a user of the server"
                ) from None
            if path == "health":
                raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = redact(str(getattr(exc, "reason", exc)))
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it (mlflow server --host ... "
                f"--port ...) or pass another --tracking-uri"
            ) from None


@functools.lru_cache(maxsize=8)
def store(uri: str) -> Store:
    """The Store of `uri`, shared by every caller in this process (one MlflowClient, one connection pool)."""
    return Store(uri)


class Store:
    """One MLflow tracking store: runs, params, tags, metrics and artifacts, by run id. MLflow itself is imported on
    first use, so tools that only resolve a URI (a dry run, the CLI's checks) do not pay for it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @functools.cached_property
    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    # --- the store and its experiments ----------------------------------------------------------------------------

    def prepare(self, experiment: str = DEFAULT_EXPERIMENT, timeout: float = 30.0) -> str:
        """Create (or open) the store and the experiment; return the experiment id. Call once before workers start.
        An unreachable server is one clear error here, before any training."""
        check_server(self.uri, timeout)
        try:
            with _creating(self.uri):
                return self.experiment_id(experiment)
        except Exception as exc:  # MLflow raises many kinds; the user needs the URI and the cause
            raise TrackingError(f"cannot use tracking store {redact_uri(self.uri)}: {redact(str(exc))}") from exc

    def experiment_id(self, name: str) -> str:
        """Id of experiment `name`, created if missing (race-safe: a concurrent creator wins, we read its id)."""
        c = self._client
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

    def experiment_names(self) -> list[str]:
        """The store's active experiments, newest first."""
        experiments = sorted(self._client.search_experiments(), key=lambda e: e.creation_time or 0, reverse=True)
        return [e.name for e in experiments]

    # --- writing a run --------------------------------------------------------------------------------------------

    def start_run(
        self,
        experiment: str,
        run_name: str,
        tags: dict[str, Any],
        params: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Create a RUNNING run with its tags and params in two calls; return its id."""
        all_tags = {k: redact(str(v)) for k, v in tags.items()}
        if parent_run_id:
            all_tags[Tag.PARENT_RUN] = parent_run_id
        run = self._client.create_run(self.experiment_id(experiment), tags=all_tags, run_name=run_name)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(_param_value(v))) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
        """Log (key, value, step) rows in batches of 1000 (one call each)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
        for i in range(0, len(metrics), _BATCH):
            self._client.log_batch(run_id, metrics=metrics[i : i + _BATCH])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._client.log_text(run_id, redact(text), artifact_file)

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file)

    def log_files(self, run_id: str, root: str | Path, files: Iterable[str | Path], artifact_path: str) -> None:
        """Upload exactly `files` (under `root`, keeping their relative folders) to `artifact_path`: never the rest
        of a folder they share with other things (a report written into `.` must not upload the store itself)."""
        root = Path(root).resolve()
        for file in files:
            file = Path(file).resolve()
            folder = file.parent.relative_to(root).as_posix()
            destination = artifact_path if folder == "." else f"{artifact_path}/{folder}"
            self._client.log_artifact(run_id, str(file), destination)

    def finish_run(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        """Mark a run FINISHED, FAILED or KILLED; a failure's reason goes to tag `reslab.failure`."""
        if reason:
            self.set_tags(run_id, {Tag.FAILURE: redact(reason)[:5000]})
        self._client.set_terminated(run_id, status)

    def reopen_run(self, run_id: str) -> None:
        """Mark an ended run RUNNING again (a resumed sweep's parent)."""
        self._client.update_run(run_id, status="RUNNING")

    def delete_run(self, run_id: str) -> None:
        self._client.delete_run(run_id)

    def lightning_logger(self, run_id: str):
        """Lightning's MLFlowLogger attached to an existing run (tracking_uri always passed: its default is a file
        store that MLflow 3 refuses). It never ends the run: Lightning's `finalize` marks it FINISHED as soon as `fit`
        returns, before the final metrics and telemetry are written, and a crash in between would leave a FINISHED
        run that a resumed sweep counts as done. `finish_run` ends it once everything is recorded."""
        from lightning.pytorch.loggers import MLFlowLogger

        class _RunKeepingLogger(MLFlowLogger):
            def finalize(self, status: str = "success") -> None:
                """Leave the run's status to `finish_run`."""

        return _RunKeepingLogger(tracking_uri=self.uri, run_id=run_id)

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, interval_s: float = 1.0, samples_per_log: int = 1) -> Iterator[None]:
        """MLflow system metrics (CPU, memory, disk, network; GPU when nvidia-ml-py is present) for the block's
        duration. A sample still being taken when the block ends is dropped, so runs shorter than `interval_s` log
        none."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval_s, samples_before_logging=samples_per_log, tracking_uri=self.uri
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    # --- reading back (sweeps resume from it, reports are built from it) -------------------------------------------

    def search_runs(self, experiment: str, filter_string: str = "", max_results: int = 50_000) -> list:
        """Runs of `experiment` matching an MLflow filter (all pages)."""
        c = self._client
        found = c.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs, token = [], None
        while True:
            page = c.search_runs(
                [found.experiment_id], filter_string=filter_string, max_results=min(max_results, 1000),
                page_token=token,
            )  # fmt: skip
            runs.extend(page)
            token = page.token
            if not token or len(runs) >= max_results:
                return runs

    def get_run(self, run_id: str):
        return self._client.get_run(run_id)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, in step order."""
        return sorted((m.step, m.value) for m in self._client.get_metric_history(run_id, key))

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(self._client.download_artifacts(run_id, path, str(dst)))

    def read_artifact_text(self, run_id: str, path: str) -> str | None:
        """The text of one artifact, or None if the run has no such artifact."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            try:
                return self.download_artifact(run_id, path, tmp).read_text()
            except Exception:
                return None

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self._client.list_artifacts(run_id, path)]


class RunRecorder:
    """The writes of one training run, bound to its MLflow run, so the training code states what it records once
    instead of asking at every write whether there is a run (`NO_RUN`, below, records nothing)."""

    def __init__(self, store: Store, run_id: str, system_metrics_s: float | None = None) -> None:
        self.store = store
        self.run_id: str | None = run_id
        self.system_metrics_s = system_metrics_s  # None: no system metrics

    def log_params(self, params: dict[str, Any]) -> None:
        self.store.log_params(self.run_id, params)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.store.set_tags(self.run_id, tags)

    def log_metrics(self, rows: Iterable[tuple[str, float, int]]) -> None:
        self.store.log_metrics(self.run_id, rows)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.store.log_text(self.run_id, text, artifact_file)

    def log_json(self, data: Any, artifact_file: str) -> None:
        self.store.log_json(self.run_id, data, artifact_file)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        self.store.finish_run(self.run_id, status, reason)

    def attach(self, trainer: Any) -> None:
        """Lightning's per-epoch metrics go to this run (see `Store.lightning_logger`)."""
        trainer.logger = self.store.lightning_logger(self.run_id)

    def system_metrics(self) -> contextlib.AbstractContextManager[None]:
        """MLflow system metrics for the block's duration, when the run asked for them."""
        if self.system_metrics_s is None:
            return contextlib.nullcontext()
        return self.store.system_metrics(self.run_id, self.system_metrics_s)


class _NoRun(RunRecorder):
    """A training that is not recorded (no tracking store, or a DDP rank other than 0): every write is dropped."""

    def __init__(self) -> None:
        self.run_id = None
        self.system_metrics_s = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_metrics(self, rows: Iterable[tuple[str, float, int]]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_json(self, data: Any, artifact_file: str) -> None:
        pass

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        pass

    def attach(self, trainer: Any) -> None:
        pass


NO_RUN: RunRecorder = _NoRun()


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


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
    tags = {Tag.GIT_COMMIT: git_commit(), Tag.DEVICE: device}
    tags.update({f"{Tag.VERSION_PREFIX}{k}": v for k, v in versions().items()})
    return tags
