"""Announcing imported mesh services on the VM's LAN via mDNS, for LAN clients that only speak DNS-SD.

`announcements` is the pure core (mesh view + VIPs -> what to announce); `MdnsAnnouncer` is the zeroconf
shell that registers, updates and withdraws (with goodbyes) to match. Each service is announced with its
VIP, so LAN clients need a route to the VIP range through this VM (see docs/install-vm.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from zeroconf import InterfaceChoice, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from federation.catalog import MeshView
from federation.model import Protocol
from federation.vm.discovery import service_label
from federation.vm.settings import VmSettings

log = logging.getLogger(__name__)


class VipSource(TypingProtocol):
    """Where a service's VIPs come from (the DNS allocator's view; same shape as federation.dns's)."""

    def addresses(self, namespace: str, name: str) -> tuple[str, ...]:
        """The VIPs of `namespace/name` on this site, none if it has none yet."""
        ...


@dataclass(frozen=True, slots=True)
class Announcement:
    """One DNS-SD instance to announce: type, instance label, host name, addresses and port."""

    type: str
    instance: str
    server: str
    addresses: tuple[str, ...]
    port: int

    @property
    def name(self) -> str:
        """The full instance name."""
        return f"{self.instance}.{self.type}"


def announcements(view: MeshView, vips: VipSource, own_site: str) -> dict[str, Announcement]:
    """What to announce: every TCP/UDP port of every service another site exports and that has a VIP.

    Services only this site exports are left out (LAN clients reach those directly, and re-announcing
    what LAN discovery found would loop).
    """
    out: dict[str, Announcement] = {}
    for (namespace, name), svc in view.services().items():
        if all(site == own_site for site in svc.sites):
            continue
        addresses = tuple(str(ipaddress.ip_address(a)) for a in vips.addresses(namespace, name))
        if not addresses:
            continue
        server = f"{service_label(f'{name}-{namespace}-{own_site}')}.local."
        for port in svc.ports:
            if port.protocol not in (Protocol.TCP, Protocol.UDP):
                continue
            a = Announcement(f"_{port.name}._{port.protocol.value.lower()}.local.", f"{name} ({namespace})",
                             server, addresses, port.port)
            out[a.name] = a
    return out


class MdnsAnnouncer:
    """Keeps the LAN's mDNS announcements equal to the last `update(view, vips)`."""

    def __init__(self, settings: VmSettings, site_name: str, *, zeroconf: AsyncZeroconf | None = None) -> None:
        self._interfaces = settings.discovery.interfaces
        self._site = site_name
        self._given = zeroconf
        self._desired: dict[str, Announcement] = {}
        self._registered: dict[str, tuple[Announcement, ServiceInfo]] = {}
        self._changed = asyncio.Event()

    def update(self, view: MeshView, vips: VipSource) -> None:
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
