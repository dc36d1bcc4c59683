"""`reslab ui`'s MLflow process: the store through the environment, MLflow's job consumers off unless asked for."""

from __future__ import annotations

import pytest

from reslab.cli import ui_environment


def test_the_ui_gets_the_store_and_no_job_consumers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    env = ui_environment("sqlite:///x/mlflow.db")
    assert env["MLFLOW_TRACKING_URI"] == env["MLFLOW_BACKEND_STORE_URI"] == "sqlite:///x/mlflow.db"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_a_user_who_enables_mlflow_jobs_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert ui_environment("sqlite:///m.db")["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
