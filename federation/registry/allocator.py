"""The VIP allocator: applies the pure plan of `registry.vipalloc` to etcd with compare-and-swap."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from federation.core.errors import MeshfedError, RecordError
from federation.core.keys import Keys
from federation.core.view import MeshView, VipTable
from federation.registry.vipalloc import (
    Allocate,
    Allocation,
    Claim,
    MarkUnused,
    MarkUsed,
    Op,
    Release,
    Service,
    State,
    decode_allocation,
    decode_claim,
    encode_allocation,
    encode_claim,
    exported_services,
    plan,
    wanted_services,
)
from federation.runtime.values import Changes, Readable, Value, wait_until

log = logging.getLogger(__name__)


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
    """Keeps every exported ClusterSetIP service allocated a VIP in etcd; `table` holds what etcd says."""

    def __init__(
        self,
        client: CasClient,
        keys: Keys,
        mesh: Readable[MeshView],
        *,
        ranges: Sequence[str] = ("240.240.0.0/16",),
        grace: float = 600.0,
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keys = keys
        self._mesh = mesh
        self._ranges = [ipaddress.ip_network(r) for r in ranges]
        self._grace = grace
        self._interval = interval
        self._clock = clock
        self.table: Value[VipTable] = Value(MappingProxyType({}), name="vip table")
        """Every allocation as last read from etcd (kept while etcd is away)."""
        self.rejected = 0

    async def run(self) -> None:
        """Reconcile every `interval` seconds, and at once when the set of exported services changes.

        Nothing happens before the mirror's initial sync (an empty view would release nothing, but
        would allocate nothing either). Most registry changes are endpoint churn; listing every
        allocation from etcd on each would load etcd for nothing, so a change reconciles only when the
        set of exported ClusterSetIP services changed. The interval picks up other agents' work and
        grace expiry. Keeps the last table while etcd is away.
        """
        await wait_until(self._mesh, lambda v: v.complete)
        loop = asyncio.get_running_loop()
        due = loop.time()
        last: frozenset[Service] | None = None
        with Changes(self._mesh) as changes:
            while True:
                view = self._mesh.get()
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
                        view = self._mesh.get()
                    due = loop.time() + self._interval
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - loop.time())):  # not wait_for: gh-86296
                        await changes.wait()

    def seed(self, kvs: Mapping[str, Any]) -> None:
        """Take the allocations of a saved registry listing (key -> value with `.value`) as the table, until
        etcd can be read (an agent restarted while etcd is away answers the VIPs it knew)."""
        state = self._state({k: v for k, v in kvs.items() if k.startswith(self._keys.mesh("vips") + "/")})
        self.table.set(MappingProxyType({svc: alloc.addresses for svc, (alloc, _) in state.allocations.items()}))

    async def reconcile(self, view: MeshView) -> list[Op]:
        """One pass: read the VIP keys, apply the plan, read again; returns the ops attempted."""
        state = await self._read()
        ops = plan(state, wanted_services(view), now=self._clock(), grace=self._grace, ranges=self._ranges)
        for op in ops:
            await self._apply(op)
        if ops:
            state = await self._read()
        self.table.set(MappingProxyType({svc: alloc.addresses for svc, (alloc, _) in state.allocations.items()}))
        return ops

    # -- private

    def _alloc_key(self, service: Service) -> str:
        return self._keys.mesh("vips", "services", *service)

    def _claim_key(self, address: str) -> str:
        return self._keys.mesh("vips", "addresses", address)

    async def _read(self) -> State:
        kvs, _ = await self._client.get_prefix(self._keys.mesh("vips") + "/")
        return self._state(kvs)

    def _state(self, kvs: Mapping[str, Any]) -> State:
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
