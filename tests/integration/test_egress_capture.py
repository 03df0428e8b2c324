"""The egress in capture mode on loopback (no netfilter rules: those are in tests/netns/test_egress_capture.py).

What can be seen without root: no per-port listener for ClusterSetIP services, the index following the
registry and the VIP table, and a connection that was not redirected reset and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from federation.core.errors import ConfigError
from federation.core.records import ServiceType
from federation.runtime.values import Value
from federation.sources.vm.capture import EgressCapture, precondition
from federation.sources.vm.settings import VmSettings
from gateway.balancing import Placement
from gateway.egress import Egress
from gateway.settings import GatewaySettings
from tests.pkihelp import export
from tests.tunnelhelp import two_sites
from tests.util import eventually

KEY = ("ns", "echo", "tcp")
VIP = ipaddress.ip_address("240.240.0.1")


async def test_capture_mode_serves_vip_services_without_listeners_and_resets_the_unknown(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        registry = CollectorRegistry()
        placement = Value(Placement(vips={("ns", "echo"): ("240.240.0.1",)}), name="placement")
        eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=0), registry=registry,
                    placement=placement, capture=("127.0.0.1", 0))
        await eg.start()
        following = asyncio.create_task(eg.run(), name="egress-run")
        try:
            assert eg.mode == "capture"
            assert eg.capture is not None
            assert eg.listeners() == {}  # the ClusterSetIP service has no listener of its own
            assert eg.capture.index.lookup(VIP, 7) == KEY
            assert registry.get_sample_value("meshfed_egress_mode", {"mode": "capture"}) == 1
            assert registry.get_sample_value("meshfed_egress_mode", {"mode": "listeners"}) == 0
            assert registry.get_sample_value("meshfed_egress_listeners") == 1
            assert registry.get_sample_value("meshfed_egress_captured_destinations") == 1

            # A headless service keeps a listener; a second ClusterSetIP one joins the index when its VIP comes.
            headless = export("east", "ns", "db", 5432, endpoint_ports=(1,))
            s.exports += [type(headless)("east", "ns", "db", headless.ports, ServiceType.HEADLESS, headless.endpoints),
                          export("east", "ns", "web", 80, endpoint_ports=(1,))]
            s.publish()
            await eventually(lambda: set(eg.listeners()) == {("ns", "db", "tcp")}, 10, "the headless listener")
            assert eg.capture.index.lookup(ipaddress.ip_address("240.240.0.2"), 80) is None
            placement.set(Placement(vips={("ns", "echo"): ("240.240.0.1",), ("ns", "web"): ("240.240.0.2",)}))
            await eventually(lambda: eg.capture is not None and eg.capture.index.lookup(
                ipaddress.ip_address("240.240.0.2"), 80) == ("ns", "web", "tcp"), 10, "web in the index")
            s.exports.pop()
            s.publish()
            await eventually(lambda: eg.capture is not None and eg.capture.index.lookup(
                ipaddress.ip_address("240.240.0.2"), 80) is None, 10, "web out of the index")

            # Straight to the capture port, not redirected: no original destination names a service; reset.
            reader, writer = await asyncio.open_connection(*eg.capture.address)
            writer.write(b"hello")
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await eventually(lambda: registry.get_sample_value(
                "meshfed_egress_connections_total", {"result": "unknown_destination"}) == 1, 10, "the count")
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await eg.close()


async def test_listener_mode_says_so(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        registry = CollectorRegistry()
        eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=0), registry=registry)
        await eg.start()
        try:
            assert eg.mode == "listeners"
            assert eg.capture is None
            assert set(eg.listeners()) == {KEY}
            assert registry.get_sample_value("meshfed_egress_mode", {"mode": "listeners"}) == 1
            assert registry.get_sample_value("meshfed_egress_mode", {"mode": "capture"}) == 0
        finally:
            await eg.close()


RANGES = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")


async def test_the_mode_is_decided_once_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    no_nft = "/nonexistent/nft"  # never the host's real nft: these agents must not touch its rules
    no_vips = precondition(VmSettings(vip_interface=""), dns_enabled=True, egress=True)
    assert no_vips == "VIPs are off (vm.vip_interface is empty)"
    assert precondition(VmSettings(), dns_enabled=True, egress=True) == ""
    assert "dns.enabled" in precondition(VmSettings(), dns_enabled=False, egress=True)

    quiet = EgressCapture("auto", RANGES, unavailable=no_vips, nft=no_nft)
    assert await quiet.decide() is False
    assert (quiet.mode, quiet.reason) == ("listeners", no_vips)
    with pytest.raises(ConfigError, match=r"^agent.yaml: vm.egress_capture: on, but capture is impossible: VIPs"):
        await EgressCapture("on", RANGES, unavailable=no_vips, where="agent.yaml", nft=no_nft).decide()

    off = EgressCapture("off", RANGES, nft=no_nft)
    assert await off.decide() is False
    assert off.reason == "vm.egress_capture is off"

    caplog.clear()
    missing = EgressCapture("auto", RANGES, nft=no_nft)
    assert await missing.decide() is False
    assert missing.reason == "the /nonexistent/nft command is not installed (Debian/Ubuntu: apt install nftables)"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == [
        f"egress capture is off: {missing.reason}; the egress listens on a socket per service port instead"]
    assert missing.status(None) == {"mode": "listeners", "capture": None, "ranges": [], "table": None,
                                    "reason": missing.reason}
