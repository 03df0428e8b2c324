"""LAN discovery: browse DNS-SD (mDNS) types on the VM's LAN and export what is found.

`convert` is the pure core (found instances -> export records); `LanDiscovery` is the zeroconf shell.
An instance is withdrawn when its announcement goes away (goodbye) or its records' TTL expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from zeroconf import InterfaceChoice, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from federation.model import Endpoint, Protocol, ServiceExport, ServicePort, is_dns_label
from federation.ratelimit import LogLimiter
from federation.vm.settings import VmSettings

log = logging.getLogger(__name__)

_RESOLVE_TIMEOUT_MS = 3000
"""How long to wait for an instance's SRV and address records after its PTR appeared (RFC 6762 5.2 pacing)."""

SWEEP_INTERVAL = 5.0
"""Seconds between looks at the cache for found instances whose SRV or address records expired.

zeroconf raises PTR TTLs to at least 1125 s and only refreshes PTRs, so an announcer that died without
a goodbye would stay for ~19 minutes; its SRV/A records (120 s by default) expire much sooner, and an
instance whose records expired and that does not answer a fresh query (RFC 6762 5.2) is withdrawn.
"""


@dataclass(frozen=True, slots=True)
class Found:
    """One resolved DNS-SD instance."""

    type: str
    """The service type, e.g. `_http._tcp.local.`."""
    instance: str
    """The instance label, e.g. `Office Printer`."""
    addresses: tuple[str, ...]
    port: int


def convert(site: str, namespace: str, found: Iterable[Found]) -> list[ServiceExport]:
    """Export records for the found instances: one service each, named after the instance.

    The name is the instance label made a DNS label; an instance seen under several types, or two
    labels that map to the same name, get the type (then a hash) appended so names stay unique.
    Link-local addresses are dropped (other sites cannot reach them); an instance left without
    addresses is not exported.
    """
    usable = []
    for f in found:
        addresses = tuple(a for a in f.addresses if not ipaddress.ip_address(a).is_link_local)
        if addresses and 1 <= f.port <= 65535:
            usable.append((f, addresses))
    usable.sort(key=lambda item: (item[0].instance, item[0].type))
    base_count: dict[str, int] = {}
    for f, _ in usable:
        base_count[service_label(f.instance)] = base_count.get(service_label(f.instance), 0) + 1
    out: dict[str, ServiceExport] = {}
    for f, addresses in usable:
        port_name, proto = _port_of(f.type)
        name = service_label(f.instance)
        if base_count[name] > 1:
            name = service_label(f"{f.instance}-{port_name}")
        if name in out:
            name = service_label(f"{f.instance}-{port_name}", salt=f.instance + f.type)
        port = ServicePort(port_name, f.port, proto)
        out[name] = ServiceExport(site, namespace, name, (port,), endpoints=(Endpoint(addresses=addresses),))
    return [out[k] for k in sorted(out)]


def service_label(text: str, salt: str = "") -> str:
    """`text` as a DNS label: lower case, runs of other characters as '-', at most 63 chars."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if salt or not label:
        digest = hashlib.sha256((salt or text).encode()).hexdigest()[:8]
        label = f"{label[:54]}-{digest}".strip("-")
    return label[:63].rstrip("-")


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


def _port_of(service_type: str) -> tuple[str, Protocol]:
    """`_http._tcp.local.` -> ("http", TCP): the DNS-SD service name is the port name (RFC 6335 fits both)."""
    parts = service_type.split(".")
    name = service_label(parts[0].lstrip("_"))[:15].rstrip("-") or "port"
    proto = Protocol.UDP if len(parts) > 1 and parts[1] == "_udp" else Protocol.TCP
    if not is_dns_label(name):
        name = "port"
    return name, proto
