"""Where a captured connection was going: (VIP, port) -> (namespace, service, port name). Pure.

In capture mode one egress listener receives every connection to the VIP ranges; the original
destination (VIP and port) names the service port through this index. It is kept per service: a
change of one service (its VIPs, its ports, whether it is imported) is one `apply` whose cost is that
service's VIPs x ports, whatever the size of the mesh.

    index = build(wanted(view, vips, "west", include_own=True).values())     # from scratch
    web = ("shop", "web")
    index.apply(capture_of(web, view.service(*web), vips.get(web, ()), "west", include_own=True))
    index.lookup(ipaddress.ip_address("240.240.0.7"), 8080)                    # ("shop", "web", "http")

Two services claiming the same VIP and port (only while an allocation is being replaced) resolve to the
smaller key, so the index does not depend on the order of the changes that built it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from federation.core.records import Protocol, ServiceType
from federation.core.view import FederatedService, MeshView, ServiceId, VipTable

ListenerKey = tuple[str, str, str]
"""(namespace, service, port name), as gateway.balancing names an egress listener."""
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Destination = tuple[Address, int]
"""(VIP, port number) a client connected to."""


@dataclass(frozen=True, slots=True)
class Captured:
    """`service` is reached at each of `vips` on each of `ports` ((port name, port number), TCP only)."""

    service: ServiceId
    vips: tuple[str, ...]
    ports: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Released:
    """`service` is no longer reached through the capture listener."""

    service: ServiceId


Change = Captured | Released


def captured_type(svc: FederatedService) -> bool:
    """Whether the capture listener serves `svc` (ClusterSetIP: clients use its VIP), instead of listeners."""
    return svc.type is ServiceType.CLUSTER_SET_IP


def capture_of(key: ServiceId, svc: FederatedService | None, vips: tuple[str, ...], own_site: str,
               include_own: bool) -> Change:
    """What the index should hold for service `key` (None: gone from the mesh): its VIPs and TCP ports, or nothing.

    A service is captured when it is ClusterSetIP, has a VIP and a TCP port, and is exported by another
    site (or by any site, with `include_own`: a VM's clients reach its own services at their VIP too).
    """
    if svc is None or not captured_type(svc) or not (include_own or any(e.site != own_site for e in svc.exports)):
        return Released(key)
    ports = tuple(sorted((p.name, p.port) for p in svc.ports if p.protocol is Protocol.TCP and p.port))
    addresses = tuple(sorted({str(a) for a in map(_address, vips) if a is not None}))
    if not ports or not addresses:
        return Released(key)
    return Captured(key, addresses, ports)


def wanted(view: MeshView, vips: VipTable, own_site: str, include_own: bool) -> dict[ServiceId, Captured]:
    """Every service the capture listener serves now, from scratch (O(services))."""
    out: dict[ServiceId, Captured] = {}
    for key, svc in view.services().items():
        change = capture_of(key, svc, vips.get(key, ()), own_site, include_own)
        if isinstance(change, Captured):
            out[key] = change
    return out


def changes(before: Mapping[ServiceId, Captured], after: Mapping[ServiceId, Captured]) -> list[Change]:
    """The changes that turn `before` into `after` (releases first, then captures, each sorted)."""
    out: list[Change] = [Released(k) for k in sorted(before) if k not in after]
    out.extend(after[k] for k in sorted(after) if before.get(k) != after[k])
    return out


class DestinationIndex:
    """(VIP, port) -> listener key, kept per service; `apply` costs what the changed service holds."""

    __slots__ = ("_claims", "_services", "_winner")

    def __init__(self) -> None:
        self._services: dict[ServiceId, Captured] = {}
        self._claims: dict[Destination, set[ListenerKey]] = {}
        self._winner: dict[Destination, ListenerKey] = {}

    def lookup(self, address: Address, port: int) -> ListenerKey | None:
        """The service port a connection to `address`:`port` is for, or None (reset it)."""
        return self._winner.get((address, port))

    def apply(self, change: Change) -> None:
        """Capture one service as `change` says (replacing what it held), or release it."""
        service = change.service
        old = self._services.pop(service, None)
        if old is not None:
            for dest, key in _destinations(old):
                claims = self._claims[dest]
                claims.discard(key)
                self._settle(dest, claims)
        if isinstance(change, Captured):
            self._services[service] = change
            for dest, key in _destinations(change):
                claims = self._claims.setdefault(dest, set())
                claims.add(key)
                self._settle(dest, claims)

    @property
    def services(self) -> Mapping[ServiceId, Captured]:
        """What each captured service is reached at."""
        return self._services

    def table(self) -> dict[Destination, ListenerKey]:
        """Every destination and its service port (a copy; for status and tests)."""
        return dict(self._winner)

    def __len__(self) -> int:
        return len(self._winner)

    def _settle(self, dest: Destination, claims: set[ListenerKey]) -> None:
        if not claims:
            del self._claims[dest]
            self._winner.pop(dest, None)
        else:
            self._winner[dest] = min(claims)


def build(captured: Iterable[Captured]) -> DestinationIndex:
    """An index holding exactly `captured` (one entry per service)."""
    index = DestinationIndex()
    for change in captured:
        index.apply(change)
    return index


def _destinations(c: Captured) -> set[tuple[Destination, ListenerKey]]:
    """Each destination of `c` once (two spellings of one IPv6 VIP are one address)."""
    addresses = {a for a in map(_address, c.vips) if a is not None}
    return {((a, number), (c.service[0], c.service[1], name)) for a in addresses for name, number in c.ports}


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> Address | None:
    """A VIP parsed once (the same few thousand strings come back with every change); None if invalid."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class CapturedServices:
    """The services a capture listener serves, kept in `index` and followed service by service.

    `update(view, vips)` looks at every service; `update(view, vips, services)` only at `services` (the
    ones a registry change touched), so following the mesh costs in proportion to the change.
    """

    __slots__ = ("_captured", "include_own", "index", "own_site")

    def __init__(self, own_site: str, include_own: bool, index: DestinationIndex | None = None) -> None:
        self.own_site = own_site
        self.include_own = include_own
        self.index = index if index is not None else DestinationIndex()
        self._captured: dict[ServiceId, Captured] = {}

    def update(self, view: MeshView, vips: VipTable,
               services: Iterable[ServiceId] | None = None) -> list[ListenerKey]:
        """Bring the index to `view` (for `services` only, if given); the service ports newly captured or changed."""
        if services is None:
            now = wanted(view, vips, self.own_site, self.include_own)
            todo = changes(self._captured, now)
            self._captured = now
        else:
            todo = []
            for key in sorted(services):
                change = capture_of(key, view.service(*key), vips.get(key, ()), self.own_site, self.include_own)
                if isinstance(change, Captured):
                    if self._captured.get(key) != change:
                        self._captured[key] = change
                        todo.append(change)
                elif self._captured.pop(key, None) is not None:
                    todo.append(change)
        for change in todo:
            self.index.apply(change)
        return [(*c.service, name) for c in todo if isinstance(c, Captured) for name, _ in c.ports]

    def __len__(self) -> int:
        return len(self.index)
