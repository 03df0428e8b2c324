"""The two topologies every ported conformance spec runs on, set up once per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.registry.embedded import EtcdProcess
from tests.conformance.harness import Driver, MeshOfTwo, driver, start_mesh, stop_mesh


@pytest.fixture(scope="session", params=["same-network", "cross-network"])
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshOfTwo]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd binary not on PATH (run ./bootstrap.sh test)")
    root: Path = tmp_path_factory.mktemp(request.param)
    etcd = EtcdProcess(data_dir=root / "etcd")
    etcd.start()
    m = MeshOfTwo(request.param)
    try:
        start_mesh(m, etcd.endpoint, root)
        yield m
    finally:
        try:
            stop_mesh(m)
        finally:
            etcd.stop()


@pytest.fixture
def t(mesh: MeshOfTwo) -> Iterator[Driver]:
    """newTestDriver(): a fresh mcs-conformance-<n> namespace in both clusters, removed afterwards."""
    with driver(mesh) as d:
        yield d
