"""The VM source in one piece, for the agent's composition root: exports (static + checked + LAN), VIPs, mDNS.

    vm = VmSource(settings.vm, site, mesh=mirror.mesh, vips=allocator.table, static_exports=settings.exports)
    tg.create_task(vm.run(), name="vm-source")
    await vm.ready.wait()             # before the publisher starts: see `ready`
    Publisher(..., exports=vm.exports)  # the merged export list, a value holder
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry

from federation.core.backoff import Backoff
from federation.core.endpoints import EndpointAddresses
from federation.core.exportset import ExportSet
from federation.core.records import Locality, ServiceExport, ServiceType
from federation.core.view import MeshView, ServiceId, VipTable
from federation.core.vips import VipAddresses
from federation.runtime.values import Derived, Readable, Value, follow
from federation.sources.vm.addressing import Vip
from federation.sources.vm.checking import UNKNOWN_LOCALITY
from federation.sources.vm.health import HealthChecker
from federation.sources.vm.mdns import LanDiscovery, MdnsAnnouncer
from federation.sources.vm.netlink import VipInterface
from federation.sources.vm.settings import VmSettings

log = logging.getLogger(__name__)

DISCOVERY_SETTLE = 3.0
"""Seconds LAN discovery gets before the first publication: zeroconf's first queries go out at 0, 1 and 3 s
(RFC 6762 5.2), so a restart does not withdraw and re-add every LAN service."""


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> Vip:
    """Parsed once: every registry change recomputes the wanted VIPs from the same few strings."""
    return ipaddress.ip_address(text)


class VmSource:
    """Runs the health checker, LAN discovery, the mDNS announcer and the VIP interface of one VM site."""

    def __init__(
        self,
        settings: VmSettings,
        site_name: str,
        *,
        mesh: Readable[MeshView] | None = None,
        vips: Readable[VipTable] | None = None,
        static_exports: Iterable[ServiceExport] | Readable[tuple[ServiceExport, ...]] = (),
        locality: Locality = UNKNOWN_LOCALITY,
        vip_ranges: Sequence[str] = (),
        metrics: CollectorRegistry | None = None,
        discovery_settle: float = DISCOVERY_SETTLE,
        netns: str | None = None,
        live: Readable[VmSettings] | None = None,
        endpoints: Readable[EndpointAddresses] | None = None,
    ) -> None:
        """`static_exports` and `live` (the VM settings) may be holders the source follows (a reload);
        `endpoints`: addresses of headless endpoints of other networks, held on the interface like VIPs."""
        self._settings = settings
        self._mesh = mesh
        self._vip_table = vips
        self._endpoints = endpoints
        self._table: EndpointAddresses | None = None
        """The endpoint table the interface followed last."""
        self.exports: Value[tuple[ServiceExport, ...]] = Value((), name="vm exports")
        """The site's merged export list, once `ready` (static, checked and LAN services)."""
        self._held: Sequence[ServiceExport] | None = None
        self._settle = discovery_settle
        self.ready = asyncio.Event()
        """Set when the first complete export list went to `on_exports` (checks done, discovery settled).

        Start the registry publisher only after it: a publisher started with a partial list deletes the
        site's other records from the previous run, and a re-added record loses its export time (MCS age).
        """
        self.groups = ExportSet(self._deliver)
        """The exports of each producer (static, checks, LAN), merged."""
        self._static: Readable[tuple[ServiceExport, ...]] | None = None
        if isinstance(static_exports, Value | Derived):
            self._static = static_exports
            static_exports = static_exports.get()
        self.groups.group("static")(tuple(static_exports))  # type: ignore[arg-type]
        self.checks = HealthChecker(settings, site_name, self.groups.group("checks"), locality=locality,
                                    metrics=metrics, live=live)
        self.discovery = (LanDiscovery(settings, site_name, self.groups.group("lan"), metrics=metrics)
                          if settings.discovery.enabled else None)
        self.announcer = MdnsAnnouncer(settings, site_name) if settings.announce else None
        self.vips = VipInterface(settings, metrics=metrics, netns=netns, ranges=vip_ranges)
        """With `vip_ranges` (capture mode) it holds one address per range, not the VIPs."""
        self._wanted_vips: frozenset[Vip] = frozenset()
        self._by_service: dict[ServiceId, frozenset[Vip]] = {}
        self._counts: dict[Vip, int] = {}
        self._all: frozenset[Vip] = frozenset()
        self._last: tuple[MeshView, VipTable] | None = None
        self._vips_changed = asyncio.Event()
        self._vips_seen = False
        self._backoff = Backoff(base=1.0, cap=30.0)
        self.held_vips: Value[frozenset[str]] = Value(frozenset(), name="VIPs on the interface")
        """The VIPs the interface holds after the last reconcile (the egress binds listeners to them)."""

    @property
    def fallback(self) -> bool:
        """True when VIPs cannot be managed (no CAP_NET_ADMIN); the egress uses loopback ports instead."""
        return self.vips.fallback

    def update(self, view: MeshView, vips: VipTable) -> None:
        """Follow the mesh: VIPs of its ClusterSetIP services on the interface, imported services on mDNS.

        Call it only once the registry's initial sync is done: an empty view would remove every VIP.
        """
        wanted = self._wanted(view, vips)
        if wanted != self._wanted_vips or not self._vips_seen:  # the first view converges leftovers too
            self._vips_seen = True
            self._wanted_vips = wanted
            self._vips_changed.set()
        if self.announcer is not None:
            self.announcer.update(view, vips)

    def _wanted(self, view: MeshView, vips: VipTable) -> frozenset[Vip]:
        """The VIPs the interface should hold; after a registry change, only the changed services are looked at."""
        before = self._last
        diff = None
        if before is not None and isinstance(vips, VipAddresses) and isinstance(before[1], VipAddresses) \
                and vips.allocations is view.vips and before[1].allocations is before[0].vips:
            diff = view.changes_since(before[0].generation) if view.history is before[0].history else None
        keys = view.services().keys() | self._by_service.keys() if diff is None else diff.services
        table = self._endpoints.get() if self._endpoints is not None else None
        if table is not None and diff is not None and self._table is not None:
            moved = table.changes_since(self._table)  # an endpoint given an address freed by another service
            keys = keys | (moved if moved is not None else table.keys() | self._table.keys())
        self._table = table
        if diff is None:
            self._by_service, self._counts = {}, {}
        changed = False
        for key in keys:
            svc = view.services().get(key)
            addresses = vips.get(key, ()) if svc is not None and svc.type is ServiceType.CLUSTER_SET_IP else ()
            if svc is not None and svc.type is ServiceType.HEADLESS and table is not None:
                addresses = tuple(r.address for r in table.get(key, ()))
            new = frozenset(_address(a) for a in addresses)
            old = self._by_service.pop(key, frozenset())
            if new:
                self._by_service[key] = new
            if new != old:
                changed = True
                for vip in old - new:
                    self._counts[vip] -= 1
                    if not self._counts[vip]:
                        del self._counts[vip]
                for vip in new - old:
                    self._counts[vip] = self._counts.get(vip, 0) + 1
        self._last = (view, vips)
        if diff is None or changed:
            self._all = frozenset(self._counts)
        return self._all

    async def run(self) -> None:
        """Run every part until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.checks.run(), name="vm-health-checks")
            if self.discovery is not None:
                tg.create_task(self.discovery.run(), name="vm-lan-discovery")
            if self.announcer is not None:
                tg.create_task(self.announcer.run(), name="vm-mdns-announcer")
            if self._settings.vip_interface:
                tg.create_task(self._reconcile_vips(), name="vm-vip-interface")
            if self._mesh is not None:
                tg.create_task(self._follow_mesh(self._mesh), name="vm-follow-mesh")
            if self._static is not None:
                tg.create_task(self._follow_static(self._static), name="vm-static-exports")
            await self.checks.ready.wait()
            if self.discovery is not None:
                await asyncio.sleep(self._settle)
            self._release()

    # ---------------------------------------------------------------- private

    async def _follow_mesh(self, mesh: Readable[MeshView]) -> None:
        """VIPs and announcements follow the mesh view and the VIP table, from the initial sync on."""
        vips = self._vip_table if self._vip_table is not None else Value({})
        async for _ in follow(mesh, vips, *(h for h in (self._endpoints,) if h is not None)):
            if mesh.get().complete:  # an empty view before the sync would drop every VIP
                self.update(mesh.get(), vips.get())

    async def _follow_static(self, static: Readable[tuple[ServiceExport, ...]]) -> None:
        """The static exports follow the settings (a reload)."""
        async for _ in follow(static):
            self.groups.group("static")(tuple(static.get()))

    def _deliver(self, exports: Sequence[ServiceExport]) -> None:
        if self.ready.is_set():
            self.exports.set(tuple(exports))
        else:
            self._held = exports

    def _release(self) -> None:
        self.exports.set(tuple(self._held if self._held is not None else self.groups.merged()))
        self.ready.set()
        self._held = None
        log.info("vm source: publishing %d exports", len(self.groups.merged()))

    async def _reconcile_vips(self) -> None:
        while True:
            await self._vips_changed.wait()
            self._vips_changed.clear()
            try:
                await self.vips.reconcile(self._wanted_vips)
            except OSError as exc:  # NetlinkError included: e.g. the interface deleted under our feet
                delay = self._backoff.next()
                log.warning("VIP interface %s: %s; retrying in %.1fs", self.vips.name, exc, delay)
                await asyncio.sleep(delay)
                self._vips_changed.set()
            else:
                self._backoff.reset()
                self.held_vips.set(frozenset(str(a) for a in self.vips.addresses))
