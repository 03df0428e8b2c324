"""Mesh-wide VIPs for ClusterSetIP services: the pure plan of allocations and releases. No IO.

Every VM site answers the same VIP for the same service: an allocation is one key per service
(`<prefix>/mesh/vips/services/<ns>/<name>`) plus one claim key per address
(`<prefix>/mesh/vips/addresses/<address>`), both created only if absent, so two agents racing for
the same service or the same address cannot both win. A VIP is released only after no site has
exported its service for a grace period. `plan()` is the pure core; `registry.allocator` applies it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federation.core.errors import MeshfedError
from federation.core.records import ServiceType
from federation.core.view import MeshView, ServiceId
from federation.core.vips import Allocation, Claim

Service = ServiceId
Record = Allocation | Claim
_SCHEMA = 1


# ---------------------------------------------------------------- the pure core


@dataclass(frozen=True, slots=True)
class Allocate:
    """Claim `addresses` for `service`, then create its allocation (both only if absent, or refused by readers)."""

    service: Service
    addresses: tuple[str, ...]
    reused: tuple[Claim, ...] = ()
    """Claims of `service` that no allocation uses (its allocation was lost, say to a forgery readers refuse):
    their addresses are taken again, so the service keeps its VIP."""


@dataclass(frozen=True, slots=True)
class Extend:
    """Claim `addresses` (families the allocation lacks and this site serves), then add them to it, if unchanged."""

    allocation: Allocation
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    """Start (`unused_since` a time) or stop (None) the grace period of an allocation, if unchanged."""

    allocation: Allocation
    unused_since: float | None


@dataclass(frozen=True, slots=True)
class Release:
    """The grace period is over: delete the allocation and its claims, if unchanged."""

    allocation: Allocation
    claims: tuple[Claim, ...]


@dataclass(frozen=True, slots=True)
class DropClaim:
    """A claim no allocation uses (its agent died between the two writes), older than the grace period."""

    claim: Claim


Op = Allocate | Extend | Mark | Release | DropClaim


def needs_vip(view: MeshView, service: Service) -> bool:
    """True for a ClusterSetIP service some site exports: it needs a VIP."""
    svc = view.service(*service)
    return svc is not None and svc.type is ServiceType.CLUSTER_SET_IP


def plan(view: MeshView, services: Iterable[Service] | None, *, now: float, grace: float,
         ranges: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
         pending: Iterable[Service] = (), refused: Iterable[Service] = ()) -> list[Op]:
    """The operations that bring `view`'s VIPs to one allocation per service that needs one, releasing
    after `grace`; for `services` only (None: every service and allocation, and stray claims).

    `pending` are services this allocator has just allocated and does not see in the view yet; `refused`, those
    whose allocation key holds a record this reader refuses or holds (its claims are not dropped meanwhile).
    `ranges` are the families this site serves: an allocation gets an address of a family only once some site
    serves it (an IPv6 VIP nobody listens on would only make AAAA answers that lead nowhere), and an allocation
    that lacks a family this site serves is extended with one (its other addresses never change).

    Only a new address needs the set of every address in use, so a pass over changed services that allocates
    nothing costs in proportion to them, not to the mesh.
    """
    allocations, claims = view.vips, view.claims
    keys = set(services) if services is not None else set(view.services()) | set(allocations)
    ops: list[Op] = []
    used: set[str] = set()
    taken: set[str] = set()
    waiting = set(pending)
    spare: dict[Service, list[Claim]] | None = None

    def in_use() -> None:
        if not taken:  # an address an allocation uses is never given again, claim or no claim
            used.update(a for alloc in allocations.values() for a in alloc.addresses)
            taken.update(claims, used, ("",))  # "" marks it computed, even for an empty mesh

    for service in sorted(keys):
        alloc = allocations.get(service)
        wanted = needs_vip(view, service)
        if alloc is None:
            if wanted and service not in waiting:
                in_use()
                if spare is None:
                    spare = {}
                    for c in claims.values():
                        if c.address not in used:
                            spare.setdefault(c.service, []).append(c)
                addrs, reused = [], []
                for net in ranges:
                    own = next((c for c in spare.get(service, ()) if ipaddress.ip_address(c.address) in net), None)
                    if own is not None:
                        reused.append(own)
                    addrs.append(own.address if own is not None else pick(service, net, taken))
                taken.update(addrs)
                ops.append(Allocate(service, tuple(addrs), tuple(reused)))
        elif wanted:
            if alloc.unused_since is not None:
                ops.append(Mark(alloc, None))
            elif service not in waiting and (missing := _missing(alloc, ranges)):
                in_use()
                more = tuple(pick(service, net, taken) for net in missing)
                taken.update(more)
                ops.append(Extend(alloc, more))
        elif alloc.unused_since is None:
            ops.append(Mark(alloc, now))
        elif now - alloc.unused_since >= grace:
            ops.append(Release(alloc, tuple(claims[a] for a in alloc.addresses
                                            if a in claims and claims[a].service == service)))
    if services is None:
        in_use()
        held = set(refused)
        ops.extend(DropClaim(claim) for address, claim in sorted(claims.items())
                   if address not in used and claim.service not in held and now - claim.claimed_at >= grace)
    return ops


def _missing(alloc: Allocation, ranges: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
             ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    have = {ipaddress.ip_address(a).version for a in alloc.addresses}
    return [net for net in ranges if net.version not in have]


def unsealed(view: MeshView, due: Callable[[str], bool]) -> list[Allocation | Claim]:
    """The VIP records this allocator should sign again: unsigned ones (a mesh being upgraded) and those whose
    signer `due` says is retired (this site's renewed signer, or the signer of a site that left)."""
    out: list[Allocation | Claim] = [a for a in view.vips.values() if a.signed is None or due(a.signed[0])]
    out += [c for c in view.claims.values() if c.signed is None or due(c.signed[0])]
    return out


class SignedBy:
    """The view's VIP records by the site whose registry signer signed them, so that a site record change
    looks at that site's records only, not at every VIP of the mesh (issue 11). Pure.

    `site_of` names the site of a key id (a departed site's too); records unsigned, or signed by a key no site
    is known for, are kept under None and looked at on every pass, as they are due whatever the site; so are
    records that came or changed since the last pass. A pass thus returns what `unsealed` would, as long as
    whether a key id is due changes only with its site's record (or with every record: sites=None)."""

    def __init__(self, site_of: Callable[[str], str | None] | None = None) -> None:
        self._site_of = site_of or (lambda kid: None)
        self._vips: Mapping[Service, Allocation] = {}
        self._claims: Mapping[str, Claim] = {}
        self._by_site: dict[str | None, dict[object, Allocation | Claim]] = {}
        self._where: dict[object, str | None] = {}
        self._fresh: set[object] = set()
        """Records that came or changed since the last pass: looked at whatever their site."""
        self.looked_at = 0
        """Records whose signer was checked, in all (tests and the benchmark read it)."""

    def due(self, view: MeshView, sites: Iterable[str] | None, due: Callable[[str], bool]) -> list[Allocation | Claim]:
        """What `unsealed` returns, looking only at the records signed by `sites` (None: every record)."""
        self._follow(view)
        if sites is None:
            records = [r for bucket in self._by_site.values() for r in bucket.values()]
        else:
            chosen = {*sites, None}
            records = [r for s in chosen for r in self._by_site.get(s, {}).values()]
            records += [self._by_site[self._where[k]][k] for k in self._fresh if self._where[k] not in chosen]
        self._fresh.clear()
        self.looked_at += len(records)
        return [r for r in records if r.signed is None or due(r.signed[0])]

    def _follow(self, view: MeshView) -> None:
        """Index the records that came, went or changed since the last view (the maps are persistent: the same
        map object when no VIP record changed)."""
        if self._vips is not view.vips:
            self._follow_map("vip", self._vips, view.vips)
        if self._claims is not view.claims:
            self._follow_map("claim", self._claims, view.claims)
        self._vips, self._claims = view.vips, view.claims

    def _follow_map(self, tag: str, old: Mapping[Any, Record], new: Mapping[Any, Record]) -> None:
        for k in [k for k in old if k not in new]:
            self._drop((tag, k))
        for k, record in new.items():
            if old.get(k) is not record:
                self._put((tag, k), record)

    def _put(self, key: object, record: Allocation | Claim) -> None:
        self._drop(key)
        site = self._site_of(record.signed[0]) if record.signed is not None else None
        self._by_site.setdefault(site, {})[key] = record
        self._where[key] = site
        self._fresh.add(key)

    def _drop(self, key: object) -> None:
        self._fresh.discard(key)
        if key in self._where:
            site = self._where.pop(key)
            bucket = self._by_site[site]
            del bucket[key]
            if not bucket:
                del self._by_site[site]


def next_release(view: MeshView, grace: float) -> float | None:
    """When the earliest grace period ends (an allocation nobody uses, or a claim without one), if any."""
    times = [a.unused_since for a in view.vips.values() if a.unused_since is not None]
    return min(times) + grace if times else None


def pick(service: Service, net: ipaddress.IPv4Network | ipaddress.IPv6Network, taken: set[str]) -> str:
    """A free address in `net` for `service`: a hash of its name, then the next free one.

    Hashing makes agents that race for the same service try the same address, so they collide on
    the claim key and one of them backs off instead of both burning an address.
    """
    usable = net.num_addresses - 2  # leave out the network and the all-ones address
    digest = hashlib.sha256(f"{service[0]}/{service[1]}".encode()).digest()
    start = int.from_bytes(digest[:8], "big") % usable
    for i in range(min(usable, len(taken) + 1)):
        address = str(net.network_address + 1 + (start + i) % usable)
        if address not in taken:
            return address
    raise MeshfedError(f"VIP range {net} is full")
