"""VM import end to end on a real etcd: a checked VM export in one site, its mesh-wide VIP on another's meshfed0.

vm-a publishes `web` through VmSource (health-checked); vm-b mirrors the registry, allocates VIPs with the
DNS helper's allocator and feeds VmSource.update, whose VIP interface lives in a namespace of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Iterator

import pytest

from federation.core.backoff import Backoff
from federation.core.keys import Keys
from federation.registry.allocator import VipAllocator
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from federation.registry.publisher import Publisher
from federation.sources.vm.settings import CheckSettings, PortSettings, VmServiceSettings, VmSettings
from federation.sources.vm.source import VmSource
from tests.netns.nshelp import global_addresses, scratch_netns
from tests.util import eventually, site

pytestmark = pytest.mark.netns
KEYS = Keys()
RANGES = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("mfimp") as name:
        yield name


@contextlib.asynccontextmanager
async def tasks(**coros: object) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    running = {name: asyncio.create_task(c, name=name) for name, c in coros.items()}  # type: ignore[arg-type]
    try:
        yield running
    finally:
        for t in running.values():
            t.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)


async def follow(mirror: Mirror, allocator: VipAllocator, source: VmSource) -> None:
    """What vm-b's agent does on every registry change: allocate VIPs, then hand view and VIPs to the VM source."""
    await mirror.synced.wait()
    while True:
        view = mirror.view()
        await allocator.reconcile(view)
        source.update(view, allocator)
        await asyncio.sleep(0.1)


async def test_vm_export_reaches_other_vm_as_vip_and_restart_converges(etcd: EtcdProcess, netns: str) -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    vm_a = VmSettings(services=(VmServiceSettings(
        "shop", "web", (PortSettings("http", 8080, target_port=port),), address="127.0.0.1",
        check=CheckSettings(interval=0.3, timeout=0.25)),))
    publisher = Publisher(EtcdClient([etcd.endpoint], timeout=3), KEYS, site("vm-a"), ttl=3,
                          backoff=Backoff(base=0.05, cap=0.5))
    source_a = VmSource(vm_a, "vm-a", publisher.set_exports)
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=Backoff(base=0.05, cap=0.5))
    allocator = VipAllocator(EtcdClient([etcd.endpoint], timeout=3), KEYS, ranges=RANGES, grace=0.0)
    source_b = VmSource(VmSettings(), "vm-b", lambda _exports: None, netns=netns)

    def web_ready() -> bool | None:
        e = mirror.view().exports.get(("vm-a", "shop", "web"))
        return None if e is None else e.endpoints[0].ready

    try:
        async with tasks(source_a=source_a.run(), mirror=mirror.run()):
            await source_a.ready.wait()  # the publisher starts with the complete first list
            async with tasks(publisher=publisher.run()):
                async with tasks(source_b=source_b.run(), follow=follow(mirror, allocator, source_b)):
                    await eventually(lambda: bool(allocator.addresses("shop", "web")), what="web's VIPs allocated")
                    v4, v6 = allocator.addresses("shop", "web")
                    want = sorted([f"{v4}/32", f"{v6}/128"])
                    await eventually(lambda: global_addresses(netns) == want, what="web's VIPs on vm-b's meshfed0")
                    assert web_ready() is True

                    server.close()
                    await server.wait_closed()
                    await eventually(lambda: web_ready() is False, what="web not ready in vm-b's view")
                    assert global_addresses(netns) == want  # still exported: its VIP stays

                # vm-b's agent restarts: a new VM source converges on what is there, nothing added twice
                source_b2 = VmSource(VmSettings(), "vm-b", lambda _exports: None, netns=netns)
                async with tasks(source_b=source_b2.run(), follow=follow(mirror, allocator, source_b2)):
                    vips = {ipaddress.ip_address(v4), ipaddress.ip_address(v6)}
                    await eventually(lambda: source_b2.vips.addresses == vips, what="the restarted source")
                    assert global_addresses(netns) == want

                    # vm-a stops exporting web; with no grace period its VIP is released and leaves meshfed0
                    publisher.set_exports([])
                    await eventually(lambda: global_addresses(netns) == [], what="web's VIPs gone after the unexport")
    finally:
        server.close()
        await server.wait_closed()
