"""Signed VIP records against a real etcd: a raw etcd writer cannot swap two services' VIPs.

Site east's publisher and VIP allocator sign what they write; verifying mirrors read. A raw writer (a stolen
etcd credential) swaps two allocations, forges one, or strips a signature: each is refused, logged once with
its key, and never enters a view; the allocator then writes the services' own VIPs back. A reader started afterwards lists mesh/vips/ before the site records that
verify it (keys sort so) and still takes every VIP; an upgrading mesh's unsigned VIPs are signed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from federation.core.keys import Keys
from federation.core.verification import Mode
from federation.core.vips import Allocation, Claim, encode_allocation, encode_claim
from federation.pki.records import RecordVerifier
from federation.pki.verifying import TrustBundle
from federation.registry.allocator import VipAllocator
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, Put
from federation.registry.mirror import Mirror
from tests.integration.test_signed_registry import raw_get, raw_put, seal_of
from tests.pkihelp import Mesh, Signers
from tests.util import HandPublisher, eventually, export

KEYS = Keys()
SERVICES = 100
"""Allocated in bulk transactions of 40 services."""


@dataclass
class Running:
    mirror: Mirror
    allocator: VipAllocator
    signers: Signers
    tasks: list[asyncio.Task[None]]


def reader(etcd: EtcdProcess, mesh: Mesh, mode: Mode = Mode.REQUIRE) -> tuple[Mirror, RecordVerifier]:
    verifier = RecordVerifier(KEYS, TrustBundle.from_pem(mesh.bundle_pem()), mode)
    return Mirror(EtcdClient([etcd.endpoint]), KEYS, trust=verifier), verifier


async def start(etcd: EtcdProcess, mesh: Mesh, mode: Mode = Mode.REQUIRE) -> Running:
    signers = Signers(mesh)
    seal = seal_of(signers, "east")
    exports = [export("east", name=f"s{i:03d}", addresses=(f"10.0.{i // 200}.{i % 200 + 1}",))
               for i in range(SERVICES)]
    east = HandPublisher(EtcdClient([etcd.endpoint]), KEYS, mesh.site("east", "net-a"), exports, ttl=5, sealer=seal)
    mirror, verifier = reader(etcd, mesh, mode)
    allocator = VipAllocator(EtcdClient([etcd.endpoint]), KEYS, mirror.mesh, seal=seal,
                             resign=lambda kid: verifier.resign_due(kid, "east"))
    tasks = [asyncio.create_task(w.run(), name=n) for w, n in ((east, "east"), (mirror, "mirror"), (allocator, "vips"))]
    return Running(mirror, allocator, signers, tasks)


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def running(etcd: EtcdProcess) -> AsyncIterator[Running]:
    r = await start(etcd, Mesh())
    try:
        await eventually(lambda: len(r.mirror.mesh.get().vips) == SERVICES, what="every service's VIP")
        yield r
    finally:
        await stop(r.tasks)


def vip(mirror: Mirror, name: str) -> tuple[str, ...] | None:
    a = mirror.mesh.get().vips.get(("shop", name))
    return a.addresses if a is not None else None


async def test_bulk_allocations_are_signed_and_a_fresh_reader_takes_them_all(running: Running,
                                                                             etcd: EtcdProcess) -> None:
    assert running.allocator.conflicts == 0
    assert running.allocator.transactions <= 5  # 40 per transaction (the exports arrive in two writes)
    assert b'"sig":{"alg":"ES256"' in await raw_get(etcd, KEYS.vip("shop", "s000"))
    assert not running.mirror.catalog.rejected
    # A reader started now lists mesh/vips/ before sites/east: every VIP is held, then taken with the site record.
    mirror = Mirror(EtcdClient([etcd.endpoint]), KEYS,
                    trust=RecordVerifier(KEYS, running.mirror._trust.trust.get(), Mode.REQUIRE))  # type: ignore[union-attr]
    task = asyncio.create_task(mirror.run(), name="fresh")
    try:
        await asyncio.wait_for(mirror.synced.wait(), 10)
        assert dict(mirror.mesh.get().vips) == dict(running.mirror.mesh.get().vips)
        assert len(mirror.mesh.get().claims) == SERVICES
        assert not mirror.catalog.rejected
    finally:
        await stop([task])


@pytest.mark.parametrize("attack", ["swap", "no-site-key", "stripped"])
async def test_a_raw_etcd_writer_cannot_swap_or_forge_vips(running: Running, etcd: EtcdProcess,
                                                           caplog: pytest.LogCaptureFixture, attack: str) -> None:
    mirror = running.mirror
    a, b = KEYS.vip("shop", "s001"), KEYS.vip("shop", "s002")
    va, vb = await raw_get(etcd, a), await raw_get(etcd, b)
    addr_a, addr_b = vip(mirror, "s001"), vip(mirror, "s002")
    assert addr_a
    assert addr_b
    forged = {
        "swap": [(a, vb), (b, va)],
        "no-site-key": [(a, Signers(Mesh()).signer("east").sign(a, encode_allocation(
            Allocation(("shop", "s001"), addr_b)), running.signers.at()))],
        "stripped": [(a, encode_allocation(Allocation(("shop", "s001"), addr_b)))],
    }[attack]
    expected = {
        "swap": "does not match the record (altered, or moved from another key)",
        "no-site-key": "which no site record seen lists",
        "stripped": "the VIP record is not signed (registry.signatures is require)",
    }[attack]
    caplog.set_level(logging.WARNING, logger="federation.registry.mirror")
    allocating = running.tasks.pop()  # stopped while the refusal is looked at, so it cannot repair it first
    await stop([allocating])
    async with EtcdClient([etcd.endpoint]) as client:
        await client.commit([Put(k, v) for k, v in forged])  # one transaction: no view shows half a swap
    await eventually(lambda: a in mirror.mesh.get().refused_vips, what="the forged VIP refused")
    assert expected in mirror.catalog.rejected[a]
    assert vip(mirror, "s001") is None  # the forged addresses are in no view
    assert vip(mirror, "s003") is not None  # nothing else disturbed
    if attack == "swap":
        assert vip(mirror, "s002") is None
    # The allocator replaces what readers refuse, compare-and-swap, keeping each service's claimed address.
    running.tasks.append(asyncio.create_task(running.allocator.run(), name="vips"))
    await eventually(lambda: vip(mirror, "s001") == addr_a and vip(mirror, "s002") == addr_b,
                     what="the allocator restoring both VIPs")
    assert a not in mirror.catalog.rejected
    assert running.signers.signer("east").kid.encode() in await raw_get(etcd, a)
    again = forged[0][1] + b" "
    await raw_put(etcd, a, again)  # written again: refused, not logged again, and replaced again
    deadline = asyncio.get_running_loop().time() + 10
    while await raw_get(etcd, a) == again:
        assert asyncio.get_running_loop().time() < deadline, "the second forgery was not replaced"
        await asyncio.sleep(0.05)
    await eventually(lambda: vip(mirror, "s001") == addr_a, what="s001's VIP back")
    lines = [r.getMessage() for r in caplog.records if a in r.getMessage()]
    assert len(lines) == 1, lines
    assert expected in lines[0]


async def test_unsigned_vips_of_an_upgrading_mesh_are_taken_in_accept_and_signed_again(etcd: EtcdProcess) -> None:
    mesh = Mesh()
    # An agent of the release before wrote this allocation unsigned.
    old = ("shop", "s005")
    async with EtcdClient([etcd.endpoint]) as client:
        await client.commit([Put(KEYS.claim("240.240.9.9"), encode_claim(Claim("240.240.9.9", old, 1.0))),
                             Put(KEYS.vip(*old), encode_allocation(Allocation(old, ("240.240.9.9",))))])
    r = await start(etcd, mesh, Mode.ACCEPT)
    strict, _ = reader(etcd, mesh, Mode.REQUIRE)
    task = asyncio.create_task(strict.run(), name="strict")
    try:
        await eventually(lambda: len(r.mirror.mesh.get().vips) == SERVICES, what="every service's VIP")
        assert vip(r.mirror, "s005") == ("240.240.9.9",)  # the old VIP kept, not re-allocated
        # The allocator signs it again; a reader that requires signatures then takes it too.
        await eventually(lambda: vip(strict, "s005") == ("240.240.9.9",), what="the old VIP signed again")
        assert "240.240.9.9" in strict.mesh.get().claims
    finally:
        await stop([*r.tasks, task])
