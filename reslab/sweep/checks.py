"""The sweep's refusals of what this machine cannot run, said before a queue, an MLflow run or a file exists: paths
it cannot create or write (`reslab.paths`), too many workers for the cores or GPUs, and cells that cannot fit in
memory (`reslab.limits`), one line per network (the seeds and learning rates of a network share it)."""

from __future__ import annotations

import os
from pathlib import Path

from reslab.limits import memory_problem, training_device, workers_problem
from reslab.paths import folder_problem, name_max, store_problem
from reslab.sweep.config import ConfigError, SweepConfig


def check_sweep(config: SweepConfig) -> list[str]:
    """Every reason this machine cannot run `config` (whose grid's size `load_config` judged already): paths it
    cannot create or write (`reslab.paths`), too many workers for its cores or GPUs, cells that cannot fit in
    memory."""
    problems = sweep_problems(config)
    device = training_device(config.train.device)
    problems += [p for p in [workers_problem(config.sweep.workers, device)] if p]
    for spec in dict.fromkeys(cell.spec() for cell in config.cells()):
        problem = memory_problem(f"grid cell {spec.name}", spec, config.dataset, config.train, device)
        if problem:
            problems.append(problem)
    return problems


def refuse_impossible(config: SweepConfig, source: str) -> None:
    """Raise the ConfigError of every reason `check_sweep` finds (`source` names the command in it)."""
    problems = check_sweep(config)
    if problems:
        raise ConfigError(source, problems)


def sweep_problems(config: SweepConfig) -> list[str]:
    """Every path a sweep of `config` creates or writes, checked: the runs folder runs_dir/<name>/ (so a name too
    long for a folder is said here), the queue (a journal file or a SQLite database), the MLflow store, and the
    dataset cache it was told to use. One 'key value: problem' line each."""
    from reslab.redact import STORAGE_ENV, TRACKING_ENV
    from reslab.tracking import resolve_uri

    problems = []
    runs_dir, name = config.sweep.runs_dir, config.name
    problem = folder_problem(runs_dir)
    if problem:
        problems.append(f"sweep.runs_dir {runs_dir}: {problem}; choose a folder you can write to")
    elif len(os.fsencode(name)) > (limit := name_max(Path(os.path.abspath(runs_dir)))):
        problems.append(
            f"name {name[:24]}... is {len(os.fsencode(name))} characters, but it names the folder {runs_dir}/<name>/ "
            f"where at most {limit} are allowed: choose a shorter name"
        )
    else:
        problem = folder_problem(config.run_dir)
        if problem:
            problems.append(f"sweep.runs_dir {runs_dir}: {problem}; choose another runs_dir or name")
    storage = config.storage_url
    named = config.sweep.storage or os.environ.get(STORAGE_ENV)
    example = "optuna.db" if "://" in storage else "optuna.journal"
    problem = store_problem(storage, "file", example) if named or not problems else None  # default: in runs_dir
    if problem:
        origin = f"${STORAGE_ENV}" if named and not config.sweep.storage else "sweep.storage"
        problems.append(f"{origin} {storage}: {problem}")
    uri = resolve_uri(config.tracking.uri)
    problem = store_problem(uri)
    if problem:
        origin = "tracking.uri" if config.tracking.uri else f"${TRACKING_ENV}" if os.environ.get(TRACKING_ENV) else ""
        problems.append(f"{origin or 'the default tracking store'} {uri}: {problem}")
    if config.sweep.launcher == "slurm":  # agents on other nodes share both stores
        from reslab.sweep.slurm import storage_problem, tracking_problem

        problems += [p for p in (storage_problem(storage), tracking_problem(uri)) if p]
    if config.dataset.data_dir or os.environ.get("RESLAB_DATA_DIR"):
        from reslab.data.cache import resolve_data_dir

        folder = resolve_data_dir(config.dataset.data_dir)
        problem = folder_problem(folder, write=False)
        if problem:
            origin = "dataset.data_dir" if config.dataset.data_dir else "$RESLAB_DATA_DIR"
            problems.append(f"{origin} {folder}: {problem}")
    return problems
