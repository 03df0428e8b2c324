"""Signed records against a real etcd: a raw etcd writer cannot steer traffic, and one agent per site writes.

A signing publisher writes site east; a verifying mirror reads. A raw writer (a stolen etcd credential)
then tries a record signed by a key of no site, one signed by site west's key, a replay of an older
record of east, and a record with its signature stripped: each is refused with its reason, logged once,
never enters the view, and every other record stays served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from federation.core.codec import encode_export
from federation.core.keys import Keys
from federation.core.verification import Mode
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, Put
from federation.registry.mirror import Mirror
from federation.registry.publisher import SiteHeld
from federation.registry.sealing import Seal
from federation.runtime.values import Value
from tests.pkihelp import Mesh, Signers
from tests.util import HandPublisher, eventually, export, site

KEYS = Keys()
WEB = KEYS.service("east", "shop", "web")


def seal_of(signers: Signers, name: str) -> Value[Seal | None]:
    signer = signers.signer(name)
    return Value(Seal(signer.kid, (signer.cert_pem(),), signer.sign), name="seal")


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
async def running(etcd: EtcdProcess, mesh: Mesh) -> AsyncIterator[tuple[HandPublisher, Mirror, Signers]]:
    signers = Signers(mesh)
    east = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, mesh.site("east", "net-a"),
                         [export("east", addresses=("10.0.0.1",))], ttl=5, sealer=seal_of(signers, "east"))
    west = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, mesh.site("west", "net-b"),
                         [export("west", name="db", addresses=("10.0.1.1",))], ttl=5, sealer=seal_of(signers, "west"))
    verifier = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), Mode.REQUIRE)
    mirror = Mirror(EtcdClient([etcd.endpoint]), KEYS, trust=verifier)
    tasks = [asyncio.create_task(p.run(), name=n) for p, n in ((east, "east"), (west, "west"), (mirror, "mirror"))]
    try:
        await eventually(lambda: len(mirror.mesh.get().exports) == 2, what="both sites' signed exports")
        yield east, mirror, signers
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def web_addresses(mirror: Mirror) -> tuple[str, ...]:
    e = mirror.mesh.get().exports.get(("east", "shop", "web"))
    return e.endpoints[0].addresses if e is not None else ()


async def raw_put(etcd: EtcdProcess, key: str, value: bytes) -> None:
    async with EtcdClient([etcd.endpoint]) as client:
        await client.commit([Put(key, value)])


async def raw_get(etcd: EtcdProcess, key: str) -> bytes:
    async with EtcdClient([etcd.endpoint]) as client:
        kv = await client.get(key)
    assert kv is not None
    return kv.value


async def test_signed_records_are_written_and_verified(running: tuple[HandPublisher, Mirror, Signers],
                                                       etcd: EtcdProcess) -> None:
    east, mirror, _ = running
    assert web_addresses(mirror) == ("10.0.0.1",)
    assert b'"sig":{"alg":"ES256"' in await raw_get(etcd, WEB)
    assert b'"records":["shop/web"]' in await raw_get(etcd, KEYS.site("east"))
    assert not mirror.catalog.rejected
    writes = east.writes
    east.set_exports([export("east", addresses=("10.0.0.1",))])  # the same again: nothing is re-signed
    await asyncio.sleep(0.3)
    assert east.writes == writes


@pytest.mark.parametrize("attack", ["no-site-key", "another-sites-key", "replay", "stripped"])
async def test_a_raw_etcd_writer_cannot_steer_traffic(running: tuple[HandPublisher, Mirror, Signers],
                                                      etcd: EtcdProcess, caplog: pytest.LogCaptureFixture,
                                                      attack: str) -> None:
    east, mirror, signers = running
    old = await raw_get(etcd, WEB)
    east.set_exports([export("east", addresses=("10.0.0.2",))])
    await eventually(lambda: web_addresses(mirror) == ("10.0.0.2",), what="east's new endpoint")
    evil = export("east", addresses=("203.0.113.66",))
    forged = {
        "no-site-key": lambda: Signers(Mesh()).export_record(evil),
        "another-sites-key": lambda: signers.export_record(evil, by="west"),
        "replay": lambda: old,
        "stripped": lambda: encode_export(dataclasses.replace(evil, exported_at=1.0)),
    }[attack]()
    expected = {
        "no-site-key": "which the site record of east does not list",
        "another-sites-key": "signed with the key of site west, not of east",
        "replay": "a replayed old record",
        "stripped": "the record is not signed (registry.signatures is require)",
    }[attack]
    caplog.set_level(logging.WARNING, logger="federation.registry.mirror")
    await raw_put(etcd, WEB, forged)
    await eventually(lambda: WEB in mirror.catalog.rejected, what="the forged record refused")
    assert expected in mirror.catalog.rejected[WEB]
    assert "203.0.113.66" not in str(mirror.mesh.get().exports)  # never in any view
    assert "10.0.0.1" not in str(mirror.mesh.get().exports)
    assert ("west", "shop", "db") in mirror.mesh.get().exports  # nothing else disturbed
    await raw_put(etcd, WEB, forged)  # again: counted, not logged again
    await asyncio.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if WEB in r.getMessage()]
    assert len(lines) == 1, lines
    assert expected in lines[0]


async def test_a_second_agent_of_a_site_waits_or_refuses(etcd: EtcdProcess, mesh: Mesh, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    signers = Signers(mesh)
    first = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, site("east"), [export("east")], ttl=2,
                          sealer=seal_of(signers, "east"), owner="first", lease_file=tmp_path / "a" / "lease")
    task = asyncio.create_task(first.run(), name="first")
    await asyncio.wait_for(first.published.wait(), 10)
    lease_file = tmp_path / "a" / "lease"
    refusing = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, site("east"), [export("east", name="api")], ttl=2,
                             sealer=seal_of(signers, "east"), owner="second", on_duplicate="refuse")
    with pytest.raises(SiteHeld, match="site east is held by first"):
        await asyncio.wait_for(refusing.run(), 10)
    # A copy of the first machine: the same lease file, another owner. It waits, and writes nothing.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "lease").write_bytes(lease_file.read_bytes())
    caplog.set_level(logging.WARNING, logger="federation.registry.publisher")
    clone = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, site("east"), [export("east", name="api")], ttl=2,
                          sealer=seal_of(signers, "east"), owner="copy", lease_file=tmp_path / "b" / "lease")
    clone_task = asyncio.create_task(clone.run(), name="clone")
    try:
        await eventually(lambda: clone.held_by == "first", what="the copy waiting")
        await asyncio.sleep(1.5)
        async with EtcdClient([etcd.endpoint]) as client:
            kvs, _ = await client.get_prefix(KEYS.sites())
        assert KEYS.service("east", "shop", "api") not in kvs  # the copy wrote nothing
        assert sum("held by first" in r.getMessage() for r in caplog.records) == 1
        task.cancel()  # the first agent dies; its lease runs out; the copy takes the site
        await asyncio.gather(task, return_exceptions=True)
        await eventually(lambda: clone.published.is_set() and clone.held_by is None, timeout=20,
                         what="the copy taking over once the first is gone")
        async with EtcdClient([etcd.endpoint]) as client:
            kvs, _ = await client.get_prefix(KEYS.sites())
        assert KEYS.service("east", "shop", "api") in kvs
    finally:
        for t in (task, clone_task):
            t.cancel()
        await asyncio.gather(task, clone_task, return_exceptions=True)
