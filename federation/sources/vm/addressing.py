"""What the VIP interface should hold: the pure plan from wanted VIPs and the addresses found on it. No IO."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Vip = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class VipPlan:
    """Host addresses to add to and remove from the interface."""

    add: tuple[Vip, ...]
    remove: tuple[tuple[Vip, int], ...]

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


def plan(desired: Iterable[Vip], actual: Iterable[tuple[Vip, int]]) -> VipPlan:
    """What turns `actual` (address, prefix length) into exactly `desired` as host (/32, /128) addresses.

    Link-local addresses belong to the kernel and are left alone; a desired address held with another
    prefix length is removed and added back as a host address.
    """
    want = set(desired)
    keep: set[Vip] = set()
    remove = []
    for address, prefixlen in actual:
        if address.is_link_local:
            continue
        if address in want and prefixlen == address.max_prefixlen and address not in keep:
            keep.add(address)
        else:
            remove.append((address, prefixlen))
    add = sorted(want - keep, key=order)
    return VipPlan(tuple(add), tuple(sorted(remove, key=lambda r: order(r[0]))))


def order(address: Vip) -> tuple[int, int]:
    """IPv4 before IPv6, then numeric order."""
    return (address.version, int(address))
