"""The randomized fault drill (see tests/drills/chaos.py) on the journal queue with sqlite tracking, and on
PostgreSQL with `mlflow server`. `nox -s tests` runs one fault of each kind per backend; `nox -s chaos` the full
schedule (RESLAB_CHAOS_FAULTS, default 20 per backend, seeded by RESLAB_CHAOS_SEED). Figures go to
test-artifacts/chaos.jsonl."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.drills.chaos import BACKEND_KINDS, COMMON_KINDS, Backend, Drill, record, reference_metrics
from tests.drills.conftest import ROOT, PgServer, create_database

pytestmark = pytest.mark.drills

SEED = int(os.environ.get("RESLAB_CHAOS_SEED", "7"))


@pytest.fixture(scope="package")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return reference_metrics(tmp_path_factory.mktemp("chaos-reference"))


def _backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    if kind == "journal":
        return Backend("journal", f"sqlite:///{tmp_path / 'mlflow.db'}", lambda sweep: None)
    server: PgServer = request.getfixturevalue("pg_server")
    tracking = request.getfixturevalue("mlflow_server")
    storage = create_database(server.url, "chaosqueue")
    return Backend("postgres", tracking, lambda sweep: storage, server.restart)


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_every_cell_once_under_random_faults(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                                             reference: dict) -> None:  # fmt: skip
    kinds = COMMON_KINDS + BACKEND_KINDS[kind]
    n_faults = int(os.environ.get("RESLAB_CHAOS_FAULTS") or len(kinds))
    drill = Drill(tmp_path, _backend(kind, tmp_path, request), SEED, n_faults)
    figures = drill.run(reference)
    record(figures, ROOT)
    assert not (set(kinds) - set(figures.faults)), f"fault kinds never injected: {set(kinds) - set(figures.faults)}"
    assert sum(figures.faults.values()) >= n_faults
    assert (figures.duplicates, figures.lost) == (0, 0), figures.to_json()
    assert figures.inconsistent == [], figures.inconsistent
    assert figures.mismatched == [], figures.mismatched[:5]
