"""The sweep's refusals of what this machine cannot run (`reslab.limits`), said before a queue, an MLflow run or a
file exists: too many workers for the cores or GPUs, and cells that cannot fit in memory, one line per network (the
seeds and learning rates of a network share it)."""

from __future__ import annotations

from reslab.limits import memory_problem, training_device, workers_problem
from reslab.sweep.config import ConfigError, SweepConfig
from reslab.sweep.grid import expand


def check_sweep(config: SweepConfig) -> list[str]:
    """Every reason this machine cannot run `config`."""
    device = training_device(config.train.device)
    problems = [p for p in [workers_problem(config.sweep.workers, device)] if p]
    for spec in dict.fromkeys(cell.spec() for cell in expand(config.grid)):
        problem = memory_problem(f"grid cell {spec.name}", spec, config.dataset, config.train, device)
        if problem:
            problems.append(problem)
    return problems


def refuse_impossible(config: SweepConfig, source: str) -> None:
    """Raise the ConfigError of every reason `check_sweep` finds (`source` names the command in it)."""
    problems = check_sweep(config)
    if problems:
        raise ConfigError(source, problems)
