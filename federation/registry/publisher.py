"""Keeps one site's records in etcd, bound to the agent's lease, writing only what changed.

The lease is refreshed from a thread of its own (`federation.registry.leasekeeper`), so that a busy event
loop cannot make it expire; the publisher hears from it when the lease is lost or keepalives fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from federation.core.backoff import REGISTRY_CAP, Backoff
from federation.core.errors import MeshfedError, RegistryUnavailable
from federation.core.keys import Keys
from federation.core.records import ServiceExport, Site
from federation.registry.etcd import MAX_TXN_OPS, Delete, EtcdClient, Put, reconnecting
from federation.registry.leasekeeper import LeaseKeeper
from federation.registry.publishing import DeleteOp, Memo, PutOp, Stored, desired_records, packed, plan
from federation.registry.sealing import Seal, owner_of, seal
from federation.runtime.files import write_private
from federation.runtime.values import Changes, Readable, Value

log = logging.getLogger(__name__)

_RELIST_EVERY = 10
"""Keepalive intervals between re-reads of our own keys (to repair keys deleted by hand)."""


class LeaseLost(RegistryUnavailable):
    """etcd no longer knows our lease (it expired while we were cut off)."""


class SiteHeld(MeshfedError):
    """Another agent writes for this site (registry.on_duplicate: refuse): this one must not."""


class _Contended(RegistryUnavailable):
    """Another agent wrote the site record between our read and our write: look again."""


DUPLICATE_MODES = ("wait", "refuse")


class Settled:
    """Set while etcd holds what the publisher's inputs say, as they are now: the last sync, made from
    these very inputs, found nothing to write. A change of an input unsets it at once."""

    def __init__(self, *inputs: Readable[object]) -> None:
        self._inputs = inputs
        self._at: tuple[int, ...] | None = None
        self._event = asyncio.Event()

    def mark(self, at: tuple[int, ...]) -> None:
        """The inputs as they were at `versions()` time `at` are in etcd."""
        self._at = at
        self._event.set()

    def clear(self) -> None:
        """etcd may no longer match (an error)."""
        self._at = None

    def is_set(self) -> bool:
        """True while etcd matches the inputs as they are now."""
        return self._at is not None and self._at == self.versions()

    async def wait(self) -> None:
        """Return once etcd matches the inputs as they are now."""
        while not self.is_set():
            self._event.clear()
            await self._event.wait()

    def versions(self) -> tuple[int, ...]:
        """The inputs' versions now."""
        return tuple(i.version for i in self._inputs)


class Publisher:
    """Writes the site record and its exports under the site's prefix and keeps the lease alive.

    It follows `site` and `exports` (value holders owned by the agent and the sources) and writes what
    changed at once; between changes it refreshes the lease every third of its TTL.
    """

    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        site: Readable[Site],
        exports: Readable[Sequence[ServiceExport]],
        *,
        ttl: int = 10,
        lease_file: Path | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        keeper: LeaseKeeper | None = None,
        sealer: Readable[Seal | None] | None = None,
        owner: str = "",
        on_duplicate: str = "wait",
        site_fields: Readable[Mapping[str, Any]] | None = None,
        chunk_size: int = 0,
    ) -> None:
        self._client = client
        self._keys = keys
        self._site = site
        self._exports = exports
        self._ttl = ttl
        self._lease_file = lease_file
        # Retries must come well within the lease TTL: etcd restarts a lease's countdown when it comes back,
        # and a publisher still backing off then lets the lease, and every record of the site, expire.
        self._backoff = backoff or Backoff(base=0.1, cap=min(REGISTRY_CAP, max(0.5, ttl / 4)))
        self._clock = clock
        self.keeper = keeper or LeaseKeeper(client.endpoints, client.tls, client.timeout)
        """Refreshes the lease from its own thread."""
        self._keeper_news: Value[tuple[str, int, str]] = Value(("", 0, ""), name="lease keeper")
        """("lost", lease, "") or ("failing", lease, reason) from the keeper's thread; a new tuple each time."""
        self._sealer = sealer
        self._owner = owner
        """Which agent instance this is (the site record says it): a copy of this machine is another."""
        self._on_duplicate = on_duplicate
        self._fields = site_fields
        self._chunk_size = chunk_size
        """Endpoints per chunk of a large export (`registry.endpoint_chunk_size`); 0 writes whole records."""
        self._memo: Memo = {}
        """The records each export was planned into, so that a change re-encodes the changed exports only."""
        self._actual: dict[str, Stored] = {}
        self._site_revision: int | None = None
        """The site record's mod revision as last read, until our first write of a session (then None)."""
        self.lease = 0
        self.published = asyncio.Event()
        self.held_by: str | None = None
        """Set while another agent holds the site and this one waits: who, as its site record says."""
        inputs: tuple[Readable[object], ...] = (site, exports, *(h for h in (sealer, site_fields) if h is not None))
        self._inputs = inputs
        self.settled = Settled(*inputs)
        """Set once a sync found etcd holding the last declared site and exports (nothing left to write);
        cleared when they are replaced or etcd fails us."""
        self.writes = 0
        """Keys put or deleted since start (tests and metrics)."""

    @property
    def site(self) -> Site:
        """The site record as it is now."""
        return self._site.get()

    async def run(self) -> None:
        """Publish until cancelled, reconnecting with backoff."""
        try:
            await reconnecting(self._client, self._session, self._on_error)
        finally:
            self.keeper.stop()

    def _on_error(self, exc: RegistryUnavailable) -> float:
        self.settled.clear()
        delay = self._backoff.next()
        log.warning("registry publisher: %s; retrying in %.1fs", exc, delay)
        return delay

    async def withdraw(self) -> None:
        """Delete every key of the site and revoke the lease (an operator removing the site)."""
        owned, _ = await self._owned()
        await self._client.commit([Delete(k) for k in sorted(owned)])
        if self.lease:
            with contextlib.suppress(RegistryUnavailable):
                await self._client.revoke(self.lease)
        self._forget_lease()

    async def _session(self) -> None:
        self.lease, left = await self._acquire_lease()
        loop = asyncio.get_running_loop()

        def news(kind: str, lease: int, reason: str = "") -> None:  # on the keeper's thread
            loop.call_soon_threadsafe(self._keeper_news.set, (kind, lease, reason))

        def keep(left: int) -> None:
            self.keeper.keep(self.lease, self._ttl, left, lambda lease: news("lost", lease),
                             lambda reason: news("failing", self.lease, reason))

        with Changes(*self._inputs, self._keeper_news) as changes:
            seen = self._keeper_news.get()  # what the keeper says from here on counts, during the fence too
            keep(left)
            self._actual, _ = await self._owned()
            await self._fence(keep)
            await self._keep(changes, max(self._ttl / 3, 0.2) * _RELIST_EVERY, seen)

    async def _fence(self, keep: Callable[[int], None]) -> None:
        """Write nothing while another live agent holds the site: wait for it to go, or refuse (the setting).

        The site record is bound to its writer's lease, so a record whose lease is not ours belongs to a
        living agent (etcd deletes it when the lease expires). One bound to our own lease but naming
        another owner was written by a copy of this machine that shares our lease file: we leave that
        lease to it (the keeper drops it) and take a new one, handed to `keep`, once the site is free.
        """
        key = self._keys.site(self.site.name)
        warned = False
        while True:
            have = self._actual.get(key)
            other = owner_of(have.value) if have is not None else ""
            if self._mine(have, other):
                if self.held_by is not None:
                    log.info("registry publisher: site %s is free again; publishing", self.site.name)
                self.held_by = None
                return
            assert have is not None
            self.held_by = other or f"the agent holding lease {have.lease:x}"
            what = (f"site {self.site.name} is held by {self.held_by} (its record is bound to lease {have.lease:x}, "
                    "still alive)")
            if self._on_duplicate == "refuse":
                raise SiteHeld(f"{what}: not writing for it (registry.on_duplicate is refuse)")
            if not warned:
                log.warning("registry publisher: %s; waiting for it to go before writing anything", what)
                warned = True
            if have.lease == self.lease:
                self.keeper.drop()
                self._forget_lease()  # a copy's lease: never ours to keep alive
                self.lease = 0
            await asyncio.sleep(max(self._ttl / 2, 0.2))
            if not self.lease:
                self.lease, left = await self._acquire_lease()
                keep(left)
            self._actual, _ = await self._owned()

    async def _keep(self, changes: Changes, relist: float, seen: tuple[str, int, str]) -> None:
        """Write what changed at once; re-read our keys every `relist` seconds (and look that no other agent
        took the site over); end when the keeper says the lease is lost or keepalives fail (the session then
        starts again, keeping the lease if it lives)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + relist
        while True:
            await self._sync()
            self._backoff.reset()
            self.published.set()
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
                # stops the agent when it lands as the event fires (CPython gh-86296).
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    await changes.wait()
            news = self._keeper_news.get()
            if news is not seen:
                seen = news
                kind, lease, reason = news
                if lease == self.lease and kind == "lost":
                    self.keeper.drop()
                    self._forget_lease()
                    raise LeaseLost(f"lease {self.lease:x} expired; re-registering site {self.site.name}")
                if lease == self.lease and kind == "failing":
                    raise RegistryUnavailable(f"lease keepalive failed: {reason}")
            if loop.time() >= due:
                self._actual, _ = await self._owned()
                due = loop.time() + relist
                have = self._actual.get(self._keys.site(self.site.name))
                if not self._mine(have, owner_of(have.value) if have is not None else ""):
                    raise _Contended(f"another agent took over the record of site {self.site.name}")

    def _mine(self, have: Stored | None, other: str) -> bool:
        """Whether the stored site record `have` (naming `other` as its owner) may be written by us."""
        if not self._owner or have is None or have.lease == 0:
            return True  # no fencing asked for; or a free site, or a record written by hand
        if have.lease == self.lease:
            return other in ("", self._owner)  # "": written by an older version of this very agent
        return other == self._owner

    async def _sync(self) -> None:
        at = self.settled.versions()
        now = self._clock()
        site = self._site.get()
        desired = desired_records(self._keys, site, self._exports.get(), self._actual, now, self._chunk_size,
                                  self._memo)
        kit = self._sealer.get() if self._sealer is not None else None
        if kit is not None:
            stored = {k: v.value for k, v in self._actual.items()}
            fields = self._fields.get() if self._fields is not None else None
            desired = seal(self._keys, site.name, desired, stored, kit, int(now * 1000), self._owner, fields)
        ops = plan(desired, self._actual, self.lease)
        if not ops:
            self.settled.mark(at)
            return
        guard = None
        if self._site_revision is not None:
            guard = (self._keys.site(site.name), self._site_revision)
        for n, batch in enumerate(packed(ops, MAX_TXN_OPS)):
            done = await self._client.commit(
                [Put(op.key, op.value, self.lease) if isinstance(op, PutOp) else Delete(op.key) for op in batch],
                guard if n == 0 else None)
            if not done:
                raise _Contended(f"another agent wrote the record of site {site.name} just now; looking again")
        self._site_revision = None
        for op in ops:
            if isinstance(op, DeleteOp):
                self._actual.pop(op.key, None)
            else:
                self._actual[op.key] = Stored(op.value, self.lease)
        self.writes += len(ops)
        self.settled.mark(at)
        log.info("registry publisher: wrote %d key(s) for site %s", len(ops), self.site.name)

    async def _owned(self) -> tuple[dict[str, Stored], int]:
        name = self.site.name
        children, rev = await self._client.get_prefix(self._keys.site_children(name))
        # The heartbeat is written by its own writer (registry.heartbeat): never ours to plan or delete.
        own = {k: Stored(v.value, v.lease) for k, v in children.items() if k != self._keys.heartbeat(name)}
        site_kv = await self._client.get(self._keys.site(name))
        if site_kv is not None:
            own[self._keys.site(name)] = Stored(site_kv.value, site_kv.lease)
        # Our next write goes through only if nobody wrote the site record since this read.
        self._site_revision = site_kv.mod_revision if site_kv is not None else 0
        return own, rev

    async def _acquire_lease(self) -> tuple[int, int]:
        """Reuse our lease while it lives (after an etcd outage, or the previous run's after a restart: then
        nothing is rewritten), else grant one; the lease and the seconds it has left."""
        previous = self.lease or self._read_lease_file()
        if previous:
            left = await self._client.keepalive(previous)
            if left > 0:
                if previous != self.lease:
                    log.info("registry publisher: took over lease %x (%ds left)", previous, left)
                return previous, left
        lease = await self._client.grant(self._ttl)
        self._write_lease_file(lease)
        log.info("registry publisher: site %s holds lease %x (ttl %ds)", self.site.name, lease, self._ttl)
        return lease, self._ttl

    def _read_lease_file(self) -> int:
        if self._lease_file is None:
            return 0
        try:
            site, lease = self._lease_file.read_text().split()
            return int(lease, 16) if site == self.site.name else 0
        except (OSError, ValueError):
            return 0

    def _write_lease_file(self, lease: int) -> None:
        if self._lease_file is None:
            return
        self._lease_file.parent.mkdir(parents=True, exist_ok=True)
        write_private(self._lease_file, f"{self.site.name} {lease:x}\n".encode())

    def _forget_lease(self) -> None:
        if self._lease_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._lease_file.unlink()
