"""LAN discovery inside a namespace of the test's own: a real zeroconf announcer, found, exported, withdrawn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns
from zeroconf.asyncio import AsyncZeroconf

from federation.core.exportset import ExportSet
from federation.core.keys import Keys
from federation.core.records import ServiceExport
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient
from federation.registry.mirror import Mirror
from federation.sources.vm.mdns import LanDiscovery
from federation.sources.vm.settings import DiscoverySettings, VmSettings
from tests.netns.nshelp import stop_by_stdin
from tests.util import HandPublisher, eventually, site

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
LAN_A, LAN_B = "198.18.7.1", "198.18.7.2"


@pytest.fixture
def lan() -> Iterator[str]:
    """A namespace with a veth pair (two LAN addresses) whose multicast stays inside it."""
    name = f"mfmdns{os.getpid()}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True, timeout=20)

    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=20)
    try:
        ip("link", "set", "lo", "up")
        ip("link", "add", "mfa", "type", "veth", "peer", "name", "mfb")
        ip("addr", "add", f"{LAN_A}/24", "dev", "mfa")
        ip("addr", "add", f"{LAN_B}/24", "dev", "mfb")
        ip("link", "set", "mfa", "up")
        ip("link", "set", "mfb", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)


@contextlib.contextmanager
def announcer(ns: str, service_type: str, instance: str, port: int, ttl: int = 120) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.mdnsnode", service_type, instance, LAN_B,
         str(port), str(ttl)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), proc.communicate(timeout=10)[1]
        yield proc
    finally:
        stop_by_stdin(proc)


def zeroconf_in(ns: str) -> AsyncZeroconf:
    """An AsyncZeroconf whose sockets live in `ns` (created while this thread is in it)."""
    pyroute2_netns.pushns(ns)
    try:
        return AsyncZeroconf(interfaces=[LAN_A])
    finally:
        pyroute2_netns.popns()


async def test_found_exported_to_the_registry_and_withdrawn_on_goodbye(lan: str, etcd: EtcdProcess) -> None:
    settings = VmSettings(discovery=DiscoverySettings(enabled=True, types=("_http._tcp.local.",), namespace="office"))
    published: list[Sequence[ServiceExport]] = []
    publisher = HandPublisher(EtcdClient([etcd.endpoint], timeout=3), Keys(), site("vm-a"), ttl=3)
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), Keys())
    exports = ExportSet(publisher.set_exports)
    to_registry = exports.group("lan")

    def on_exports(found: Sequence[ServiceExport]) -> None:
        published.append(found)
        to_registry(found)

    azc = zeroconf_in(lan)
    discovery = LanDiscovery(settings, "vm-a", on_exports, zeroconf=azc)
    tasks = [asyncio.create_task(c, name=n) for n, c in
             (("lan-discovery", discovery.run()), ("publisher", publisher.run()), ("mirror", mirror.run()))]
    try:
        with announcer(lan, "_http._tcp.local.", "Office Printer", 8631):
            await eventually(lambda: ("vm-a", "office", "office-printer") in mirror.mesh.get().exports,
                             what="the announced service in the registry")
            [export] = published[-1]
            assert (export.site, export.namespace, export.name) == ("vm-a", "office", "office-printer")
            assert export.ports[0].name == "http"
            assert export.ports[0].port == 8631
            assert export.endpoints[0].addresses == (LAN_B,)
        # The announcer said goodbye on its way out.
        await eventually(lambda: not mirror.mesh.get().exports, what="the service withdrawn after its goodbye")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await azc.async_close()


async def test_withdrawn_when_ttl_expires_without_goodbye(lan: str) -> None:
    settings = VmSettings(discovery=DiscoverySettings(enabled=True, types=("_ipp._tcp.local.",)))
    published: list[Sequence[ServiceExport]] = []
    azc = zeroconf_in(lan)
    discovery = LanDiscovery(settings, "vm-a", published.append, zeroconf=azc, sweep_interval=0.5)
    task = asyncio.create_task(discovery.run(), name="lan-discovery")
    try:
        with announcer(lan, "_ipp._tcp.local.", "Ink", 631, ttl=2) as proc:
            await eventually(lambda: bool(published and published[-1]), what="the announced service exported")
            proc.kill()  # no goodbye: only the records' TTL can withdraw it
            proc.wait(timeout=10)
            await eventually(lambda: published[-1] == [], timeout=30, what="the service withdrawn at TTL expiry")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await azc.async_close()


def zeroconf_on(ns: str, address: str) -> AsyncZeroconf:
    pyroute2_netns.pushns(ns)
    try:
        return AsyncZeroconf(interfaces=[address])
    finally:
        pyroute2_netns.popns()


async def test_imported_services_are_announced_with_their_vip_and_withdrawn(lan: str) -> None:
    from federation.core.view import MeshView
    from federation.sources.vm.mdns import MdnsAnnouncer
    from tests.util import export

    view = MeshView(sites={"vm-a": site("vm-a"), "vm-b": site("vm-b", "net-b")},
                    exports={("vm-b", "shop", "web"): export("vm-b", "web"),
                             ("vm-a", "shop", "local"): export("vm-a", "local")})
    vips = ({("shop", "web"): ("240.240.0.5",), ("shop", "local"): ("240.240.0.6",)})
    announcing_zc, browsing_zc = zeroconf_on(lan, LAN_A), zeroconf_on(lan, LAN_B)
    announcer = MdnsAnnouncer(VmSettings(announce=True), "vm-a", zeroconf=announcing_zc)
    published: list[Sequence[ServiceExport]] = []
    browser = LanDiscovery(VmSettings(discovery=DiscoverySettings(enabled=True, types=("_http._tcp.local.",))),
                           "lan-client", published.append, zeroconf=browsing_zc)
    tasks = [asyncio.create_task(announcer.run(), name="announcer"), asyncio.create_task(browser.run(), name="browser")]
    try:
        announcer.update(view, vips)
        await eventually(lambda: bool(published and published[-1]), what="the mesh service seen on the LAN")
        [seen] = published[-1]
        assert seen.name == "web-shop"  # "web (shop)" as a label; vm-a's own "local" is not announced
        assert seen.endpoints[0].addresses == ("240.240.0.5",)
        assert seen.ports[0].port == 8080
        await eventually(lambda: [a.name for a in announcer.announced()] == ["web (shop)._http._tcp.local."],
                         what="the announcer to report what it announces")

        announcer.update(MeshView(sites=view.sites, exports={}), vips)
        await eventually(lambda: published[-1] == [], what="the announcement withdrawn")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await announcing_zc.async_close()
        await browsing_zc.async_close()
