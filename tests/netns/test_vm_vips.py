"""The VIP interface inside a network namespace of the test's own: create, converge, restart, remove, fallback."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from federation.sources.vm.netlink import VipInterface
from federation.sources.vm.settings import VmSettings
from tests.netns.nshelp import scratch_netns

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
A, B, C, V6 = (ipaddress.ip_address(x) for x in ("240.240.0.1", "240.240.0.2", "240.240.0.3", "fd6d:6573::1"))


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("mfvip", loopback_up=True) as name:
        yield name


def on_interface(ns: str, ifname: str = "meshfed0") -> list[str] | None:
    """Global addresses on `ifname` as `ip` shows them (duplicates included), None if it does not exist."""
    out = subprocess.run(["ip", "-n", ns, "-o", "addr", "show", "dev", ifname, "scope", "global"],
                         capture_output=True, text=True, timeout=20, check=False)
    if out.returncode != 0:
        return None
    return sorted(line.split()[3] for line in out.stdout.splitlines())


async def test_converges_survives_restart_and_is_removed(netns: str) -> None:
    metrics = CollectorRegistry()
    vips = VipInterface(VmSettings(), netns=netns, metrics=metrics)
    await vips.reconcile({A, B, V6})
    assert on_interface(netns) == ["240.240.0.1/32", "240.240.0.2/32", "fd6d:6573::1/128"]
    assert vips.kind in ("dummy", "bridge")
    assert not vips.fallback

    await vips.reconcile({B, C})
    assert on_interface(netns) == ["240.240.0.2/32", "240.240.0.3/32"]
    assert vips.addresses == {B, C}

    # Someone adds a stray address; a restarted agent (new instance) converges without duplicates.
    subprocess.run(["ip", "-n", netns, "addr", "add", "240.240.0.77/24", "dev", "meshfed0"], check=True, timeout=20)
    restarted = CollectorRegistry()  # a new process has metrics of its own, set by what it found and did
    again = VipInterface(VmSettings(), netns=netns, metrics=restarted)
    await again.reconcile({B, C})
    await again.reconcile({B, C})
    assert on_interface(netns) == ["240.240.0.2/32", "240.240.0.3/32"]
    assert restarted.get_sample_value("meshfed_vm_vips") == 2
    assert restarted.get_sample_value("meshfed_vm_vip_changes_total", {"op": "remove"}) == 1  # the stray
    assert restarted.get_sample_value("meshfed_vm_vip_changes_total", {"op": "add"}) == 0

    # The VIP is a local address: a listener bound to it is reachable in the namespace.
    code = ("import socket; s = socket.create_server(('240.240.0.3', 0)); "
            "c = socket.create_connection(s.getsockname(), timeout=5); print('connected')")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.stdout.strip() == "connected", out.stderr

    assert await again.remove() is True
    assert on_interface(netns) is None
    assert await again.remove() is False


async def test_custom_interface_name(netns: str) -> None:
    vips = VipInterface(VmSettings(vip_interface="mfvip-test"), netns=netns)
    await vips.reconcile({A})
    assert on_interface(netns, "mfvip-test") == ["240.240.0.1/32"]
    await vips.reconcile(set())
    assert on_interface(netns, "mfvip-test") == []


FALLBACK = """
import asyncio, ipaddress, logging
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from federation.sources.vm.settings import VmSettings
from federation.sources.vm.netlink import VipInterface
async def main():
    vips = VipInterface(VmSettings())
    for _ in range(3):
        await vips.reconcile({ipaddress.ip_address("240.240.0.1")})
    print("fallback", vips.fallback, vips.fallback_reason)
asyncio.run(main())
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop CAP_NET_ADMIN")
def test_without_cap_net_admin_it_says_so_once_and_falls_back(netns: str) -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
         sys.executable, "-c", FALLBACK], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("fallback True no permission to manage interface meshfed0")
    assert out.stderr.count("CAP_NET_ADMIN") == 1
    assert on_interface(netns) is None


async def test_auto_address_is_the_default_route_source(netns: str) -> None:
    from federation.sources.vm.netlink import own_address

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, timeout=20)

    ip("link", "add", "mfa", "type", "veth", "peer", "name", "mfb")
    ip("addr", "add", "198.18.5.2/24", "dev", "mfa")
    ip("addr", "add", "198.18.6.2/24", "dev", "mfb")
    ip("link", "set", "mfa", "up")
    ip("link", "set", "mfb", "up")
    ip("route", "add", "default", "via", "198.18.6.1")
    assert await own_address(netns) == "198.18.6.2"
