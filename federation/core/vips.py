"""Mesh-wide VIP records: one allocation per ClusterSetIP service and one claim per address. Pure.

Every VM site answers the same VIP for the same service: an allocation is one key per service
(`<prefix>/mesh/vips/services/<ns>/<name>`) plus one claim key per address
(`<prefix>/mesh/vips/addresses/<address>`), both created only if absent, so two agents racing for
the same service or the same address cannot both win. The catalog keeps them in the mesh view;
`federation.registry.vipalloc` plans allocations and releases, `federation.registry.allocator` applies
them to etcd.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.codec import dump_json, load_record
from federation.core.errors import RecordError
from federation.core.records import check_ip

ServiceId = tuple[str, str]
_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Allocation:
    """The VIPs of one service, and since when no site has exported it (None: in use)."""

    service: ServiceId
    addresses: tuple[str, ...]
    unused_since: float | None = None
    revision: int = field(default=0, compare=False)
    """The etcd revision the record was read at (for compare-and-swap); 0 when not read from etcd."""
    signed: tuple[str, int] | None = field(default=None, compare=False)
    """(key id, signed-at ms) of the signature the stored record carries; None when unsigned."""


@dataclass(frozen=True, slots=True)
class Claim:
    """An address taken by a service (created before the allocation that uses it)."""

    address: str
    service: ServiceId
    claimed_at: float
    revision: int = field(default=0, compare=False)
    """The etcd revision the record was read at (for compare-and-swap)."""
    signed: tuple[str, int] | None = field(default=None, compare=False)
    """(key id, signed-at ms) of the signature the stored record carries; None when unsigned."""


def encode_allocation(a: Allocation) -> bytes:
    """Canonical JSON of an allocation."""
    return dump_json({"schema": _SCHEMA, "kind": "VipAllocation", "namespace": a.service[0], "name": a.service[1],
                      "addresses": list(a.addresses), "unusedSince": a.unused_since})


def encode_claim(c: Claim) -> bytes:
    """Canonical JSON of an address claim."""
    return dump_json({"schema": _SCHEMA, "kind": "VipClaim", "address": c.address, "namespace": c.service[0],
                      "name": c.service[1], "claimedAt": c.claimed_at})


def decode_allocation(data: bytes, revision: int = 0) -> Allocation:
    """Validate and decode an allocation; raise RecordError."""
    obj = load_record(data, "VipAllocation", _SCHEMA)
    addrs = obj.get("addresses")
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise RecordError("addresses is not a list of strings")
    for a in addrs:
        check_ip("address", a)
    unused = obj.get("unusedSince")
    if unused is not None and (not isinstance(unused, int | float) or isinstance(unused, bool)):
        raise RecordError("unusedSince is not a number or null")
    return Allocation((_s(obj, "namespace"), _s(obj, "name")), tuple(addrs),
                      None if unused is None else float(unused), revision, _signed(obj))


def decode_claim(data: bytes, revision: int = 0) -> Claim:
    """Validate and decode an address claim; raise RecordError."""
    obj = load_record(data, "VipClaim", _SCHEMA)
    at = obj.get("claimedAt")
    if not isinstance(at, int | float) or isinstance(at, bool):
        raise RecordError("claimedAt is not a number")
    address = _s(obj, "address")
    check_ip("address", address)
    return Claim(address, (_s(obj, "namespace"), _s(obj, "name")), float(at), revision, _signed(obj))


class VipAddresses(Mapping[ServiceId, tuple[str, ...]]):
    """The addresses of each service's allocation, of one IP family (4, 6, or 0 for both): how DNS and the
    egress read the mesh view's VIPs. A service without an allocation is not in it."""

    __slots__ = ("_allocations", "_family")

    def __init__(self, allocations: Mapping[ServiceId, Allocation], family: int = 4) -> None:
        self._allocations = allocations
        self._family = family

    @property
    def allocations(self) -> Mapping[ServiceId, Allocation]:
        """What this reads: a view's `vips` (its changes tell which services' addresses changed)."""
        return self._allocations

    def __getitem__(self, key: ServiceId) -> tuple[str, ...]:
        return self._pick(self._allocations[key].addresses)

    def get(self, key: ServiceId, default: Any = None) -> Any:
        allocation = self._allocations.get(key)
        return self._pick(allocation.addresses) if allocation is not None else default

    def __iter__(self) -> Iterator[ServiceId]:
        return iter(self._allocations)

    def __len__(self) -> int:
        return len(self._allocations)

    def _pick(self, addresses: tuple[str, ...]) -> tuple[str, ...]:
        if not self._family:
            return addresses
        return tuple(a for a in addresses if (":" in a) == (self._family == 6))


def family_of(address: str) -> int:
    """4 or 6."""
    return ipaddress.ip_address(address).version


def _signed(obj: dict[str, Any]) -> tuple[str, int] | None:
    """The key id and time of the record's signature (verified by the reader's check, not here)."""
    sig = obj.get("sig")
    if not isinstance(sig, dict):
        return None
    kid, at = sig.get("kid"), sig.get("at")
    return (kid, at) if isinstance(kid, str) and isinstance(at, int) and not isinstance(at, bool) else None


def _s(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise RecordError(f"{name} is not a string")
    return value
