"""`run_one`: one cell of a depth sweep — one network, one dataset, one recipe, one MLflow run.

The sweep's objective calls this and nothing else (a thin objective). Everything a later reader needs to
trust the number is recorded with it: the resolved spec and recipe, the code version, the package versions, the
device, per-epoch curves, system metrics, gradient telemetry (its summary series as metrics, every per-block
value in the `telemetry.csv` artifact, written however the run ends so a failed run shows where gradients went),
and the signal at initialisation (`reslab.probe`: measured before the first step on a copy of the net with every
RNG state kept, so it changes nothing in the training; its per-block rows at step 0 of the same artifact, five
`probe/` summary metrics).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from reslab import tracking
from reslab.data.registry import DATASETS, load_dataset
from reslab.devices import resolve_device
from reslab.interrupts import termination
from reslab.models import NetSpec, build_net, summarize
from reslab.models.registry import output_units
from reslab.models.spec import spec_values
from reslab.tags import Tag
from reslab.train.config import DataConfig, TrackingConfig, TrainConfig

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from reslab.data.tensors import Splits
    from reslab.train.telemetry import GradientProbe

EpochCallback = Callable[[int, dict[str, float]], None]


class SetupError(ValueError):
    """The run cannot start as asked (no such device, a dataset option out of range, a strategy Lightning does not
    know, ...): raised before any MLflow run is created or any step is taken. The message says what is wrong."""


class StopRun(Exception):
    """Raised from an epoch callback to end a run early on purpose (a tuner's pruning): the run is marked KILLED
    with this message as the reason."""


class Superseded(Exception):
    """Raised by a run's `on_start` or `commit` callback when the work item the run belongs to was taken over by
    another worker (its lease was lost while this process was paused or cut off from the queue): the run ends
    KILLED, tagged `reslab.superseded`, and its result counts for nothing."""


@dataclass(frozen=True)
class FitPlan:
    """Everything the recorded part of a run needs, set up and checked by `run_one` before an MLflow run exists."""

    spec: NetSpec
    data: DataConfig
    train: TrainConfig
    tracking: TrackingConfig | None
    net: torch.nn.Module
    splits: Splits
    trainer: pl.Trainer
    probe: GradientProbe
    device: str
    t_start: float
    run_name: str | None = None
    parent_run_id: str | None = None
    extra_tags: dict[str, str] | None = None
    on_epoch: EpochCallback | None = None
    on_start: Callable[[str | None], None] | None = None
    commit: Callable[[RunResult], None] | None = None


@dataclass
class RunResult:
    run_id: str | None
    spec: NetSpec
    metrics: dict[str, float]  # the last epoch's
    history: list[dict[str, float]]
    params: int
    macs: int
    wall_s: float
    device: str
    telemetry: list[tuple[str, float, int]] = field(default_factory=list, repr=False)
    diverged: str | None = None  # why, when the training loss became NaN or infinite (the run still counts)

    def to_json(self) -> dict[str, Any]:
        """The object `reslab train --json` prints."""
        return {
            "run_id": self.run_id,
            "name": self.spec.name,
            **{k: self.metrics.get(k) for k in ("train_error", "test_error", "train_loss", "test_loss")},
            **{k: v for k, v in self.metrics.items() if k.startswith("val_") or k.endswith("_bpc")},
            "epochs": len(self.history),
            "params": self.params,
            "macs": self.macs,
            "wall_s": round(self.wall_s, 3),
            "device": self.device,
            "diverged": self.diverged,
        }


def is_rank_zero() -> bool:
    """False in the processes a multi-device strategy (DDP) starts besides rank 0: they train, rank 0 records."""
    return all(int(os.environ.get(var) or 0) == 0 for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def describe_device(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def quiet_lightning() -> None:
    """Lightning's start-up chatter (GPU available..., seed set...) says nothing a reslab user needs."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")


def resolved_config(spec: NetSpec, data: DataConfig, train: TrainConfig) -> dict[str, Any]:
    """Spec, data and recipe with every default filled in (dataset options too), as logged and as YAML."""
    data_dump = data.model_dump()
    data_dump["options"] = {**DATASETS[data.name].options(), **data.options}
    return json.loads(json.dumps({"net": asdict(spec), "data": data_dump, "train": train.model_dump()}))


def run_tags(spec: NetSpec, seed: int, dataset: str) -> dict[str, Any]:
    """The tags every training run carries, so MLflow searches and reports can slice runs by them: every `NetSpec`
    field (`reslab.models.spec.spec_values`), the seed and the dataset."""
    return {**spec_values(spec), "seed": seed, "dataset": dataset}


def execution_tags(train: TrainConfig, device: str, net: torch.nn.Module) -> dict[str, str]:
    """How the run's step executes on `device` (compile mode, memory format) and the numerics settings of the
    backend (cuDNN autotuning and determinism, TF32): on a GPU these decide whether a rerun agrees to the bit. Read
    after the trainer is built, which sets cuDNN's autotuning."""
    from reslab.devices import compile_mode
    from reslab.train.fast import backend_settings, uses_channels_last

    return {
        Tag.COMPILE: compile_mode(train.compile, device) or "off",
        Tag.CHANNELS_LAST: str(uses_channels_last(train.channels_last, device, net)),
        **{Tag.BACKEND_PREFIX + k: v for k, v in backend_settings().items()},
    }


def flat_params(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, values in config.items():
        for key, value in values.items():
            if isinstance(value, dict) and key == "options":
                out.update({f"{section}.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = value
    return out


def run_one(
    spec: NetSpec,
    data: DataConfig,
    train: TrainConfig,
    tracking_cfg: TrackingConfig | None = None,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    on_epoch: EpochCallback | None = None,
    on_start: Callable[[str | None], None] | None = None,
    commit: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """Train `spec` on `data` with `train`, recorded in MLflow as `tracking_cfg` says (None: not recorded). A
    failure marks the run FAILED (reason in tag `reslab.failure`), an interrupt KILLED, and is raised again.

    A loss that becomes NaN or infinite ends training early but is a result (He et al.'s deep plain nets do this
    at high learning rates): the run is FINISHED and tagged `reslab.diverged`. `commit` is called with the result
    once every artifact is written and before the run is marked FINISHED: a sweep records the item's result there
    (its commit point) and raises `Superseded` if the queue refuses it, so no run looks finished whose result
    the queue does not hold."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from reslab.train.telemetry import GradientProbe
    from reslab.train.trainer import make_trainer

    t_start = time.perf_counter()
    quiet_lightning()
    threads_before = torch.get_num_threads()
    # Subnormal floats make x86 CPUs take a slow path on every operation that meets them: a deep net whose signal
    # collapses (a plain 24-block transformer stuck at the unigram loss) trained 6x slower per step (180 s against
    # 30 s per 100 steps, one thread), for a result that agreed to the printed digit. They are below float32's normal
    # range (1.2e-38), far under any value that decides training, so CPU runs flush them to zero, as GPU kernels
    # built for speed do.
    torch.set_flush_denormal(True)
    try:
        # Everything that can be wrong with the request fails here, before an MLflow run exists or a step is taken.
        try:
            device = resolve_device(train.device)
            if train.threads:
                torch.set_num_threads(train.threads)
            pl.seed_everything(train.seed, workers=False, verbose=False)  # before the net is built: same init
            splits = load_dataset(data.name, data.options, data.data_dir)
            net = build_net(spec, splits.input_shape, output_units(spec, splits.num_classes))
            probe = GradientProbe(train.telemetry_every)
            trainer = make_trainer(train, device, callbacks=[probe])
        except (ValueError, RuntimeError, MisconfigurationException) as exc:
            raise SetupError(f"cannot set up {spec.name} on {data.name}: {exc}") from exc
        plan = FitPlan(
            spec, data, train, tracking_cfg, net, splits, trainer, probe, device, t_start, run_name=run_name,
            parent_run_id=parent_run_id, extra_tags=extra_tags, on_epoch=on_epoch, on_start=on_start, commit=commit,
        )  # fmt: skip
        return _fit(plan)
    finally:
        torch.set_num_threads(threads_before)  # a run's thread count must not leak into the next one in the process
        torch.set_flush_denormal(False)  # torch's default, for whatever the process does next


def _fit(plan: FitPlan) -> RunResult:
    """The recorded part of `run_one`: the MLflow run, the fit, the final artifacts, the run's terminal status."""
    from reslab.data.datamodule import TensorDataModule
    from reslab.train.module import ResLabModule
    from reslab.train.telemetry import ARTIFACT as TELEMETRY_ARTIFACT
    from reslab.train.telemetry import telemetry_csv

    spec, data, train, tracking_cfg, probe = plan.spec, plan.data, plan.train, plan.tracking, plan.probe
    summary = summarize(plan.net, plan.splits.input_shape)
    dm = TensorDataModule(
        plan.splits, train.batch_size, eval_batch_size=train.eval_batch_size, seed=train.seed,
        device="cuda" if plan.device == "cuda" else plan.device, drop_last=train.drop_last,
    )  # fmt: skip
    config = resolved_config(spec, data, train)
    device_desc = describe_device(plan.device)

    record = tracking.NO_RUN
    if tracking_cfg is not None and is_rank_zero():  # one MLflow run per training, however many processes
        store = tracking.store(tracking.resolve_uri(tracking_cfg.uri))
        store.prepare(tracking_cfg.experiment)
        tags = {**run_tags(spec, train.seed, data.name), **tracking.provenance_tags(device_desc),
                **execution_tags(train, plan.device, plan.net), **(plan.extra_tags or {})}  # fmt: skip
        run_id = store.start_run(
            tracking_cfg.experiment, plan.run_name or f"{spec.name}-s{train.seed}", tags, flat_params(config),
            plan.parent_run_id,
        )  # fmt: skip
        interval = tracking_cfg.system_metrics_interval_s if tracking_cfg.system_metrics else None
        record = tracking.RunRecorder(store, run_id, interval)
    committed = telemetry_written = False
    at_init: list[tuple[str, float, int]] = []  # the probe at initialisation's telemetry rows (step 0)

    def keep_telemetry() -> None:
        """On the way out of a run that did not finish: the telemetry recorded so far, the steps of the epoch cut
        short included, as the run's telemetry.csv. Never raises: the error that ended the run is the one to see."""
        if telemetry_written:
            return
        try:
            probe.flush(log=False)  # the store may be what failed: one artifact write is all that is tried
            if at_init or probe.history:
                record.log_text(telemetry_csv([*at_init, *probe.history]), TELEMETRY_ARTIFACT)
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
            print(f"run {record.run_id}: {TELEMETRY_ARTIFACT} not written: {why}", file=sys.stderr)

    try:  # from here on the run ends FINISHED, FAILED or KILLED, whatever happens
        # what identifies the data beyond its options (a text's SHA-256 and size: the pydoc topics differ between
        # Python versions), beside the options' own `data.*` params
        details = {f"data.{k}": v for k, v in plan.splits.details.items()}
        record.log_params({"net.params": summary.params, "net.macs": summary.macs, **details})
        record.log_text(_yaml(config), "config.yaml")
        record.log_text(summary.table(spec.name), "model_summary.txt")
        record.attach(plan.trainer)
        probe.sink = record.log_metrics
        if plan.on_start is not None and is_rank_zero():
            plan.on_start(record.run_id)
        if train.probe and is_rank_zero():  # step 0, before Lightning touches the net
            from reslab.probe.measure import probe_at_init

            measured = probe_at_init(plan.net, plan.splits, train.batch_size, train.seed, plan.device)
            at_init = measured.telemetry_rows(step=0)
            record.log_metrics(measured.summary_rows(step=0))
        module = ResLabModule(plan.net, train, dm.eval_names, on_epoch=plan.on_epoch)
        with record.system_metrics():
            plan.trainer.fit(module, datamodule=dm)
        if not module.history:
            raise RuntimeError("training ran no epoch")
        if module.compile_fallback:
            record.set_tags({Tag.COMPILE: "off", Tag.COMPILE_FALLBACK: module.compile_fallback})
        final = {k: v for k, v in module.history[-1].items() if k != "epoch"}
        result = RunResult(
            run_id=record.run_id, spec=spec, metrics=final, history=module.history, params=summary.params,
            macs=summary.macs, wall_s=time.perf_counter() - plan.t_start, device=device_desc,
            telemetry=[*at_init, *probe.history], diverged=module.diverged,
        )  # fmt: skip
        if result.diverged:
            record.set_tags({Tag.DIVERGED: result.diverged})
        record.log_json({**result.to_json(), "metrics": final}, "final_metrics.json")
        if result.telemetry:  # every per-block value, in one file: reports read it in one call
            record.log_text(telemetry_csv(result.telemetry), TELEMETRY_ARTIFACT)
        telemetry_written = True
        if plan.commit is not None and is_rank_zero():
            plan.commit(result)
        committed = True  # the result is recorded: from here on the run can only end FINISHED
        record.finish("FINISHED")
        return result
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns Ctrl-C into SystemExit(1). A second Ctrl-C (an impatient user, or a coordinator
        # interrupting its workers again) must not cut the run's bookkeeping short: SIGINT waits until the run is
        # marked KILLED (FINISHED if its result was committed), then its default handler is back and the interrupt
        # goes on up. So does a second SIGTERM (a scheduler signals every process of a job, and the agent passes its
        # own on): after a SIGTERM this process is on its way out, and it stays ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        terminated = termination(exc)
        term_handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            keep_telemetry()
            record.finish(*(("FINISHED",) if committed else ("KILLED", str(terminated or "interrupted"))))
        except Exception as err:  # e.g. sqlite still locked by the write the interrupt cut short: the interrupt
            # must go on up (its worker records the cell as interrupted); the coordinator settles the run later
            print(f"run {record.run_id} left for the coordinator to end: {type(err).__name__}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if terminated is None:
                signal.signal(signal.SIGTERM, term_handler)
        if terminated is not None:
            raise terminated from exc
        raise KeyboardInterrupt from exc
    except Superseded as exc:
        keep_telemetry()
        record.set_tags({Tag.SUPERSEDED: str(exc)})
        record.finish("KILLED", str(exc))
        raise
    except StopRun as exc:
        keep_telemetry()
        record.finish("KILLED", str(exc))
        raise
    except BaseException as exc:
        if not committed:  # committed: a coordinator finishes the run (settle_orphans)
            keep_telemetry()
            record.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)
