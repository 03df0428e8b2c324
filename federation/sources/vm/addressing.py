"""What the VIP interface should hold: the pure plan from wanted VIPs and the addresses found on it. No IO."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Vip = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class VipPlan:
    """Host addresses to add to and remove from the interface."""

    add: tuple[Vip, ...]
    remove: tuple[tuple[Vip, int], ...]

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


def plan(desired: Iterable[Vip], actual: Iterable[tuple[Vip, int]],
         prefixes: Mapping[Vip, int] | None = None) -> VipPlan:
    """What turns `actual` (address, prefix length) into exactly `desired` as host (/32, /128) addresses
    (or with the prefix length `prefixes` gives an address).

    Link-local addresses belong to the kernel and are left alone; a desired address held with another
    prefix length is removed and added back as a host address.
    """
    want = set(desired)
    lengths = prefixes or {}
    keep: set[Vip] = set()
    remove = []
    for address, prefixlen in actual:
        if address.is_link_local:
            continue
        if address in want and prefixlen == lengths.get(address, address.max_prefixlen) and address not in keep:
            keep.add(address)
        else:
            remove.append((address, prefixlen))
    add = sorted(want - keep, key=order)
    return VipPlan(tuple(add), tuple(sorted(remove, key=lambda r: order(r[0]))))


def order(address: Vip) -> tuple[int, int]:
    """IPv4 before IPv6, then numeric order."""
    return (address.version, int(address))


def range_addresses(ranges: Sequence[str]) -> dict[Vip, int]:
    """One address per VIP range, with the range's prefix length: what the interface holds in capture mode.

    Capture mode redirects every connection to the ranges, so the VIPs need not be local addresses; one
    address per range gives the kernel a route to the whole range on the VIP interface (connect() needs one
    before the output hook redirects) and a source address in it, instead of thousands of host addresses.
    """
    out: dict[Vip, int] = {}
    for r in ranges:
        net = ipaddress.ip_network(r, strict=False)
        out[net.network_address + 1] = net.prefixlen
    return out


def outside(vips: Iterable[Vip], ranges: Mapping[Vip, int]) -> frozenset[Vip]:
    """The addresses of `vips` in none of `ranges` (one address per range with its prefix length, as
    `range_addresses` gives them): what capture mode still holds one by one (headless endpoints' addresses)."""
    nets = [ipaddress.ip_network(f"{a}/{n}", strict=False) for a, n in ranges.items()]
    spans = [(n.version, int(n.network_address), int(n.broadcast_address)) for n in nets]
    return frozenset(v for v in vips if not any(v.version == version and low <= int(v) <= high
                                                for version, low, high in spans))
