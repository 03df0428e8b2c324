"""Addresses of remote headless endpoints, as this site answers them: one per endpoint of another network. Pure.

A headless service's endpoints on another network cannot be routed to from here. Each gets an address
of this site's own choosing (from `ranges`: on a VM site a range of its own, on a Kubernetes site a
static band of the service CIDR), which DNS answers for `<hostname>.<site>.<svc>.<ns>.svc.clusterset.local`
and the service name, and where the egress listens to send the client to that one endpoint through its
site's gateway. The address means something only at this site: nothing is written to the registry,
nothing is signed, and memory follows the headless endpoints this site imports (the `imports:` scoping
decides what the view holds), not the mesh.

    book = EndpointAllocator(["240.241.0.0/16"], "west", "net-2")
    table = book.update(view)                       # incremental: only the services the view changed
    table.get(("shop", "db"))                       # (RemoteEndpoint("east", "db-0", "240.241.12.7", ...), ...)

The address of an endpoint is a hash of (namespace, service, site, hostname) into the ranges, probing
forward past taken ones, and it keeps its address while it exists: restarts and other sites' changes
give the same answers, and one endpoint's arrival never moves another.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import immutables

from federation.core.records import Endpoint, ServiceType
from federation.core.view import MeshView, ServiceId

EndpointKey = tuple[str, str, str, str]
"""(namespace, service, site, hostname)"""
LOG_DEPTH = 256
"""Tables whose changes a later one still names (a reader further behind compares every service)."""


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """An endpoint of `site` on another network, reached here at `address` (`hostname`: its DNS label)."""

    site: str
    hostname: str
    address: str
    endpoint: Endpoint


class EndpointAddresses(Mapping[ServiceId, tuple[RemoteEndpoint, ...]]):
    """Service -> its remote endpoints with their addresses here (immutable). A service's tuple is the same
    object until that service's endpoints or addresses change; `changes_since` names the services that
    changed since an earlier table of the same allocator, so a reader's work follows the change."""

    __slots__ = ("_far", "_log", "_services", "generation", "unplaced")

    def __init__(self, services: Mapping[ServiceId, tuple[RemoteEndpoint, ...]], unplaced: int = 0,
                 generation: int = 0, log: deque[tuple[int, frozenset[ServiceId]]] | None = None,
                 far: Mapping[ServiceId, frozenset[str]] | None = None) -> None:
        self._services = services
        self._far = far if far is not None else {}
        self.unplaced = unplaced
        """Remote endpoints left without an address (the ranges are full): DNS leaves them out."""
        self.generation = generation
        self._log = log

    def changes_since(self, other: EndpointAddresses) -> frozenset[ServiceId] | None:
        """The services whose entry differs from `other`'s (an earlier table); None: not known, compare all."""
        if other is self:
            return frozenset()
        if self._log is None or other._log is not self._log or other.generation > self.generation:
            return None
        entries = [(g, c) for g, c in self._log if other.generation < g <= self.generation]
        if len(entries) != self.generation - other.generation:
            return None  # older than the log keeps
        return frozenset().union(*(c for _, c in entries))

    def __getitem__(self, key: ServiceId) -> tuple[RemoteEndpoint, ...]:
        return self._services[key]

    def __iter__(self) -> Iterator[ServiceId]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)

    def far(self, key: ServiceId) -> frozenset[str]:
        """The sites exporting `key` from another network (their endpoints: at an address here, or left out)."""
        return self._far.get(key, frozenset())

    def addresses(self) -> dict[ServiceId, tuple[str, ...]]:
        """Service -> the addresses of its remote endpoints (what a VIP interface holds)."""
        return {k: tuple(r.address for r in v) for k, v in self._services.items()}


NONE = EndpointAddresses({})


def hostname_of(ep: Endpoint) -> str:
    """The endpoint's DNS label: its hostname, else its first address with dashes (as CoreDNS names it)."""
    if ep.hostname:
        return ep.hostname
    return ep.addresses[0].replace(".", "-").replace(":", "-") if ep.addresses else ""


def remote_sites(view: MeshView, service: ServiceId, own_site: str, own_network: str) -> list[str]:
    """The sites exporting headless `service` from another network than `own_network`."""
    svc = view.service(*service)
    if svc is None or svc.type is not ServiceType.HEADLESS:
        return []
    out = []
    for export in svc.exports:
        site = view.sites.get(export.site)
        if export.site != own_site and site is not None and site.network != own_network:
            out.append(export.site)
    return out


class EndpointAllocator:
    """Keeps an address per remote headless endpoint, service by service (`update` costs the change)."""

    def __init__(self, ranges: Sequence[str], own_site: str, own_network: str) -> None:
        self.own_site = own_site
        self.own_network = own_network
        self._ranges = [ipaddress.ip_network(r, strict=False) for r in ranges]
        self._size = sum(_usable(n) for n in self._ranges)
        self._taken: dict[int, EndpointKey] = {}
        self._slot: dict[EndpointKey, int] = {}
        self._services: immutables.Map[ServiceId, tuple[RemoteEndpoint, ...]] = immutables.Map()
        self._pending: dict[ServiceId, tuple[RemoteEndpoint, ...]] = {}
        self._far: immutables.Map[ServiceId, frozenset[str]] = immutables.Map()
        self._log: deque[tuple[int, frozenset[ServiceId]]] = deque(maxlen=LOG_DEPTH)
        self._generation = 0
        self._last: MeshView | None = None
        self._table = NONE
        self._unplaced: dict[ServiceId, int] = {}
        """Services with endpoints the full ranges left without an address: tried again when one is freed."""
        self._freed = False
        self._far_now: dict[ServiceId, frozenset[str]] = {}

    @property
    def capacity(self) -> int:
        """How many endpoints the ranges can hold."""
        return self._size

    def update(self, view: MeshView) -> EndpointAddresses:
        """The addresses for `view`; after a registry change only the services it changed are looked at."""
        if not view.complete:
            return self._table
        before = self._last
        diff = None
        if before is not None and view.history is not None and view.history is before.history:
            diff = view.changes_since(before.generation)
        keys = sorted({*view.services(), *self._services}) if diff is None else sorted(diff.services)
        self._last = view
        changed = False
        self._freed = False
        self._pending, self._far_now = {}, {}
        for key in keys:
            changed |= self._service(view, key)
        if self._unplaced and self._freed:
            # Addresses came free while endpoints wait for one: those services try again (smallest first).
            for key in sorted(self._unplaced.keys() - set(keys)):
                changed |= self._service(view, key)
        if changed or diff is None:
            mutation, far = self._services.mutate(), self._far.mutate()
            for key, new in self._pending.items():
                if new:
                    mutation[key] = new
                elif key in mutation:
                    del mutation[key]
            for key, sites in self._far_now.items():
                if sites:
                    far[key] = sites
                elif key in far:
                    del far[key]
            self._services, self._far = mutation.finish(), far.finish()
            self._generation += 1
            self._log.append((self._generation, frozenset(self._pending)))
            self._table = EndpointAddresses(self._services, sum(self._unplaced.values()), self._generation, self._log,
                                            self._far)
        return self._table

    def _service(self, view: MeshView, key: ServiceId) -> bool:
        """Bring one service's addresses to `view`; True if they changed."""
        svc = view.service(*key)
        wanted: list[tuple[str, str, Endpoint]] = []
        remote: frozenset[str] = frozenset()
        if svc is not None:
            remote = frozenset(remote_sites(view, key, self.own_site, self.own_network))
            wanted = [(e.site, hostname_of(ep), ep) for e in svc.exports if e.site in remote
                      for ep in e.endpoints if hostname_of(ep)]
        far_changed = remote != self._far.get(key, frozenset())
        if far_changed:
            self._far_now[key] = remote
        old = self._services.get(key, ())
        keep = {(key[0], key[1], site, host) for site, host, _ in wanted}
        for r in old:
            ek = (key[0], key[1], r.site, r.hostname)
            if ek not in keep:
                del self._taken[self._slot.pop(ek)]
                self._freed = True
        out: list[RemoteEndpoint] = []
        unplaced = 0
        for site, host, ep in wanted:
            ek = (key[0], key[1], site, host)
            slot = self._slot.get(ek)
            if slot is None:
                slot = self._place(ek)
                if slot is None:
                    unplaced += 1
                    continue
            out.append(RemoteEndpoint(site, host, self._address(slot), ep))
        new = tuple(out)
        waiting = self._unplaced.pop(key, 0)
        if unplaced:
            self._unplaced[key] = unplaced
        if new == old and not far_changed:
            return waiting != unplaced
        self._pending[key] = new
        return True

    def _place(self, ek: EndpointKey) -> int | None:
        if not self._size or len(self._taken) >= self._size:
            return None
        start = int.from_bytes(hashlib.sha256("/".join(ek).encode()).digest()[:8], "big") % self._size
        slot = start
        while slot in self._taken:
            slot = (slot + 1) % self._size
        self._taken[slot] = ek
        self._slot[ek] = slot
        return slot

    def _address(self, slot: int) -> str:
        for net in self._ranges:
            n = _usable(net)
            if slot < n:
                return str(net.network_address + slot + (0 if net.version == 4 and net.prefixlen >= 31 else 1))
            slot -= n
        raise IndexError(slot)


def _usable(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    """Addresses of `net` an endpoint may take: not the network address (nor IPv4's broadcast); at most 2**24."""
    if net.version == 4 and net.prefixlen >= 31:
        n = net.num_addresses
    else:
        n = net.num_addresses - (2 if net.version == 4 else 1)
    return min(n, 2**24)
