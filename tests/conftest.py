"""Shared fixtures: a real etcd per test, and hygiene checks for leaked tasks."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from federation.registry.embedded import EtcdCluster, EtcdProcess

# The machines are shared and noisy: property tests check behaviour, never time (deadline off).
settings.register_profile("meshfed", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("meshfed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests need the etcd binary; netns tests need root."""
    no_etcd = shutil.which("etcd") is None
    not_root = os.geteuid() != 0
    for item in items:
        if no_etcd and {"etcd", "etcd_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.skip(reason="etcd binary not on PATH (run ./bootstrap.sh test)"))
        if not_root and item.get_closest_marker("netns"):
            item.add_marker(pytest.mark.skip(reason="network namespaces need root"))


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A real single-member etcd on a free loopback port, data in the test's temp dir."""
    server = EtcdProcess(data_dir=tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.resume()
        server.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster on free loopback ports, each member's data in the test's temp dir."""
    cluster = EtcdCluster(tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs `main()` in-process configures logging; the next test must not log to its closed capture."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks of its own running on the loop."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before
        if t is not asyncio.current_task() and not t.done() and not _is_library_task(t)
    ]
    for t in leaked:
        t.cancel()
    assert not leaked, f"test leaked tasks: {[t.get_name() for t in leaked]}"


def _is_library_task(task: asyncio.Task[object]) -> bool:
    # grpc's aio channel keeps internal tasks alive until the loop closes; they are not ours.
    coro = task.get_coro()
    module = getattr(getattr(coro, "cr_code", None), "co_filename", "")
    return "grpc" in module
