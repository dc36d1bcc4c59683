"""Shared set-up of the throughput benchmarks: the device (CUDA when present), the depths, the variants.

Run with `nox -s bench` (writes reports/bench/<timestamp>.json and its figures) or `pytest benchmarks`;
`--benchmark-disable` runs each once, which is what CI does so none can rot.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reslab")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when available)")
    group.addoption("--bench-rounds", type=int, default=None, help="timed rounds per benchmark (default 5)")


def cuda() -> bool:
    return torch.cuda.is_available()


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--bench-device") or ("cuda" if cuda() else "cpu")


@pytest.fixture(scope="session")
def rounds(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--bench-rounds") or 5


@pytest.fixture
def smoke(request: pytest.FixtureRequest) -> bool:
    """True under --benchmark-disable: run once, measure nothing heavy."""
    return bool(request.config.getoption("benchmark_disable"))
