"""Under pytest-xdist (`nox -s tests` runs two workers), each worker is pinned to its own share of the cores, as if
it were a machine of its own: the sweeps it starts size their workers and threads by that share
(`reslab.devices.usable_cores`), and no torch kernel of one worker shares a core with the other's. Two-thread
OpenMP kernels whose threads lose their core to another process stall at every barrier, which is what two
unpinned workers on two cores did. `--dist loadfile` keeps each file on one worker:
its module fixtures are built once, and tests that watch the machine's processes (the secrets drills) never run
beside each other."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count:
        return
    share = set(cores[int(worker[2:]) % count :: count])
    os.sched_setaffinity(0, share)
    import torch

    torch.set_num_threads(len(share))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The drills first, then the files with slow tests, then the rest, each file's tests in their own order: a
    worker that takes a long file last would keep the run waiting on it alone."""
    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("drills") else 1 if item.get_closest_marker("slow") else 2

    first = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        first[path] = min(first.get(path, 2), rank(item))
    items.sort(key=lambda item: first[item.nodeid.split("::")[0]])
