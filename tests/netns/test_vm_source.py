"""The assembled VM source: held until checks ran, static and checked exports merged, VIPs following the view."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

from federation.core.records import ServiceExport
from federation.core.view import MeshView
from federation.runtime.values import follow
from federation.sources.vm.settings import CheckSettings, PortSettings, VmServiceSettings, VmSettings
from federation.sources.vm.source import VmSource
from tests.netns.nshelp import global_addresses, scratch_netns
from tests.util import eventually, export, site

pytestmark = pytest.mark.netns


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("mfsrc") as name:
        yield name


async def test_vm_source_publishes_once_checked_and_follows_the_view(netns: str) -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = VmSettings(services=(VmServiceSettings(
        "shop", "web", (PortSettings("http", 8080, target_port=port),), address="127.0.0.1",
        check=CheckSettings(interval=0.5, timeout=0.4)),))
    published: list[Sequence[ServiceExport]] = []
    source = VmSource(settings, "vm-a", static_exports=[export("vm-a", "db")], netns=netns)

    async def record() -> None:
        async for _ in follow(source.exports):
            if source.ready.is_set():
                published.append(source.exports.get())

    recorder = asyncio.create_task(record(), name="record")
    task = asyncio.create_task(source.run(), name="vm-source")
    try:
        await asyncio.wait_for(source.ready.wait(), 15)
        assert [[e.name for e in p] for p in published] == [["db", "web"]]  # one complete first list
        assert published[0][1].endpoints[0].ready

        sites = {"vm-a": site("vm-a"), "vm-b": site("vm-b", "net-b")}
        view = MeshView(sites=sites, exports={("vm-b", "shop", "api"): export("vm-b", "api"),
                                              ("vm-b", "shop", "pay"): export("vm-b", "pay")})
        source.update(view, ({("shop", "api"): ("240.240.0.1",), ("shop", "pay"): ("240.240.0.2",)}))
        await eventually(lambda: global_addresses(netns) == ["240.240.0.1/32", "240.240.0.2/32"], what="VIPs on meshfed0")
        source.update(MeshView(sites=sites, exports={("vm-b", "shop", "api"): export("vm-b", "api")}),
                      ({("shop", "api"): ("240.240.0.1",)}))
        await eventually(lambda: global_addresses(netns) == ["240.240.0.1/32"], what="a removed service's VIP gone")
        assert not source.fallback

        server.close()
        await server.wait_closed()
        await eventually(lambda: not published[-1][1].endpoints[0].ready, what="web not ready")
    finally:
        task.cancel()
        recorder.cancel()
        await asyncio.gather(task, recorder, return_exceptions=True)
        server.close()
        await server.wait_closed()
