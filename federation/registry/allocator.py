"""The VIP allocator: applies the pure plan of `registry.vipalloc` to etcd, many VIPs per transaction.

It reads the VIPs from the mesh view (the mirror watches them with everything else), so it never lists
etcd itself, and it looks again only when services that need a VIP came or went, or when a grace
period ends. Writes are compare-and-swap transactions of up to `batch` services each: a new mesh of
5,000 services gets every VIP in about a hundred transactions.

Every record it writes is signed by the site's registry signer (`seal`), as the site's own records are, so
readers in `registry.signatures: require` take no VIP record a raw etcd writer made. Records signed by a
retired signer (this site's, renewed; or a departed site's) or by no one (a mesh being upgraded) are signed
again, compare-and-swap on their revision, so that they go on verifying.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from federation.core.errors import MeshfedError, RecordError
from federation.core.keys import Keys, VipKey
from federation.core.view import MeshView
from federation.core.vips import Allocation, Claim, encode_allocation, encode_claim
from federation.registry.etcd import Absent, Delete, Put, Unchanged
from federation.registry.sealing import Seal
from federation.registry.vipalloc import (
    Allocate,
    DropClaim,
    Extend,
    Mark,
    Op,
    Release,
    Service,
    SignedBy,
    next_release,
    plan,
)
from federation.runtime.values import Changes, Readable, wait_until

log = logging.getLogger(__name__)

BATCH = 40
"""Services per transaction: an allocation is three keys, each with a condition, under etcd's default
--max-txn-ops of 128."""
PENDING_FOR = 10.0
"""Seconds an allocation this agent wrote is awaited in the view before it may be planned again."""
RETRY = 2.0
"""Seconds before a failed pass is tried again when nothing else happens."""
HOLD = 0.5
"""Seconds new allocations wait after another agent got in first: its writes reach the view meanwhile."""


class TxnClient(Protocol):
    """The conditional-transaction part of federation.registry.etcd.EtcdClient the allocator needs."""

    async def commit_if(self, conditions: Sequence[Absent | Unchanged], ops: Sequence[Put | Delete]) -> bool: ...


class VipAllocator:
    """Keeps every exported ClusterSetIP service allocated a VIP in etcd; the view then shows it."""

    def __init__(
        self,
        client: TxnClient,
        keys: Keys,
        mesh: Readable[MeshView],
        *,
        ranges: Sequence[str] = ("240.240.0.0/16",),
        grace: float = 600.0,
        batch: int = BATCH,
        clock: Callable[[], float] = time.time,
        seal: Readable[Seal | None] | None = None,
        resign: Callable[[str], bool] = lambda kid: False,
        signer_site: Callable[[str], str | None] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._mesh = mesh
        self._ranges = [ipaddress.ip_network(r) for r in ranges]
        self._grace = grace
        self._batch = batch
        self._clock = clock
        self._seal = seal
        self._resign = resign
        """Whether a record signed by this key id is this allocator's to sign again (the verifier says)."""
        self._signed = SignedBy(signer_site)
        """The VIP records by signing site (`signer_site`: the site of a key id; None: all under one)."""
        self._sealed_with: object = None
        self._pending: dict[Service, float] = {}
        self._solo: set[Service] = set()
        self._hold_until = 0.0
        self.retry_due = False
        """A transaction was refused: look again soon even if nothing changes."""
        self.transactions = 0
        """Transactions attempted (tests and metrics)."""
        self.conflicts = 0
        """Transactions refused because another agent wrote first."""

    async def run(self) -> None:
        """Allocate and release until cancelled, from the initial sync on; keeps going while etcd is away.

        Each pass looks only at the services the view says changed since the last one (a registry
        change costs in proportion to the change), and at everything when a grace period ends or a
        pass failed.
        """
        await wait_until(self._mesh, lambda v: v.complete)
        seen: int | None = None
        deadline: tuple[object, float | None] = (None, None)
        with Changes(self._mesh, *([self._seal] if self._seal is not None else [])) as changes:
            while True:
                view = self._mesh.get()
                diff = view.changes_since(seen) if seen is not None else None
                services = None if diff is None else diff.services
                kit = self._seal.get() if self._seal is not None else None
                resign = diff is None or bool(diff.sites) or kit is not self._sealed_with
                signers = None if diff is None or kit is not self._sealed_with else diff.sites
                retry = None
                if services is None or services or resign:
                    try:
                        await self.reconcile(view, services)
                        if resign and kit is not None:
                            await self.resign(view, signers)
                        self._sealed_with = kit
                    except MeshfedError as exc:
                        log.warning("vip allocation: %s; keeping the VIPs the registry shows", exc)
                        retry = RETRY
                if self.retry_due:
                    retry = max(HOLD, self._hold_until - time.monotonic()) if self._hold_until else RETRY
                seen = view.generation if retry is None else None
                if deadline[0] is not view.vips:
                    deadline = (view.vips, next_release(view, self._grace))
                wake = [t for t in (retry, _until(deadline[1], self._clock())) if t is not None]
                try:
                    async with asyncio.timeout(min(wake) if wake else None):  # not wait_for: gh-86296
                        await changes.wait()
                except TimeoutError:
                    seen = None  # a grace period ended, or a pass failed: look at everything

    async def reconcile(self, view: MeshView, services: Iterable[Service] | None = None) -> list[Op]:
        """One pass over `services` (None: all): plan, then write in batches; returns the ops attempted."""
        now = time.monotonic()
        self._pending = {s: t for s, t in self._pending.items() if now - t < PENDING_FOR and s not in view.vips}
        self._solo = {s for s in self._solo if s not in view.vips}
        self.retry_due = False
        refused = [(p.namespace, p.name) for p in map(self._keys.parse, view.refused_vips) if isinstance(p, VipKey)]
        ops = plan(view, services, now=self._clock(), grace=self._grace, ranges=self._ranges,
                   pending=self._pending, refused=refused)
        if time.monotonic() < self._hold_until:
            ops = [op for op in ops if not isinstance(op, Allocate)]
            self.retry_due = True
        solo = [op for op in ops if isinstance(op, Allocate) and op.service in self._solo]
        allocate = [op for op in ops if isinstance(op, Allocate) and op.service not in self._solo]
        for start in range(0, len(allocate), self._batch):
            await self._allocate(allocate[start:start + self._batch], view)
        for alone in solo:  # services of a batch another agent got in before: one at a time, none holds up another
            await self._allocate([alone], view)
        for op in ops:
            if not isinstance(op, Allocate):
                await self._apply(op)
        return ops

    async def resign(self, view: MeshView, sites: Iterable[str] | None = None) -> int:
        """Sign again the VIP records that are unsigned or signed by a retired signer; returns how many.
        `sites`: look only at the records signed by these sites' signers (those a site record change can make
        due) and at unsigned ones; None: at every record.

        Each batch is one transaction conditioned on every record's revision: a record changed meanwhile (or
        signed again by another allocator first) fails the batch, and the next pass sees what is left."""
        todo = self._signed.due(view, sites, self._resign)
        done = 0
        step = max(1, self._batch * 3 // 2)  # one condition and one put per record
        for start in range(0, len(todo), step):
            conditions: list[Absent | Unchanged] = []
            writes: list[Put | Delete] = []
            for record in todo[start:start + step]:
                if isinstance(record, Allocation):
                    key, body = self._keys.vip(*record.service), encode_allocation(record)
                else:
                    key, body = self._keys.claim(record.address), encode_claim(record)
                conditions.append(Unchanged(key, record.revision))
                writes.append(Put(key, self._sign(key, body, record.signed)))
            self.transactions += 1
            if await self._client.commit_if(conditions, writes):
                done += len(writes)
            else:
                self.conflicts += 1
                self.retry_due = True
        if done:
            log.info("vip allocation: signed %d VIP record(s) again (unsigned, or by a retired signer)", done)
        return done

    # -- private

    def _sign(self, key: str, body: bytes, previous: tuple[str, int] | None = None) -> bytes:
        """The value to store: `body` signed by this site's current signer (later than the one it replaces)."""
        kit = self._seal.get() if self._seal is not None else None
        if kit is None:
            return body
        now = int(self._clock() * 1000)
        return kit.sign(key, body, max(now, previous[1] + 1) if previous is not None else now)

    async def _allocate(self, batch: list[Allocate], view: MeshView) -> None:
        now = self._clock()
        conditions: list[Absent | Unchanged] = []
        writes: list[Put | Delete] = []

        def vacant(key: str) -> Absent | Unchanged:
            """Absent, or holding a record readers refuse (a forgery): replaced as long as it is unchanged."""
            refused = view.refused_vips.get(key)
            return Unchanged(key, refused) if refused else Absent(key)

        for op in batch:
            reused = {c.address: c for c in op.reused}
            for address in op.addresses:
                key = self._keys.claim(address)
                if address in reused:
                    conditions.append(Unchanged(key, reused[address].revision))
                    continue
                conditions.append(vacant(key))
                writes.append(Put(key, self._sign(key, encode_claim(Claim(address, op.service, now)))))
            key = self._keys.vip(*op.service)
            conditions.append(vacant(key))
            writes.append(Put(key, self._sign(key, encode_allocation(Allocation(op.service, op.addresses)))))
        self.transactions += 1
        if await self._client.commit_if(conditions, writes):
            started = time.monotonic()
            for op in batch:
                self._pending[op.service] = started
            log.info("vip allocation: %d service(s) got VIPs (%s/%s: %s%s)", len(batch), *batch[0].service,
                     ", ".join(batch[0].addresses), ", ..." if len(batch) > 1 else "")
            return
        # Another agent wrote one of these first: most likely all of them, which the view shows soon. The
        # next pass allocates what is still missing one service per transaction, so a key that cannot
        # be written (a record this agent cannot read, say) holds up only its own service.
        self.conflicts += 1
        self.retry_due = True
        self._hold_until = time.monotonic() + HOLD
        self._solo.update(op.service for op in batch)

    async def _apply(self, op: Op) -> None:
        c = self._client
        self.transactions += 1
        if isinstance(op, Mark):
            a = op.allocation
            new = Allocation(a.service, a.addresses, op.unused_since)
            key = self._keys.vip(*a.service)
            value = self._sign(key, encode_allocation(new), a.signed)
            await c.commit_if([Unchanged(key, a.revision)], [Put(key, value)])
        elif isinstance(op, Release):
            a = op.allocation
            conditions: list[Absent | Unchanged] = [Unchanged(self._keys.vip(*a.service), a.revision)]
            conditions += [Unchanged(self._keys.claim(cl.address), cl.revision) for cl in op.claims]
            deletes: list[Put | Delete] = [Delete(self._keys.vip(*a.service))]
            deletes += [Delete(self._keys.claim(cl.address)) for cl in op.claims]
            if await c.commit_if(conditions, deletes):
                log.info("vip allocation: released the VIPs of %s/%s", *a.service)
        elif isinstance(op, Extend):
            a = op.allocation
            now = self._clock()
            grown = Allocation(a.service, a.addresses + op.addresses, a.unused_since)
            extend: list[Absent | Unchanged] = [Unchanged(self._keys.vip(*a.service), a.revision)]
            extend += [Absent(self._keys.claim(address)) for address in op.addresses]
            writes: list[Put | Delete] = [
                Put(self._keys.claim(address), self._sign(self._keys.claim(address),
                                                          encode_claim(Claim(address, a.service, now))))
                for address in op.addresses]
            key = self._keys.vip(*a.service)
            writes.append(Put(key, self._sign(key, encode_allocation(grown), a.signed)))
            if await c.commit_if(extend, writes):
                log.info("vip allocation: %s/%s also got %s (a family this site serves)", *a.service,
                         ", ".join(op.addresses))
            else:
                self.retry_due = True  # another site extended it first, or the allocation changed meanwhile
        elif isinstance(op, DropClaim):
            await c.commit_if([Unchanged(self._keys.claim(op.claim.address), op.claim.revision)],
                              [Delete(self._keys.claim(op.claim.address))])
        else:  # pragma: no cover - allocations go through _allocate
            raise RecordError(f"unexpected op {op!r}")


def _until(when: float | None, now: float) -> float | None:
    return None if when is None else max(0.0, when - now) + 0.05
