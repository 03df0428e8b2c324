"""VIP allocation against a real etcd: two VM-site agents agree, and release waits for the grace period."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.message

from federation.core.keys import Keys
from federation.core.view import MeshView
from federation.dns.server import DnsServer
from federation.dns.settings import DnsSettings
from federation.registry.allocator import VipAllocator
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.runtime.values import Value
from tests.dnshelp import export, site, view

RANGES = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_two_vm_sites_get_the_same_vip_and_release_waits_for_the_grace_period(etcd: EtcdProcess) -> None:
    clock = Clock()
    clients = [EtcdClient([etcd.endpoint], timeout=3) for _ in range(2)]
    unused = Value(MeshView.before_sync())  # reconcile() is driven by hand here
    east, west = (VipAllocator(c, Keys(), unused, ranges=RANGES, grace=60, clock=clock) for c in clients)
    before = east.table.version
    try:
        services = [export("east", "shop", f"svc{i}", ["10.0.0.1"]) for i in range(20)]
        mesh = view([site("east"), site("west")], services)
        # both agents allocate at once: compare-and-swap leaves one allocation per service
        for _ in range(2):
            await asyncio.gather(east.reconcile(mesh), west.reconcile(mesh))
        assert east.table.get() == west.table.get()
        assert len(east.table.get()) == 20
        addresses = [a for addrs in east.table.get().values() for a in addrs]
        assert len(addresses) == len(set(addresses)) == 40
        web = east.table.get().get(("shop", "svc0"), ())
        assert web[0].startswith("240.240.")
        assert web[1].startswith("fd6d:6573:6866:6564:")
        assert east.table.version > before

        # no site exports svc0 any more: kept through the grace period, then released
        fewer = view([site("east"), site("west")], services[1:])
        await east.reconcile(fewer)
        clock.now += 59
        await asyncio.gather(east.reconcile(fewer), west.reconcile(fewer))
        assert west.table.get().get(("shop", "svc0"), ()) == web
        clock.now += 2
        for _ in range(2):
            await asyncio.gather(east.reconcile(fewer), west.reconcile(fewer))
        assert east.table.get().get(("shop", "svc0"), ()) == ()
        assert west.table.get().get(("shop", "svc0"), ()) == ()
        kvs, _ = await clients[0].get_prefix(Keys().mesh("vips") + "/")
        assert len(kvs) == 19 * 3  # one allocation and two address claims per remaining service

        # exported again: a fresh allocation, the same on both sites
        for _ in range(2):  # the loser of a race sees the winner's allocation on its next pass
            await asyncio.gather(east.reconcile(mesh), west.reconcile(mesh))
        assert east.table.get().get(("shop", "svc0"), ()) == west.table.get().get(("shop", "svc0"), ()) != ()
    finally:
        for c in clients:
            await c.close()


async def test_two_vm_site_agents_answer_the_same_vip(etcd: EtcdProcess) -> None:
    mesh = Value(view([site("east"), site("west")], [export("east", "shop", "web", ["10.0.0.1"]),
                                                     export("west", "shop", "web", ["10.1.0.1"])]))
    clients, servers, tasks = [], [], []
    try:
        for name in ("east", "west"):
            client = EtcdClient([etcd.endpoint], timeout=3)
            clients.append(client)
            allocator = VipAllocator(client, Keys(), mesh, ranges=RANGES, interval=0.1)
            server = DnsServer(DnsSettings(udp=("127.0.0.1:0",), tcp=("127.0.0.1:0",), forwarding=False),
                               local_site=name, mesh=mesh, vips=allocator.table)
            servers.append(server)
            await server.start()
            tasks.append(asyncio.create_task(server.run(), name=f"dns-{name}"))
            tasks.append(asyncio.create_task(allocator.run(), name=f"vips-{name}"))
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
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in servers:
            await server.close()
        for client in clients:
            await client.close()


class CountingClient:
    """The real client, counting full listings of the VIP prefix."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.listings = 0

    async def get_prefix(self, prefix: str):  # type: ignore[no-untyped-def]
        self.listings += 1
        return await self.client.get_prefix(prefix)

    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) -> bool:
        return await self.client.put_if_absent(key, value, lease)

    async def replace(self, key: str, old: bytes, new: bytes) -> bool:
        return await self.client.replace(key, old, new)

    async def delete_if(self, key: str, value: bytes) -> bool:
        return await self.client.delete_if(key, value)


async def test_endpoint_churn_does_not_relist_allocations_but_a_new_service_does(etcd: EtcdProcess) -> None:
    client = CountingClient(EtcdClient([etcd.endpoint], timeout=3))
    current = Value(view([site("east")], [export("east", "shop", "web", ["10.0.0.1"])]))
    allocator = VipAllocator(client, Keys(), current, ranges=RANGES, interval=3600)
    task = asyncio.create_task(allocator.run(), name="vips")
    try:
        for _ in range(200):
            if allocator.table.get().get(("shop", "web"), ()):
                break
            await asyncio.sleep(0.02)
        assert allocator.table.get().get(("shop", "web"), ())
        settled = client.listings
        for i in range(20):  # endpoint churn: same services, new endpoints
            current.set(view([site("east")], [export("east", "shop", "web", [f"10.0.0.{i + 2}"])]))
            await asyncio.sleep(0.01)
        assert client.listings == settled
        current.set(view([site("east")], [export("east", "shop", "web", ["10.0.0.1"]),
                                          export("east", "shop", "api", ["10.0.0.9"])]))
        for _ in range(200):
            if allocator.table.get().get(("shop", "api"), ()):
                break
            await asyncio.sleep(0.02)
        assert allocator.table.get().get(("shop", "api"), ())
        assert client.listings > settled
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.client.close()
