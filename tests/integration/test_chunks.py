"""Endpoint chunks against a real etcd: one endpoint change rewrites one chunk key, readers refuse what is not
the site's current layout, and a mixed mesh (a whole-record writer beside a chunked one) reads the same.

Site east's real publisher signs and writes a 250-endpoint service in chunks of 100; site west, as an agent
of the previous release would, writes the same service as one whole record. A verifying mirror reads both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from federation.core.chunks import encode_chunk, place
from federation.core.keys import Keys
from federation.core.records import Endpoint, ServiceExport, ServicePort
from federation.core.verification import Mode
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, Put
from federation.registry.mirror import Mirror, RegistryMetrics
from federation.registry.sealing import Seal
from federation.runtime.values import Value
from tests.pkihelp import Mesh, Signers
from tests.util import HandPublisher, eventually

KEYS = Keys()
WEB = KEYS.service("east", "shop", "web")


def _web(site: str, count: int, down: int | None = None) -> ServiceExport:
    endpoints = tuple(Endpoint((f"10.{1 if site == 'east' else 2}.{i // 200}.{i % 200 + 1}",), ready=i != down)
                      for i in range(count))
    return ServiceExport(site, "shop", "web", (ServicePort("http", 80),), endpoints=endpoints)


class _Mesh:
    def __init__(self, etcd: EtcdProcess, mesh: Mesh | None = None) -> None:
        self.etcd = etcd
        self.mesh = mesh or Mesh()
        self.signers = Signers(self.mesh)
        self.metrics_registry = CollectorRegistry()
        verifier = RecordVerifier(KEYS, TrustBundle.from_pem(self.mesh.bundle_pem()), Mode.REQUIRE)
        self.mirror = Mirror(EtcdClient([etcd.endpoint]), KEYS, trust=verifier,
                             metrics=RegistryMetrics(self.metrics_registry))

    def publisher(self, name: str, network: str, exports: list[ServiceExport], chunk_size: int) -> HandPublisher:
        signer = self.signers.signer(name)
        seal = Value(Seal(signer.kid, (signer.cert_pem(),), signer.sign), name="seal")
        return HandPublisher(EtcdClient([self.etcd.endpoint]), KEYS, self.mesh.site(name, network), exports,
                             ttl=5, sealer=seal, chunk_size=chunk_size)

    def endpoints(self, site: str) -> tuple[Endpoint, ...]:
        e = self.mirror.mesh.get().exports.get((site, "shop", "web"))
        return e.endpoints if e is not None else ()

    def rejected(self) -> float:
        return self.metrics_registry.get_sample_value("meshfed_registry_records_rejected_total") or 0.0

    async def revisions(self, prefix: str) -> dict[str, int]:
        return {k: rev for k, (rev, _) in (await self.stored(prefix)).items()}

    async def stored(self, prefix: str) -> dict[str, tuple[int, int]]:
        """key -> (mod revision, lease)"""
        async with EtcdClient([self.etcd.endpoint]) as client:
            kvs, _ = await client.get_prefix(prefix)
        return {k: (kv.mod_revision, kv.lease) for k, kv in kvs.items()}

    async def raw(self, key: str, value: bytes | None = None) -> bytes:
        async with EtcdClient([self.etcd.endpoint]) as client:
            if value is not None:
                await client.commit([Put(key, value)])
            kv = await client.get(key)
        assert kv is not None
        return kv.value


@pytest.fixture
async def lab(etcd: EtcdProcess) -> AsyncIterator[_Mesh]:
    lab = _Mesh(etcd)
    task = asyncio.create_task(lab.mirror.run(), name="mirror")
    try:
        yield lab
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _running(*publishers: HandPublisher) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(p.run(), name=f"publisher-{p.site.name}") for p in publishers]
    for p in publishers:
        await asyncio.wait_for(p.settled.wait(), 10)
    return tasks


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_endpoint_change_rewrites_one_chunk_and_a_mixed_mesh_reads_the_same(lab: _Mesh) -> None:
    east = lab.publisher("east", "net-a", [_web("east", 250)], chunk_size=100)
    west = lab.publisher("west", "net-b", [_web("west", 250)], chunk_size=0)  # a writer of the previous release
    tasks = await _running(east, west)
    try:
        await eventually(lambda: len(lab.endpoints("east")) == 250 and len(lab.endpoints("west")) == 250,
                         what="both forms of the 250-endpoint service")
        before = await lab.revisions(KEYS.site_children("east"))
        chunk_keys = sorted(k for k in before if "/endpoints/" in k)
        assert chunk_keys == [KEYS.chunk("east", "shop", "web", i) for i in range(3)]
        assert {lease for _, lease in (await lab.stored(KEYS.site_children("east"))).values()} == {east.lease}
        header = json.loads(await lab.raw(WEB))
        assert (header["endpointChunks"], "endpoints" in header) == (3, False)
        assert json.loads(await lab.raw(KEYS.service("west", "shop", "web")))["endpoints"]

        site_rev = (await lab.revisions(KEYS.site("east")))[KEYS.site("east")]
        east.set_exports([_web("east", 250, down=17)])
        await eventually(lambda: not next(e.ready for e in lab.endpoints("east") if e.addresses == ("10.1.0.18",)),
                         what="the endpoint going down seen by the reader")
        after = await lab.revisions(KEYS.site_children("east"))
        moved = sorted(k for k in before if after[k] != before[k])
        assert len(moved) == 1
        assert "/endpoints/" in moved[0]
        assert (await lab.revisions(KEYS.site("east")))[KEYS.site("east")] == site_rev
        assert not lab.mirror.catalog.rejected
        # Both forms give the same service to whoever reads the view.
        assert len(lab.mirror.mesh.get().resolved[("shop", "web")].exports) == 2
    finally:
        await _stop(tasks)


async def test_forged_replayed_and_other_generation_chunks_are_refused_and_counted(lab: _Mesh) -> None:
    east = lab.publisher("east", "net-a", [_web("east", 25)], chunk_size=10)
    tasks = await _running(east)
    try:
        await eventually(lambda: len(lab.endpoints("east")) == 25, what="east's chunked service")
        first = KEYS.chunk("east", "shop", "web", 0)
        old_layout = await lab.raw(first)
        east.set_exports([_web("east", 61)])  # past 1.5 chunks' worth each: a new layout, a new generation
        await eventually(lambda: len(lab.endpoints("east")) == 61, what="the new layout")
        assert json.loads(await lab.raw(WEB))["endpointChunks"] == 7
        old_version = await lab.raw(first)
        down = next(i for i, e in enumerate(_web("east", 61).endpoints) if e in place(_web("east", 61).endpoints, 7)[0])
        east.set_exports([_web("east", 61, down=down)])
        await eventually(lambda: sum(not e.ready for e in lab.endpoints("east")) == 1, what="one endpoint down")
        good = lab.endpoints("east")
        generation = json.loads(await lab.raw(WEB))["generation"]
        evil = encode_chunk(_web("east", 0), 0, generation, (Endpoint(("203.0.113.66",)),))
        forged = Signers(Mesh()).signer("east").sign(first, evil, lab.signers.at())  # a key of no site of this mesh
        attacks = [
            (old_version, "a replayed old record"),  # the same layout, an older version
            (forged, "does not list"),
            (old_layout, "a replayed old record"),  # signed before the chunk it replaces
        ]
        for value, reason in attacks:
            counted = lab.rejected()
            await lab.raw(first, value)
            await eventually(lambda reason=reason: reason in lab.mirror.catalog.rejected.get(first, ""),  # type: ignore[misc]
                             what=f"the chunk refused ({reason})")
            assert lab.rejected() > counted
            assert lab.endpoints("east") == good  # the last complete version stays served
        # A reader that never saw the newer chunk (a restart) still refuses the old layout's: its generation.
        fresh = _Mesh(lab.etcd, lab.mesh)
        reader = asyncio.create_task(fresh.mirror.run(), name="fresh-mirror")
        try:
            await asyncio.wait_for(fresh.mirror.synced.wait(), 10)
            assert "older than its export" in fresh.mirror.catalog.rejected[first]
            assert fresh.rejected() >= 1
            assert ("east", "shop", "web") not in fresh.mirror.mesh.get().exports
        finally:
            await _stop([reader])
        ghost = KEYS.chunk("east", "shop", "ghost", 0)  # a chunk without its export record, signed by east
        lone = encode_chunk(dataclasses.replace(_web("east", 0), name="ghost"), 0, generation, good[:3])
        await lab.raw(ghost, lab.signers.signer("east").sign(ghost, lone, lab.signers.at()))
        await eventually(lambda: ghost in lab.mirror.catalog.rejected, what="the ghost chunk held back")
        assert ("east", "shop", "ghost") not in lab.mirror.mesh.get().exports
    finally:
        await _stop(tasks)



async def test_no_view_holds_half_of_one_transaction(lab: _Mesh) -> None:
    east = lab.publisher("east", "net-a", [_web("east", 900)], chunk_size=10)  # 90 chunks: one transaction
    tasks = await _running(east)
    try:
        await eventually(lambda: len(lab.endpoints("east")) == 900, what="east's 90-chunk service")
        ready: list[int] = []
        lab.mirror.subscribe(lambda view, _: ready.append(sum(e.ready for e in view.exports[("east", "shop", "web")]
                                                              .endpoints)))
        every_down = dataclasses.replace(_web("east", 900), endpoints=tuple(
            dataclasses.replace(e, ready=False) for e in _web("east", 900).endpoints))
        east.set_exports([every_down])  # every chunk rewritten, in one transaction
        await eventually(lambda: bool(ready) and ready[-1] == 0, what="every endpoint down")
        assert set(ready) == {0}, ready
    finally:
        await _stop(tasks)
