"""Keeps one site's records in etcd, bound to the agent's lease, writing only what changed.

The lease is refreshed from a thread of its own (`federation.registry.leasekeeper`), so that a busy event
loop cannot make it expire; the publisher hears from it when the lease is lost or keepalives fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from federation.core.backoff import REGISTRY_CAP, Backoff
from federation.core.errors import RegistryUnavailable
from federation.core.keys import Keys
from federation.core.records import ServiceExport, Site
from federation.registry.etcd import Delete, EtcdClient, Put, reconnecting
from federation.registry.leasekeeper import LeaseKeeper
from federation.registry.publishing import DeleteOp, PutOp, Stored, desired_records, plan
from federation.runtime.files import write_private
from federation.runtime.values import Changes, Readable, Value

log = logging.getLogger(__name__)

_RELIST_EVERY = 10
"""Keepalive intervals between re-reads of our own keys (to repair keys deleted by hand)."""


class LeaseLost(RegistryUnavailable):
    """etcd no longer knows our lease (it expired while we were cut off)."""


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
        self._actual: dict[str, Stored] = {}
        self.lease = 0
        self.published = asyncio.Event()
        self.settled = Settled(site, exports)
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

        with Changes(self._site, self._exports, self._keeper_news) as changes:
            self.keeper.keep(self.lease, self._ttl, left, lambda lease: news("lost", lease),
                             lambda reason: news("failing", self.lease, reason))
            self._actual, _ = await self._owned()
            await self._keep(changes, max(self._ttl / 3, 0.2) * _RELIST_EVERY)

    async def _keep(self, changes: Changes, relist: float) -> None:
        """Write what changed at once; re-read our keys every `relist` seconds; end when the keeper says
        the lease is lost or keepalives fail (the session then starts again, keeping the lease if it lives)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + relist
        seen = self._keeper_news.get()
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

    async def _sync(self) -> None:
        at = self.settled.versions()
        desired = desired_records(self._keys, self._site.get(), self._exports.get(), self._actual, self._clock())
        ops = plan(desired, self._actual, self.lease)
        if not ops:
            self.settled.mark(at)
            return
        await self._client.commit(
            [Put(op.key, op.value, self.lease) if isinstance(op, PutOp) else Delete(op.key) for op in ops]
        )
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
        own = {k: Stored(v.value, v.lease) for k, v in children.items()}
        site_kv = await self._client.get(self._keys.site(name))
        if site_kv is not None:
            own[self._keys.site(name)] = Stored(site_kv.value, site_kv.lease)
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
