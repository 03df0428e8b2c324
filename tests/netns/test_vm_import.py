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

from federation.agent.serving import served_addresses, served_ranges
from federation.core.backoff import Backoff
from federation.core.keys import Keys
from federation.registry.allocator import VipAllocator
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from federation.registry.publisher import Publisher
from federation.runtime.values import Derived, Value
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


def vm_b_source(mirror: Mirror, netns: str) -> VmSource:
    """vm-b's VM source, fed the addresses the agent's data plane feeds it (one function for both)."""
    mesh = mirror.mesh
    return VmSource(VmSettings(), "vm-b", mesh=mesh, vips=served_addresses(mesh, None), netns=netns)


async def test_vm_export_reaches_other_vm_as_vip_and_restart_converges(etcd: EtcdProcess, netns: str) -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    vm_a = VmSettings(services=(VmServiceSettings(
        "shop", "web", (PortSettings("http", 8080, target_port=port),), address="127.0.0.1",
        check=CheckSettings(interval=0.3, timeout=0.25)),))
    source_a = VmSource(vm_a, "vm-a")
    withdrawn = Value(False)  # vm-a's operator takes the service out of its config
    exports_a = Derived(lambda: () if withdrawn.get() else source_a.exports.get(), withdrawn, source_a.exports)
    publisher = Publisher(EtcdClient([etcd.endpoint], timeout=3), KEYS, Value(site("vm-a")), exports_a, ttl=3,
                          backoff=Backoff(base=0.05, cap=0.5))
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=Backoff(base=0.05, cap=0.5))
    # vm-b allocates what its data plane serves: per-port listeners, so IPv4 only (no IPv6 VIP nobody serves)
    allocator = VipAllocator(EtcdClient([etcd.endpoint], timeout=3), KEYS, mirror.mesh,
                             ranges=served_ranges(RANGES, None), grace=0.0)
    source_b = vm_b_source(mirror, netns)

    def web_ready() -> bool | None:
        e = mirror.mesh.get().exports.get(("vm-a", "shop", "web"))
        return None if e is None else e.endpoints[0].ready

    try:
        async with tasks(source_a=source_a.run(), mirror=mirror.run()):
            await source_a.ready.wait()  # the publisher starts with the complete first list
            async with tasks(publisher=publisher.run()):
                async with tasks(source_b=source_b.run(), allocator=allocator.run()):
                    await eventually(lambda: ("shop", "web") in mirror.mesh.get().vips, what="web's VIPs allocated")
                    (v4,) = mirror.mesh.get().vips[("shop", "web")].addresses
                    want = [f"{v4}/32"]
                    await eventually(lambda: global_addresses(netns) == want, what="web's VIPs on vm-b's meshfed0")
                    assert web_ready() is True

                    server.close()
                    await server.wait_closed()
                    await eventually(lambda: web_ready() is False, what="web not ready in vm-b's view")
                    assert global_addresses(netns) == want  # still exported: its VIP stays

                # vm-b's agent restarts: a new VM source converges on what is there, nothing added twice
                source_b2 = vm_b_source(mirror, netns)
                async with tasks(source_b=source_b2.run(), allocator=allocator.run()):
                    vips = {ipaddress.ip_address(v4)}
                    await eventually(lambda: source_b2.vips.addresses == vips, what="the restarted source")
                    assert global_addresses(netns) == want

                    # vm-a stops exporting web; with no grace period its VIP is released and leaves meshfed0
                    withdrawn.set(True)
                    await eventually(lambda: global_addresses(netns) == [], what="web's VIPs gone after the unexport")
    finally:
        server.close()
        await server.wait_closed()
