"""Per-cell tuning: a TPE trial over the learning rate (and weight decay) for each slot of a cell's budget.

Depth comparisons are only fair at each depth's best learning rate (plain nets without normalisation train at one
lr and diverge at the next), so a sweep with a `tune` section gives every cell `trials_per_cell` runs, sampled by
Optuna's TPE (Bergstra et al., "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011) in a study of the
cell's own beside the queue, and optionally pruned by the median of the cell's earlier trials at the same epoch.
A sweep without one gets `NoTuner`: the recipe as it is, nothing sampled, never pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from reslab.tags import Tag

if TYPE_CHECKING:
    from reslab.sweep.config import SweepConfig
    from reslab.sweep.grid import Cell
    from reslab.sweep.queue import CellQueue
    from reslab.train.config import TrainConfig


class NoTuner:
    """A sweep that does not tune: the recipe's own learning rate, the final train error as the result."""

    metric = "train_error"
    last_value = float("nan")

    def suggest(self, train: TrainConfig) -> TrainConfig:
        return train

    def tags(self) -> dict[str, Any]:
        return {}

    def attrs(self) -> dict[str, Any]:
        return {}

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def done(self, value: float) -> None:
        pass

    def pruned(self) -> float:
        """The item's result when its run was stopped early: the last value the tuner saw."""
        return self.last_value

    def abandon(self) -> None:
        pass


class Tuner(NoTuner):
    """One slot of a cell's tuning budget: a TPE trial in the cell's own study, pruned by the median of the cell's
    earlier trials."""

    def __init__(self, config: SweepConfig, queue: CellQueue, cell: Cell, slot: int) -> None:
        tune = config.tune
        assert tune is not None
        self.tune = tune
        self.metric = tune.metric
        self.study = queue.tuning_study(cell)
        self.study.sampler = optuna.samplers.TPESampler(seed=10_007 * cell.seed + slot, n_startup_trials=3)
        if tune.pruner == "median":
            self.study.pruner = optuna.pruners.MedianPruner(
                n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
            )
        else:
            self.study.pruner = optuna.pruners.NopPruner()
        self.trial = self.study.ask()
        self.lr = self.trial.suggest_float("lr", *tune.lr, log=True)
        self.weight_decay = (
            self.trial.suggest_float("weight_decay", *tune.weight_decay, log=True) if tune.weight_decay else None
        )
        self.last_value = float("nan")

    def suggest(self, train: TrainConfig) -> TrainConfig:
        update: dict[str, float] = {"lr": self.lr}
        if self.weight_decay is not None:
            update["weight_decay"] = self.weight_decay
        return train.model_copy(update=update)

    def tags(self) -> dict[str, Any]:
        return {Tag.TUNE_TRIAL: self.trial.number, Tag.TUNE_METRIC: self.tune.metric}

    def attrs(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "tune_trial": self.trial.number}

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from reslab.train.run import StopRun

        value = metrics[self.tune.metric]
        self.last_value = value
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise StopRun(f"pruned after epoch {epoch}: {self.tune.metric} {value:.4f} worse than the median")

    def done(self, value: float) -> None:
        self.study.tell(self.trial, value)

    def pruned(self) -> float:
        self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        return self.last_value

    def abandon(self) -> None:
        self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)


def tuner_for(config: SweepConfig, queue: CellQueue, cell: Cell, slot: int) -> NoTuner:
    """The tuner of one item: a TPE trial when the sweep has a `tune` section, else `NoTuner`."""
    return Tuner(config, queue, cell, slot) if config.tune is not None else NoTuner()
