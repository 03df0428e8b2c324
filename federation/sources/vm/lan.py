"""What a VM site finds on and announces to its LAN (DNS-SD), as pure cores. No IO.

`convert` turns found DNS-SD instances into export records; `announcements` says which imported mesh
services to announce, with their VIPs. `federation.sources.vm.mdns` is the zeroconf shell around both.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from federation.core.records import Endpoint, Protocol, ServiceExport, ServicePort, is_dns_label
from federation.core.view import MeshView, VipTable


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


def _port_of(service_type: str) -> tuple[str, Protocol]:
    """`_http._tcp.local.` -> ("http", TCP): the DNS-SD service name is the port name (RFC 6335 fits both)."""
    parts = service_type.split(".")
    name = service_label(parts[0].lstrip("_"))[:15].rstrip("-") or "port"
    proto = Protocol.UDP if len(parts) > 1 and parts[1] == "_udp" else Protocol.TCP
    if not is_dns_label(name):
        name = "port"
    return name, proto


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


def announcements(view: MeshView, vips: VipTable, own_site: str) -> dict[str, Announcement]:
    """What to announce: every TCP/UDP port of every service another site exports and that has a VIP.

    Services only this site exports are left out (LAN clients reach those directly, and re-announcing
    what LAN discovery found would loop).
    """
    out: dict[str, Announcement] = {}
    for (namespace, name), svc in view.services().items():
        if all(site == own_site for site in svc.sites):
            continue
        addresses = tuple(str(ipaddress.ip_address(a)) for a in vips.get((namespace, name), ()))
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
