"""A sweep's parent run in MLflow: found or created by the coordinator, superseded when another queue takes the
sweep's name over, reopened on resume; and its child runs, one per training, which the report reads.

Built on `reslab.tracking.Store` alone and free of Optuna and torch, so `reslab report` can import it cheaply.
"""

from __future__ import annotations

from typing import Any

from reslab.tags import Tag
from reslab.tracking import Store


def sweep_filter(sweep: str) -> str:
    """The MLflow filter that finds a sweep's live parent run(s)."""
    return f"tags.`{Tag.SWEEP}` = '{sweep}' and tags.`{Tag.ROLE}` = 'sweep'"


def _oldest(runs: list) -> Any:
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def ensure_sweep_run(
    store: Store,
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
    if known_parent:
        try:
            run = store.get_run(known_parent)
        except Exception:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            return _reopen(store, run, config_yaml), []
    runs = store.search_runs(experiment, sweep_filter(sweep))
    stale = [r for r in runs if r.data.tags.get(Tag.SWEEP_ID, "") != sweep_id]
    for run in stale:
        store.set_tags(run.info.run_id, {Tag.ROLE: "superseded", Tag.SUPERSEDED_BY: sweep_id})
    ours = [r for r in runs if r not in stale]
    if not ours:
        sweep_tags = {Tag.SWEEP: sweep, Tag.ROLE: "sweep", Tag.SWEEP_ID: sweep_id, **tags}
        mine = store.start_run(experiment, f"sweep-{sweep}", sweep_tags)
        ours = [r for r in store.search_runs(experiment, sweep_filter(sweep))
                if r.data.tags.get(Tag.SWEEP_ID, "") == sweep_id]  # fmt: skip
        keeper = _oldest(ours)
        if keeper.info.run_id != mine:
            store.delete_run(mine)
    else:
        keeper = _oldest(ours)
    return _reopen(store, keeper, config_yaml), [r.info.run_id for r in stale]


def _reopen(store: Store, run: Any, config_yaml: str) -> str:
    """The parent, RUNNING again, with the config of this start as its `config.yaml`."""
    run_id = run.info.run_id
    if run.info.status != "RUNNING":
        store.reopen_run(run_id)
    store.log_text(run_id, config_yaml, "config.yaml")
    return run_id


def sweep_runs(store: Store, experiment: str, sweep: str) -> tuple[Any, list]:
    """(parent run or None, its child runs) of a sweep."""
    parents = store.search_runs(experiment, sweep_filter(sweep))
    if not parents:
        return None, []
    parent = _oldest(parents)
    children = store.search_runs(experiment, f"tags.`{Tag.PARENT_RUN}` = '{parent.info.run_id}'")
    return parent, children


def running_children(store: Store, experiment: str, parent_run_id: str) -> list:
    """The parent's child runs still marked RUNNING."""
    query = f"tags.`{Tag.PARENT_RUN}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    return store.search_runs(experiment, query)


def find_sweep(store: Store, sweep: str) -> tuple[str | None, Any]:
    """(experiment name, parent run) of a sweep in any experiment of the store, newest experiment first."""
    for name in store.experiment_names():
        runs = store.search_runs(name, sweep_filter(sweep), max_results=10)
        if runs:
            return name, _oldest(runs)
    return None, None
