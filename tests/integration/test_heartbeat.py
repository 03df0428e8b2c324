"""Propagation lag against a real etcd: signed heartbeats on the site's lease, measured by a verifying reader.

Site east publishes (signed) and writes its heartbeat; a mirror that requires signatures reads it into the
lag meter. A heartbeat must not make a new mesh view (DNS, egress and the VIP allocator follow views), a
restarted publisher must neither rewrite nor delete it, a raw etcd writer cannot forge one, and the
site's series goes when the site does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from federation.core.heartbeat import Heartbeat, encode_heartbeat
from federation.core.keys import Keys
from federation.core.verification import Mode
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, Put
from federation.registry.heartbeat import HeartbeatWriter, LagMeter
from federation.registry.mirror import Mirror
from federation.registry.sealing import Seal
from federation.registry.snapshot import RawListing
from federation.runtime.values import Value
from tests.integration.agentproc import AgentProcess, web_export, write_config
from tests.pkihelp import Mesh, Signers
from tests.util import HandPublisher, eventually, export

KEYS = Keys()
BEAT = KEYS.heartbeat("east")


@dataclass
class Running:
    east: HandPublisher
    writer: HeartbeatWriter
    mirror: Mirror
    metrics: CollectorRegistry
    lag: LagMeter
    tasks: dict[str, asyncio.Task[None]]
    mesh: Mesh
    signers: Signers

    def count(self, site: str = "east") -> float:
        return self.metrics.get_sample_value("meshfed_registry_lag_seconds_count", {"site": site}) or 0.0


def seal_of(signers: Signers, name: str) -> Value[Seal | None]:
    signer = signers.signer(name)
    return Value(Seal(signer.kid, (signer.cert_pem(),), signer.sign), name="seal")


def east_publisher(etcd: EtcdProcess, mesh: Mesh, signers: Signers, tmp: Path) -> HandPublisher:
    return HandPublisher(EtcdClient([etcd.endpoint]), KEYS, mesh.site("east", "net-a"),
                         [export("east", addresses=("10.0.0.1",))], ttl=2, sealer=seal_of(signers, "east"),
                         lease_file=tmp / "lease")


@pytest.fixture
async def running(etcd: EtcdProcess, tmp_path: Path) -> AsyncIterator[Running]:
    mesh = Mesh()
    signers = Signers(mesh)
    east = east_publisher(etcd, mesh, signers, tmp_path)
    writer = HeartbeatWriter(EtcdClient([etcd.endpoint]), KEYS, "east", 0.2,
                             lease=lambda: east.lease if east.published.is_set() else 0, sealer=seal_of(signers, "east"))
    metrics = CollectorRegistry()
    lag = LagMeter(metrics)
    verifier = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), Mode.REQUIRE)
    mirror = Mirror(EtcdClient([etcd.endpoint]), KEYS, trust=verifier, lag=lag.take, raw=RawListing(1 << 24))
    tasks = {n: asyncio.create_task(w, name=n) for n, w in
             (("east", east.run()), ("heartbeat", writer.run()), ("mirror", mirror.run()))}
    r = Running(east, writer, mirror, metrics, lag, tasks, mesh, signers)
    try:
        await eventually(lambda: r.count() >= 2, what="east's heartbeats measured")
        yield r
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def stored(etcd: EtcdProcess, key: str) -> tuple[bytes, int] | None:
    async with EtcdClient([etcd.endpoint]) as client:
        kv = await client.get(key)
    return (kv.value, kv.lease) if kv is not None else None


async def test_heartbeats_are_signed_on_the_lease_and_measured_without_a_new_view(
        running: Running, etcd: EtcdProcess) -> None:
    r = running
    got = await stored(etcd, BEAT)
    assert got is not None
    value, lease = got
    assert b'"sig":{"alg":"ES256"' in value
    assert b'"kind":"Heartbeat"' in value
    assert lease == r.east.lease != 0  # it goes when the site's lease goes
    sample = r.lag.last["east"]
    assert 0 <= sample.lag < 5
    assert sample.interval == 0.2
    assert not r.mirror.catalog.rejected
    view, version = r.mirror.mesh.get(), r.mirror.mesh.version
    raw = r.mirror._raw
    assert raw is not None
    saved = raw.changed.version
    seen = r.count()
    await eventually(lambda: r.count() >= seen + 5, what="five more heartbeats")
    # Five registry writes arrived and were measured, and what DNS, the egress and the VIP allocator follow
    # did not move: no new view, not even an equal one.
    assert r.mirror.mesh.version == version
    assert r.mirror.mesh.get() is view
    assert raw.changed.version == saved  # nor does the registry snapshot get rewritten for them
    buckets = r.metrics.get_sample_value("meshfed_registry_lag_seconds_bucket", {"site": "east", "le": "+Inf"})
    assert buckets == r.count()


async def test_a_restarted_publisher_neither_rewrites_nor_deletes_the_heartbeat(
        running: Running, etcd: EtcdProcess, tmp_path: Path) -> None:
    r = running
    r.tasks["east"].cancel()
    await asyncio.gather(r.tasks["east"], return_exceptions=True)
    again = east_publisher(etcd, r.mesh, r.signers, tmp_path)  # takes over the same lease from its file
    r.tasks["east"] = asyncio.create_task(again.run(), name="east-again")
    await eventually(again.published.is_set, what="the restarted publisher")
    assert again.writes == 0  # nothing rewritten, and the heartbeat beside the record not deleted
    assert await stored(etcd, BEAT) is not None
    assert "east" in r.mirror.mesh.get().sites


async def test_a_forged_heartbeat_is_refused_and_not_measured(running: Running, etcd: EtcdProcess) -> None:
    r = running
    r.tasks["heartbeat"].cancel()  # only the forger writes from here on
    await asyncio.gather(r.tasks["heartbeat"], return_exceptions=True)
    async with EtcdClient([etcd.endpoint]) as client:
        await client.commit([Put(BEAT, encode_heartbeat(Heartbeat("east", 1.0, 30.0)))])
    await eventually(lambda: BEAT in r.mirror.catalog.rejected, what="the unsigned heartbeat refused")
    assert "not signed" in r.mirror.catalog.rejected[BEAT]
    # Its stamp (1970) was never measured: the key holds no valid heartbeat, as for a fresh reader.
    assert "east" not in r.lag.last
    assert not r.metrics.get_sample_value("meshfed_registry_lag_seconds_sum", {"site": "east"})
    writer = asyncio.create_task(r.writer.run(), name="heartbeat-again")
    r.tasks["heartbeat"] = writer
    await eventually(lambda: "east" in r.lag.last, what="east's own heartbeat again")
    assert BEAT not in r.mirror.catalog.rejected
    assert r.lag.last["east"].lag < 5


async def test_a_sites_lag_series_goes_with_the_site(running: Running) -> None:
    r = running
    for name in ("heartbeat", "east"):
        r.tasks[name].cancel()
        await asyncio.gather(r.tasks[name], return_exceptions=True)
    # Nobody keeps east's lease alive: etcd deletes its records and its heartbeat after the TTL.
    await eventually(lambda: "east" not in r.mirror.mesh.get().sites, what="east's lease to expire")
    await eventually(lambda: "east" not in r.lag.last, what="east's lag forgotten")
    assert r.count() == 0.0


def test_two_agents_export_how_far_behind_they_see_each_other(etcd: EtcdProcess, tmp_path: Path) -> None:
    procs = []
    try:
        for name in ("east", "west"):
            cfg = write_config(tmp_path / f"{name}.yaml", name, [etcd.endpoint], tmp_path / name,
                               [web_export(name)], registry={"heartbeat_interval": 1})
            procs.append(AgentProcess(cfg, tmp_path / name).start())
        for p in procs:
            p.wait_ready()
        east, west = procs

        def seen(agent: AgentProcess, site: str) -> bool:
            line = f'meshfed_registry_lag_seconds_count{{site="{site}"}} '
            counts = [float(x[len(line):]) for x in agent.get("/metrics")[1].splitlines() if x.startswith(line)]
            return bool(counts) and counts[0] >= 2

        deadline = time.monotonic() + 20
        while not (seen(west, "east") and seen(east, "west")):
            assert time.monotonic() < deadline, west.get("/metrics")[1]
            time.sleep(0.2)
        lag = json.loads(west.get("/status")[1])["registry"]["lag"]
        assert set(lag) == {"east", "west"}  # its own too: the round trip through etcd alone
        assert 0 <= lag["east"]["lagSeconds"] < 5
        assert lag["east"]["intervalSeconds"] == 1
        assert lag["east"]["overdue"] is False
        assert 'le="0.1",site="east"' in west.get("/metrics")[1]
    finally:
        for p in procs:
            p.stop()
