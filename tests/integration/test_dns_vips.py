"""VIP allocation against a real etcd, read back through real mirrors: two VM-site agents agree, release
waits for the grace period, many VIPs go in few transactions, and churn costs no allocation work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message

from federation.core.backoff import Backoff
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.vips import VipAddresses
from federation.dns.server import DnsServer
from federation.dns.settings import DnsSettings
from federation.registry.allocator import VipAllocator
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import Delete, EtcdClient, Put
from federation.registry.mirror import Mirror
from federation.runtime.values import Derived
from tests.dnshelp import export, site
from tests.util import eventually

RANGES = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")
KEYS = Keys()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def tasks(*coros: object) -> AsyncIterator[None]:
    running = [asyncio.create_task(c) for c in coros]  # type: ignore[arg-type]
    try:
        yield
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def write(etcd: EtcdProcess, puts: list[Put]) -> None:
    client = EtcdClient([etcd.endpoint], timeout=5)
    try:
        await client.commit(puts)
    finally:
        await client.close()


def mirror_of(etcd: EtcdProcess) -> Mirror:
    return Mirror(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=Backoff(base=0.05, cap=0.3),
                  probe_interval=0.5, probe_timeout=1.0)


def vips_of(mirror: Mirror, name: str) -> tuple[str, ...]:
    allocation = mirror.mesh.get().vips.get(("shop", name))
    return allocation.addresses if allocation is not None else ()


async def test_two_vm_sites_get_the_same_vip_and_release_waits_for_the_grace_period(etcd: EtcdProcess) -> None:
    clock = Clock()
    services = [export("east", "shop", f"svc{i}", ["10.0.0.1"]) for i in range(20)]
    await write(etcd, [Put(KEYS.site(s), encode_site(site(s))) for s in ("east", "west")]
                + [Put(KEYS.service("east", "shop", e.name), encode_export(e)) for e in services])
    mirrors = [mirror_of(etcd), mirror_of(etcd)]
    clients = [EtcdClient([etcd.endpoint], timeout=3) for _ in mirrors]
    east, west = (VipAllocator(c, KEYS, m.mesh, ranges=RANGES, grace=60, clock=clock)
                  for c, m in zip(clients, mirrors, strict=True))
    try:
        async with tasks(*(m.run() for m in mirrors), east.run(), west.run()):
            # both agents allocate at once: compare-and-swap leaves one allocation per service
            await eventually(lambda: all(len(m.mesh.get().vips) == 20 for m in mirrors), what="20 allocations")
            await asyncio.sleep(0.3)  # let any loser of a race see the winner's write
            a, b = (dict(m.mesh.get().vips) for m in mirrors)
            assert a == b
            addresses = [x for alloc in a.values() for x in alloc.addresses]
            assert len(addresses) == len(set(addresses)) == 40
            web = vips_of(mirrors[0], "svc0")
            assert web[0].startswith("240.240.")
            assert web[1].startswith("fd6d:6573:6866:6564:")
            assert east.transactions + west.transactions <= 12  # batches, not one per key

            # no site exports svc0 any more: kept through the grace period, then released
            client = EtcdClient([etcd.endpoint], timeout=3)
            await client.commit([Delete(KEYS.service("east", "shop", "svc0"))])
            await eventually(lambda: mirrors[0].mesh.get().vips[("shop", "svc0")].unused_since == 1000.0,
                             what="the grace period to start")
            clock.now += 59
            await asyncio.sleep(0.5)
            assert vips_of(mirrors[1], "svc0") == web
            clock.now += 2
            await eventually(lambda: not vips_of(mirrors[0], "svc0") and not vips_of(mirrors[1], "svc0"),
                             what="the release after the grace period")
            kvs, _ = await client.get_prefix(KEYS.mesh("vips") + "/")
            assert len(kvs) == 19 * 3  # one allocation and two address claims per remaining service

            # exported again: a fresh allocation, the same on both sites
            await client.commit([Put(KEYS.service("east", "shop", "svc0"), encode_export(services[0]))])
            await eventually(lambda: vips_of(mirrors[0], "svc0") == vips_of(mirrors[1], "svc0") != (),
                             what="svc0 allocated again")
            await client.close()
    finally:
        for c in clients:
            await c.close()


async def test_no_site_serves_ipv6_so_none_is_allocated_until_one_does(etcd: EtcdProcess) -> None:
    """Sites with per-port listeners serve IPv4 VIPs only: their allocators take no IPv6 address (AAAA would
    lead nowhere). A site whose capture listener takes IPv6 joins: it adds one IPv6 VIP per service, and the
    IPv4 VIPs clients have cached stay. Two such sites racing add one, not two."""
    services = [export("east", "shop", f"svc{i}", ["10.0.0.1"]) for i in range(5)]
    await write(etcd, [Put(KEYS.site("east"), encode_site(site("east")))]
                + [Put(KEYS.service("east", "shop", e.name), encode_export(e)) for e in services])
    mirror = mirror_of(etcd)
    clients = [EtcdClient([etcd.endpoint], timeout=3) for _ in range(3)]
    v4_only = VipAllocator(clients[0], KEYS, mirror.mesh, ranges=RANGES[:1])
    try:
        async with tasks(mirror.run(), v4_only.run()):
            await eventually(lambda: len(mirror.mesh.get().vips) == 5, what="5 allocations")
            before = {k: a.addresses for k, a in mirror.mesh.get().vips.items()}
            assert all(len(addrs) == 1 and addrs[0].startswith("240.240.") for addrs in before.values())
            both = [VipAllocator(c, KEYS, mirror.mesh, ranges=RANGES) for c in clients[1:]]
            async with tasks(*(a.run() for a in both)):
                await eventually(lambda: all(len(a.addresses) == 2 for a in mirror.mesh.get().vips.values()),
                                 what="an IPv6 VIP added to every allocation")
                await asyncio.sleep(0.3)  # let a loser of the race see the winner's write
                after = mirror.mesh.get()
                for key, allocation in after.vips.items():
                    assert allocation.addresses[0] == before[key][0]  # the IPv4 VIP never moves
                    assert allocation.addresses[1].startswith("fd6d:6573:6866:6564:")
                assert len(after.claims) == 10  # one claim per address: the racing site claimed nothing extra
    finally:
        for c in clients:
            await c.close()


async def test_two_vm_site_agents_answer_the_same_vip(etcd: EtcdProcess) -> None:
    await write(etcd, [Put(KEYS.site(s), encode_site(site(s))) for s in ("east", "west")] + [
        Put(KEYS.service("east", "shop", "web"), encode_export(export("east", "shop", "web", ["10.0.0.1"]))),
        Put(KEYS.service("west", "shop", "web"), encode_export(export("west", "shop", "web", ["10.1.0.1"])))])
    clients, servers, running = [], [], []
    try:
        for name in ("east", "west"):
            client = EtcdClient([etcd.endpoint], timeout=3)
            clients.append(client)
            mirror = mirror_of(etcd)
            mesh = mirror.mesh
            allocator = VipAllocator(client, KEYS, mesh, ranges=RANGES)
            server = DnsServer(DnsSettings(udp=("127.0.0.1:0",), tcp=("127.0.0.1:0",), forwarding=False),
                               local_site=name, mesh=mesh,
                               vips=Derived(lambda m=mesh: VipAddresses(m.get().vips), mesh))  # type: ignore[misc]
            servers.append(server)
            await server.start()
            running += [asyncio.create_task(c) for c in (mirror.run(), server.run(), allocator.run())]
        answers = []
        for server in servers:
            host, port = server.udp_addresses[0]
            q = dns.message.make_query("web.shop.svc.clusterset.local", "A")
            for _ in range(250):
                r = await dns.asyncquery.udp(q, host, port=port, timeout=3)
                if r.answer:
                    break
                await asyncio.sleep(0.02)
            answers.append([rd.to_text() for rd in r.answer[0]])
        assert answers[0] == answers[1]
        assert answers[0][0].startswith("240.240.")
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for server in servers:
            await server.close()
        for client in clients:
            await client.close()


class CountingClient:
    """The real client, counting the allocator's transactions."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.transactions = 0

    async def commit_if(self, conditions, ops):  # type: ignore[no-untyped-def]
        self.transactions += 1
        return await self.client.commit_if(conditions, ops)


async def test_many_vips_in_few_transactions_and_endpoint_churn_costs_no_allocation_work(etcd: EtcdProcess) -> None:
    services = [export("east", "shop", f"svc{i}", ["10.0.0.1"]) for i in range(400)]
    await write(etcd, [Put(KEYS.site("east"), encode_site(site("east")))])
    for start in range(0, len(services), 100):
        await write(etcd, [Put(KEYS.service("east", "shop", e.name), encode_export(e))
                           for e in services[start:start + 100]])
    mirror = mirror_of(etcd)
    client = CountingClient(EtcdClient([etcd.endpoint], timeout=3))
    allocator = VipAllocator(client, KEYS, mirror.mesh, ranges=RANGES)  # type: ignore[arg-type]
    try:
        async with tasks(mirror.run(), allocator.run()):
            await eventually(lambda: len(mirror.mesh.get().vips) == 400, what="400 VIPs")
            assert client.transactions <= 400 // 40 + 2  # 40 services per transaction
            settled = client.transactions
            for i in range(20):  # endpoint churn: same services, new endpoints
                e = export("east", "shop", "svc1", [f"10.0.1.{i + 2}"])
                await write(etcd, [Put(KEYS.service("east", "shop", "svc1"), encode_export(e))])
            await eventually(lambda: mirror.mesh.get().exports[("east", "shop", "svc1")].endpoints[0].addresses
                             == ("10.0.1.21",), what="the churn to arrive")
            await asyncio.sleep(0.2)
            assert client.transactions == settled
            new = export("east", "shop", "api", ["10.0.0.9"])
            await write(etcd, [Put(KEYS.service("east", "shop", "api"), encode_export(new))])
            await eventually(lambda: bool(vips_of(mirror, "api")), what="a VIP for the new service")
            assert client.transactions == settled + 1
    finally:
        await client.client.close()
