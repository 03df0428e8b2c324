"""The zeroconf adapter of a VM site: LAN discovery (browse DNS-SD, export what is found) and announcing.

The only module that imports zeroconf. The pure cores are in `federation.sources.vm.lan`. A found
instance is withdrawn when its announcement goes away (goodbye) or its records' TTL expires; announced
services are withdrawn with goodbye packets on the way out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge
from zeroconf import InterfaceChoice, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from federation.core.ratelimit import LogLimiter
from federation.core.records import ServiceExport
from federation.core.view import MeshView, VipTable
from federation.sources.vm.lan import Announcement, Found, announcements, convert
from federation.sources.vm.settings import VmSettings

log = logging.getLogger(__name__)

_RESOLVE_TIMEOUT_MS = 3000
"""How long to wait for an instance's SRV and address records after its PTR appeared (RFC 6762 5.2 pacing)."""

SWEEP_INTERVAL = 5.0
"""Seconds between looks at the cache for found instances whose SRV or address records expired.

zeroconf raises PTR TTLs to at least 1125 s and only refreshes PTRs, so an announcer that died without
a goodbye would stay for ~19 minutes; its SRV/A records (120 s by default) expire much sooner, and an
instance whose records expired and that does not answer a fresh query (RFC 6762 5.2) is withdrawn.
"""


class DiscoveryMetrics:
    """meshfed_vm_discovered_* series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.found = Gauge("meshfed_vm_discovered_services", "DNS-SD instances found on the LAN and exported",
                           registry=registry)


class LanDiscovery:
    """Browses `settings.discovery.types` and calls `on_exports` with the exports whenever they change."""

    def __init__(
        self,
        settings: VmSettings,
        site_name: str,
        on_exports: Callable[[Sequence[ServiceExport]], None],
        *,
        zeroconf: AsyncZeroconf | None = None,
        metrics: CollectorRegistry | None = None,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self._settings = settings.discovery
        self._sweep_interval = sweep_interval
        self._site = site_name
        self._on_exports = on_exports
        self._given = zeroconf
        self._zc: Zeroconf | None = None
        self._metrics = DiscoveryMetrics(metrics) if metrics is not None else None
        self._found: dict[str, Found] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._limiter = LogLimiter()
        self._last: list[ServiceExport] = []

    def found(self) -> list[Found]:
        """What is exported now, for `meshfed status`."""
        return [self._found[k] for k in sorted(self._found)]

    async def run(self) -> None:
        """Browse until cancelled."""
        azc = self._given or AsyncZeroconf(interfaces=list(self._settings.interfaces) or InterfaceChoice.All)
        self._zc = azc.zeroconf
        browser = AsyncServiceBrowser(azc.zeroconf, list(self._settings.types), handlers=[self._on_change])
        log.info("browsing the LAN for %s, exporting under namespace %s",
                 ", ".join(self._settings.types), self._settings.namespace)
        try:
            while True:
                await asyncio.sleep(self._sweep_interval)
                await self._sweep()
        finally:
            for task in self._resolving.values():
                task.cancel()
            await asyncio.gather(*self._resolving.values(), return_exceptions=True)
            await browser.async_cancel()
            if self._given is None:
                await azc.async_close()

    # ---------------------------------------------------------------- private

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            if self._found.pop(name, None) is not None:
                self._log("withdrawn", name)
                self._publish()
            return
        previous = self._resolving.get(name)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name), name="mdns-resolve")
        self._resolving[name] = task
        task.add_done_callback(lambda t: self._resolving.pop(name, None) if self._resolving.get(name) is t else None)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc, _RESOLVE_TIMEOUT_MS) or not info.port:
            self._log("could not be resolved", name)
            return
        instance = name[: -len(service_type)].rstrip(".") if name.endswith(service_type) else name
        found = Found(service_type, instance, tuple(info.parsed_addresses()), info.port)
        if self._found.get(name) != found:
            self._found[name] = found
            self._log(f"found at {', '.join(found.addresses)} port {found.port}", name)
            self._publish()

    async def _sweep(self) -> None:
        """Re-resolve every found instance (from the cache while its records live); withdraw the silent ones."""
        assert self._zc is not None
        gone = []
        for name, found in list(self._found.items()):
            if name in self._resolving:
                continue
            info = AsyncServiceInfo(found.type, name)
            if not await info.async_request(self._zc, _RESOLVE_TIMEOUT_MS) or not info.port:
                gone.append(name)
        for name in gone:
            if self._found.pop(name, None) is not None:
                self._log("withdrawn: its records expired and it did not answer", name)
        if gone:
            self._publish()

    def _publish(self) -> None:
        exports = convert(self._site, self._settings.namespace, self._found.values())
        if self._metrics is not None:
            self._metrics.found.set(len(exports))
        if exports != self._last:
            self._last = exports
            self._on_exports(exports)

    def _log(self, what: str, name: str) -> None:
        if self._limiter.allow((what, name), time.monotonic()):
            log.info("LAN service %r %s", name, what)


class MdnsAnnouncer:
    """Keeps the LAN's mDNS announcements equal to the last `update(view, vips)`."""

    def __init__(self, settings: VmSettings, site_name: str, *, zeroconf: AsyncZeroconf | None = None) -> None:
        self._interfaces = settings.discovery.interfaces
        self._site = site_name
        self._given = zeroconf
        self._desired: dict[str, Announcement] = {}
        self._registered: dict[str, tuple[Announcement, ServiceInfo]] = {}
        self._changed = asyncio.Event()

    def update(self, view: MeshView, vips: VipTable) -> None:
        """Announce what `view` imports with the VIPs of `vips` (applied by `run`)."""
        desired = announcements(view, vips, self._site)
        if desired != self._desired:
            self._desired = desired
            self._changed.set()

    def announced(self) -> list[Announcement]:
        """What is announced now, for `meshfed status`."""
        return [a for a, _ in (self._registered[k] for k in sorted(self._registered))]

    async def run(self) -> None:
        """Announce until cancelled; withdraw everything (goodbye packets) on the way out."""
        azc = self._given or AsyncZeroconf(interfaces=list(self._interfaces) or InterfaceChoice.All)
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                await self._apply(azc, dict(self._desired))
        finally:
            await asyncio.shield(self._withdraw_all(azc))

    # ---------------------------------------------------------------- private

    async def _apply(self, azc: AsyncZeroconf, desired: Mapping[str, Announcement]) -> None:
        for key in [k for k in self._registered if k not in desired]:
            announcement, info = self._registered.pop(key)
            await (await azc.async_unregister_service(info))
            log.info("stopped announcing %s on the LAN", announcement.name)
        for key, announcement in desired.items():
            current = self._registered.get(key)
            if current is not None and current[0] == announcement:
                continue
            info = _info(announcement)
            if current is None:
                await (await azc.async_register_service(info, allow_name_change=True))
                log.info("announcing %s on the LAN at %s port %d", announcement.name,
                         ", ".join(announcement.addresses), announcement.port)
            else:
                info = current[1]
                _refresh(info, announcement)
                await (await azc.async_update_service(info))
            self._registered[key] = (announcement, info)

    async def _withdraw_all(self, azc: AsyncZeroconf) -> None:
        if self._registered:
            await azc.async_unregister_all_services()
            self._registered.clear()
        if self._given is None:
            await azc.async_close()


def _info(a: Announcement) -> ServiceInfo:
    return ServiceInfo(a.type, a.name, port=a.port, server=a.server, parsed_addresses=list(a.addresses))


def _refresh(info: ServiceInfo, a: Announcement) -> None:
    info.port = a.port
    info.addresses = [ipaddress.ip_address(x).packed for x in a.addresses]
