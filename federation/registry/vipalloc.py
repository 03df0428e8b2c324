"""Mesh-wide VIPs for ClusterSetIP services: the allocation records and the pure plan. No IO.

Every VM site answers the same VIP for the same service: an allocation is one key per service
(`<prefix>/mesh/vips/services/<ns>/<name>`) plus one claim key per address
(`<prefix>/mesh/vips/addresses/<address>`), both created only if absent, so two agents racing for
the same service or the same address cannot both win. A VIP is released only after no site has
exported its service for a grace period. `plan()` is the pure core; `registry.allocator` applies it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from federation.core.codec import dump_json, load_record
from federation.core.errors import MeshfedError, RecordError
from federation.core.records import ServiceType, check_ip
from federation.core.view import MeshView, ServiceId

Service = ServiceId
_SCHEMA = 1


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Allocation:
    """The VIPs of one service, and since when no site has exported it (None: in use)."""

    service: Service
    addresses: tuple[str, ...]
    unused_since: float | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """An address taken by a service (created before the allocation that uses it)."""

    address: str
    service: Service
    claimed_at: float


def encode_allocation(a: Allocation) -> bytes:
    """Canonical JSON of an allocation."""
    return dump_json({"schema": _SCHEMA, "kind": "VipAllocation", "namespace": a.service[0], "name": a.service[1],
                  "addresses": list(a.addresses), "unusedSince": a.unused_since})


def encode_claim(c: Claim) -> bytes:
    """Canonical JSON of an address claim."""
    return dump_json({"schema": _SCHEMA, "kind": "VipClaim", "address": c.address, "namespace": c.service[0],
                  "name": c.service[1], "claimedAt": c.claimed_at})


def decode_allocation(data: bytes) -> Allocation:
    """Validate and decode an allocation; raise RecordError."""
    obj = load_record(data, "VipAllocation", _SCHEMA)
    addrs = obj.get("addresses")
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise RecordError("addresses is not a list of strings")
    for a in addrs:
        _check_ip(a)
    unused = obj.get("unusedSince")
    if unused is not None and (not isinstance(unused, int | float) or isinstance(unused, bool)):
        raise RecordError("unusedSince is not a number or null")
    return Allocation((_s(obj, "namespace"), _s(obj, "name")), tuple(addrs),
                      None if unused is None else float(unused))


def decode_claim(data: bytes) -> Claim:
    """Validate and decode an address claim; raise RecordError."""
    obj = load_record(data, "VipClaim", _SCHEMA)
    at = obj.get("claimedAt")
    if not isinstance(at, int | float) or isinstance(at, bool):
        raise RecordError("claimedAt is not a number")
    address = _s(obj, "address")
    _check_ip(address)
    return Claim(address, (_s(obj, "namespace"), _s(obj, "name")), float(at))


# ---------------------------------------------------------------- the pure core


@dataclass(frozen=True, slots=True)
class Allocate:
    """Claim `addresses` for `service`, then create its allocation."""

    service: Service
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MarkUnused:
    """No site exports the service any more: start its grace period."""

    service: Service
    old: bytes
    new: bytes


@dataclass(frozen=True, slots=True)
class MarkUsed:
    """A site exports the service again: stop its grace period."""

    service: Service
    old: bytes
    new: bytes


@dataclass(frozen=True, slots=True)
class Release:
    """The grace period is over: delete the allocation, then its claims."""

    service: Service
    old: bytes
    claims: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class DropClaim:
    """A claim no allocation uses (its agent died between the two writes), older than the grace period."""

    address: str
    old: bytes


Op = Allocate | MarkUnused | MarkUsed | Release | DropClaim


@dataclass(frozen=True, slots=True)
class State:
    """What etcd holds under the VIP prefix, decoded, with the raw bytes for compare-and-swap."""

    allocations: Mapping[Service, tuple[Allocation, bytes]]
    claims: Mapping[str, tuple[Claim, bytes]]


def wanted_services(view: MeshView) -> set[Service]:
    """ClusterSetIP services some site exports: the ones that need a VIP."""
    return {key for key, svc in view.services().items() if svc.type is ServiceType.CLUSTER_SET_IP}


def exported_services(view: MeshView) -> frozenset[Service]:
    """A cheap trigger: services some site exports as ClusterSetIP (conflicts not resolved)."""
    return frozenset(
        e.service for e in view.exports.values() if e.type is ServiceType.CLUSTER_SET_IP and e.site in view.sites
    )


def plan(state: State, wanted: Iterable[Service], *, now: float, grace: float,
         ranges: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list[Op]:
    """The operations that bring `state` to one allocation per wanted service, releasing after `grace`."""
    want = set(wanted)
    ops: list[Op] = []
    taken = set(state.claims)
    for service in sorted(want - set(state.allocations)):
        addrs = tuple(pick(service, net, taken) for net in ranges)
        taken.update(addrs)
        ops.append(Allocate(service, addrs))
    used: set[str] = set()
    for service, (alloc, raw) in sorted(state.allocations.items()):
        used.update(alloc.addresses)
        if service in want:
            if alloc.unused_since is not None:
                new = Allocation(alloc.service, alloc.addresses, None)
                ops.append(MarkUsed(service, raw, encode_allocation(new)))
        elif alloc.unused_since is None:
            new = Allocation(alloc.service, alloc.addresses, now)
            ops.append(MarkUnused(service, raw, encode_allocation(new)))
        elif now - alloc.unused_since >= grace:
            claims = tuple((a, state.claims[a][1]) for a in alloc.addresses
                           if a in state.claims and state.claims[a][0].service == service)
            ops.append(Release(service, raw, claims))
    for address, (claim, raw) in sorted(state.claims.items()):
        if address not in used and now - claim.claimed_at >= grace:
            ops.append(DropClaim(address, raw))
    return ops


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


def _s(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise RecordError(f"{name} is not a string")
    return value


def _check_ip(value: str) -> None:
    check_ip("address", value)
