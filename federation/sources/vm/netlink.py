"""The netlink adapter of a VM site (the only module that imports pyroute2): the VIP interface and the host address.

The VIP interface is a dummy interface (default meshfed0) carrying the VIP of every imported service;
`federation.sources.vm.addressing.plan` says what to add and remove. A restart reads what the interface
holds and converges, so nothing is added twice or left over.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from pyroute2 import AsyncIPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from federation.core.errors import ConfigError
from federation.sources.vm.addressing import Vip, outside, plan, range_addresses
from federation.sources.vm.settings import VmSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

IFA_F_NODAD = 0x02
"""Skip duplicate address detection: a VIP is ours by allocation, and a tentative address cannot be bound."""

_KINDS = ("dummy", "bridge")
"""Link kinds tried in order: dummy is the right one; a bridge without ports behaves the same for local
addresses and serves kernels built without the dummy driver (some micro-VM kernels)."""

_ALIAS = "meshfed VIPs"
NETLINK_ROUTE = 0


class VipMetrics:
    """meshfed_vm_vip_* series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.vips = Gauge("meshfed_vm_vips", "VIPs on the VIP interface", registry=registry)
        self.fallback = Gauge("meshfed_vm_vip_fallback",
                              "1 when the agent cannot manage the VIP interface (no CAP_NET_ADMIN)", registry=registry)
        self.changes = Counter("meshfed_vm_vip_changes", "VIP addresses added or removed", ("op",), registry=registry)


class VipInterface:
    """Keeps the VIP interface holding exactly the VIPs it is given; says once if it cannot."""

    def __init__(self, settings: VmSettings, *, netns: str | None = None,
                 metrics: CollectorRegistry | None = None, ranges: Sequence[str] = ()) -> None:
        self._name = settings.vip_interface
        self._ranges = range_addresses(ranges)
        """Capture mode: one address per VIP range (a route to all of it) instead of one per VIP."""
        self._netns = netns
        self._metrics = VipMetrics(metrics) if metrics is not None else None
        self._lock = asyncio.Lock()
        self._fallback: str | None = None
        self._addresses: frozenset[Vip] = frozenset()
        self.kind = ""
        """The link kind in use (dummy, or bridge on kernels without dummy), empty before the first reconcile."""

    @property
    def name(self) -> str:
        """The interface name."""
        return self._name

    @property
    def fallback(self) -> bool:
        """True when VIPs cannot be managed (no CAP_NET_ADMIN): listeners use loopback ports instead."""
        return self._fallback is not None

    @property
    def fallback_reason(self) -> str:
        """Why, for `meshfed status`; empty when not in fallback."""
        return self._fallback or ""

    @property
    def addresses(self) -> frozenset[Vip]:
        """The VIPs on the interface after the last reconcile."""
        return self._addresses

    @property
    def whole_ranges(self) -> bool:
        """True in capture mode: the interface holds one address per VIP range, not the VIPs."""
        return bool(self._ranges)

    async def reconcile(self, vips: Iterable[Vip]) -> None:
        """Make the interface (created if missing, up) hold exactly `vips` (in capture mode: one address per
        VIP range, whatever `vips` are); a no-op in fallback."""
        # In capture mode also any address outside the ranges (a headless endpoint's, held as itself).
        desired = frozenset(self._ranges) | outside(vips, self._ranges) if self._ranges else frozenset(vips)
        async with self._lock:
            if self._fallback is not None:
                return
            try:
                await _netlink(self._reconcile(desired))
            except NetlinkError as exc:
                if exc.code not in (errno.EPERM, errno.EACCES):
                    raise
                self._fallback = f"no permission to manage interface {self._name} (needs CAP_NET_ADMIN)"
                log.warning("%s: VIPs are off, imported services get loopback ports instead", self._fallback)
                if self._metrics is not None:
                    self._metrics.fallback.set(1)

    async def remove(self) -> bool:
        """Delete the interface and its VIPs (uninstall); False if there was none."""
        async with self._lock:
            return await _netlink(self._remove())

    async def _remove(self) -> bool:
        async with self._route() as ipr:
            index = await _lookup(ipr, self._name)
            if index is None:
                return False
            await ipr.link("del", index=index)
            self._addresses = frozenset()
            log.info("removed VIP interface %s", self._name)
            return True

    # ---------------------------------------------------------------- private

    def _route(self) -> AsyncIPRoute:
        return route_socket(self._netns)

    async def _reconcile(self, desired: frozenset[Vip]) -> None:
        async with self._route() as ipr:
            index = await self._ensure_link(ipr)
            actual = [(ipaddress.ip_address(m.get("address")), int(m["prefixlen"]))
                      async for m in await ipr.addr("dump", index=index)]
            todo = plan(desired, actual, self._ranges)
            for address, prefixlen in todo.remove:
                await _ignore(ipr.addr("del", index=index, address=str(address), prefixlen=prefixlen),
                              errno.EADDRNOTAVAIL)
            for address in todo.add:
                length = self._ranges.get(address, address.max_prefixlen)
                await _ignore(ipr.addr("add", index=index, address=str(address), prefixlen=length,
                                       flags=IFA_F_NODAD if address.version == 6 else 0), errno.EEXIST)
        self._addresses = desired
        if todo:
            log.info("VIP interface %s: added %s, removed %s", self._name,
                     ", ".join(map(str, todo.add)) or "none", ", ".join(str(a) for a, _ in todo.remove) or "none")
        if self._metrics is not None:
            self._metrics.vips.set(len(desired))
            self._metrics.changes.labels("add").inc(len(todo.add))
            self._metrics.changes.labels("remove").inc(len(todo.remove))

    async def _ensure_link(self, ipr: AsyncIPRoute) -> int:
        index = await _lookup(ipr, self._name)
        if index is None:
            for kind in _KINDS:
                try:
                    await ipr.link("add", ifname=self._name, kind=kind)
                except NetlinkError as exc:
                    if exc.code == errno.EOPNOTSUPP:
                        continue
                    if exc.code != errno.EEXIST:
                        raise
                self.kind = kind
                if kind != _KINDS[0]:
                    log.warning("the kernel has no %s interfaces; VIP interface %s is an empty %s instead",
                                _KINDS[0], self._name, kind)
                break
            else:
                raise NetlinkError(errno.EOPNOTSUPP, f"the kernel supports none of {', '.join(_KINDS)}")
            index = await _lookup(ipr, self._name)
            if index is None:
                raise NetlinkError(errno.ENODEV, f"{self._name} vanished right after it was created")
            await ipr.link("set", index=index, ifalias=_ALIAS)
            log.info("created VIP interface %s (%s)", self._name, self.kind)
        elif not self.kind:
            self.kind = await _kind(ipr, index)
        await ipr.link("set", index=index, state="up")
        return index


async def _netlink(work: Coroutine[Any, Any, T]) -> T:
    """Run pyroute2's async netlink code on a private standard event loop in a worker thread.

    pyroute2 opens netlink sockets through the running loop, which uvloop cannot do (AF_NETLINK is not
    a UDP family it accepts); a thread with a plain asyncio loop works under any loop the agent runs.
    """
    return await asyncio.to_thread(asyncio.run, work)


def route_socket(netns: str | None = None) -> AsyncIPRoute:
    """An rtnetlink client, in network namespace `netns` if given (tests).

    The socket is opened here with setns on this thread rather than by pyroute2's netns support,
    which forks a helper process per socket; a fork while gRPC threads run can stall the loop.
    """
    if not netns:
        return AsyncIPRoute()
    pyroute2_netns.pushns(netns)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    finally:
        pyroute2_netns.popns()
    return AsyncIPRoute(fileno=sock.detach())


async def _lookup(ipr: AsyncIPRoute, name: str) -> int | None:
    found = await ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


async def _kind(ipr: AsyncIPRoute, index: int) -> str:
    for link in await ipr.link("get", index=index):
        info = link.get("IFLA_LINKINFO")
        if info is not None:
            return str(info.get("IFLA_INFO_KIND") or "")
    return ""


async def _ignore(request: Any, code: int) -> None:
    try:
        await request
    except NetlinkError as exc:
        if exc.code != code:
            raise


async def own_address(netns: str | None = None) -> str:
    """The preferred source address of the default route (IPv4 first), else the first global address.

    Raises ConfigError when the host has no global address at all ("auto" cannot work there). Runs on a
    plain asyncio loop in a worker thread: pyroute2's netlink sockets do not work under uvloop.
    """
    return await asyncio.to_thread(asyncio.run, _own_address(netns))


async def _own_address(netns: str | None) -> str:
    async with route_socket(netns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            routes = [r async for r in await ipr.get_default_routes(family=family)]
            for route in routes:
                if route.get("prefsrc"):
                    return str(route.get("prefsrc"))
                for addr in await _global_addresses(ipr, family, route.get("oif")):
                    return addr
        for family in (socket.AF_INET, socket.AF_INET6):
            for addr in await _global_addresses(ipr, family, None):
                return addr
    raise ConfigError("vm.address: auto found no global address on this host; set an address")


async def _global_addresses(ipr: AsyncIPRoute, family: int, index: int | None) -> list[str]:
    kwargs = {"family": family} if index is None else {"family": family, "index": index}
    out = []
    async for msg in await ipr.addr("dump", **kwargs):
        address = msg.get("address")
        if address is None or msg["scope"] != 0:
            continue
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback and not ip.is_link_local:
            out.append(str(ip))
    return out
