"""Mesh-wide VIPs for ClusterSetIP services on VM sites, allocated in etcd with compare-and-swap.

Every VM site answers the same VIP for the same service: an allocation is one key per service
(`<prefix>/mesh/vips/services/<ns>/<name>`) plus one claim key per address
(`<prefix>/mesh/vips/addresses/<address>`), both created only if absent, so two agents racing for
the same service or the same address cannot both win. A VIP is released only after no site has
exported its service for a grace period. `plan()` is the pure core; `VipAllocator` applies it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from federation.catalog import MeshView
from federation.errors import MeshfedError, RecordError
from federation.model import Keys, ServiceType

log = logging.getLogger(__name__)

Service = tuple[str, str]
"""(namespace, name)"""
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
    return _dump({"schema": _SCHEMA, "kind": "VipAllocation", "namespace": a.service[0], "name": a.service[1],
                  "addresses": list(a.addresses), "unusedSince": a.unused_since})


def encode_claim(c: Claim) -> bytes:
    """Canonical JSON of an address claim."""
    return _dump({"schema": _SCHEMA, "kind": "VipClaim", "address": c.address, "namespace": c.service[0],
                  "name": c.service[1], "claimedAt": c.claimed_at})


def decode_allocation(data: bytes) -> Allocation:
    """Validate and decode an allocation; raise RecordError."""
    obj = _load(data, "VipAllocation")
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
    obj = _load(data, "VipClaim")
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


# ---------------------------------------------------------------- the shell


class KV(Protocol):
    """What an etcd value read gives back (federation.registry.etcd.KV fits)."""

    @property
    def value(self) -> bytes: ...


class CasClient(Protocol):
    """The compare-and-swap subset of federation.registry.etcd.EtcdClient the allocator needs."""

    async def get_prefix(self, prefix: str) -> tuple[Mapping[str, Any], int]: ...
    async def put_if_absent(self, key: str, value: bytes, lease: int = 0) -> bool: ...
    async def replace(self, key: str, old: bytes, new: bytes) -> bool: ...
    async def delete_if(self, key: str, value: bytes) -> bool: ...


class VipAllocator:
    """Keeps every exported ClusterSetIP service allocated a VIP in etcd; a `VipSource` for the DNS server."""

    def __init__(
        self,
        client: CasClient,
        keys: Keys,
        *,
        ranges: Sequence[str] = ("240.240.0.0/16",),
        grace: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keys = keys
        self._ranges = [ipaddress.ip_network(r) for r in ranges]
        self._grace = grace
        self._subscribers: list[Callable[[], None]] = []
        self._clock = clock
        self._table: dict[Service, tuple[str, ...]] = {}
        self._kick = asyncio.Event()
        self.rejected = 0

    def addresses(self, namespace: str, name: str) -> tuple[str, ...]:
        """The VIPs of `namespace/name` as last read from etcd (VipSource)."""
        return self._table.get((namespace, name), ())

    @property
    def table(self) -> Mapping[Service, tuple[str, ...]]:
        """Every allocation last read from etcd."""
        return dict(self._table)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever the table changes (e.g. `DnsServer.refresh`)."""
        self._subscribers.append(callback)

    def kick(self) -> None:
        """Reconcile soon (call after every registry change)."""
        self._kick.set()

    async def run(self, views: Callable[[], MeshView], interval: float = 5.0) -> None:
        """Reconcile every `interval` seconds, and at once when a kick brings a new set of services.

        Kicks come with every registry change, mostly endpoint churn; listing every allocation from
        etcd on each would load etcd for nothing, so a kick reconciles only when the set of exported
        ClusterSetIP services changed. The interval picks up other agents' work and grace expiry.
        Keeps the last table while etcd is away.
        """
        loop = asyncio.get_running_loop()
        due = loop.time()
        last: frozenset[Service] | None = None
        while True:
            view = views()
            exported = exported_services(view)
            if loop.time() >= due or exported != last:
                last = exported
                # A pass that changed something runs again at once (bounded): a lost race is settled there.
                for _ in range(3):
                    try:
                        if not await self.reconcile(view):
                            break
                    except MeshfedError as exc:
                        log.warning("vip allocation: %s; keeping the last known VIPs", exc)
                        break
                    view = views()
                due = loop.time() + interval
            self._kick.clear()
            try:
                async with asyncio.timeout(max(0.0, due - loop.time())):  # not wait_for: gh-86296
                    await self._kick.wait()
            except TimeoutError:
                pass

    async def reconcile(self, view: MeshView) -> list[Op]:
        """One pass: read the VIP keys, apply the plan, read again; returns the ops attempted."""
        state = await self._read()
        ops = plan(state, wanted_services(view), now=self._clock(), grace=self._grace, ranges=self._ranges)
        for op in ops:
            await self._apply(op)
        if ops:
            state = await self._read()
        table = {svc: alloc.addresses for svc, (alloc, _) in state.allocations.items()}
        if table != self._table:
            self._table = table
            for callback in self._subscribers:
                callback()
        return ops

    # -- private

    def _alloc_key(self, service: Service) -> str:
        return self._keys.mesh("vips", "services", *service)

    def _claim_key(self, address: str) -> str:
        return self._keys.mesh("vips", "addresses", address)

    async def _read(self) -> State:
        kvs, _ = await self._client.get_prefix(self._keys.mesh("vips") + "/")
        allocations: dict[Service, tuple[Allocation, bytes]] = {}
        claims: dict[str, tuple[Claim, bytes]] = {}
        head_a, head_c = self._alloc_key(("", ""))[:-1], self._claim_key("")
        for key, kv in kvs.items():
            raw = kv.value
            try:
                if key.startswith(head_a):
                    alloc = decode_allocation(raw)
                    if self._alloc_key(alloc.service) != key:
                        raise RecordError("allocation names another service than its key")
                    allocations[alloc.service] = (alloc, raw)
                elif key.startswith(head_c):
                    claim = decode_claim(raw)
                    if self._claim_key(claim.address) != key:
                        raise RecordError("claim names another address than its key")
                    claims[claim.address] = (claim, raw)
            except RecordError as exc:
                self.rejected += 1
                log.debug("vip allocation: skipped %s: %s", key, exc)
        return State(allocations, claims)

    async def _apply(self, op: Op) -> None:
        c = self._client
        if isinstance(op, Allocate):
            now = self._clock()
            mine: list[tuple[str, bytes]] = []
            for address in op.addresses:
                value = encode_claim(Claim(address, op.service, now))
                if not await c.put_if_absent(self._claim_key(address), value):
                    break  # another agent took it; the next pass picks again
                mine.append((address, value))
            else:
                alloc = encode_allocation(Allocation(op.service, op.addresses))
                if await c.put_if_absent(self._alloc_key(op.service), alloc):
                    log.info("vip allocation: %s/%s gets %s", *op.service, ", ".join(op.addresses))
                    return
            for address, value in mine:  # lost a race: give back what this pass claimed
                await c.delete_if(self._claim_key(address), value)
        elif isinstance(op, MarkUnused | MarkUsed):
            await c.replace(self._alloc_key(op.service), op.old, op.new)
        elif isinstance(op, Release):
            if await c.delete_if(self._alloc_key(op.service), op.old):
                log.info("vip allocation: released the VIPs of %s/%s", *op.service)
                for address, raw in op.claims:
                    await c.delete_if(self._claim_key(address), raw)
        else:
            await c.delete_if(self._claim_key(op.address), op.old)


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _load(data: bytes, kind: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.get("schema") != _SCHEMA or obj.get("kind") != kind:
        raise RecordError(f"not a schema {_SCHEMA} {kind} record")
    return obj


def _s(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise RecordError(f"{name} is not a string")
    return value


def _check_ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise RecordError(f"{value!r} is not an IP address") from None
