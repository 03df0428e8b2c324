"""Keeps one site's records in etcd, bound to the agent's lease, writing only what changed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from federation.core.backoff import Backoff
from federation.core.errors import RegistryUnavailable
from federation.core.keys import Keys
from federation.core.records import ServiceExport, Site
from federation.registry.etcd import Delete, EtcdClient, Put, reconnecting
from federation.registry.publishing import DeleteOp, PutOp, Stored, desired_records, plan
from federation.runtime.files import write_private

log = logging.getLogger(__name__)

_RELIST_EVERY = 10
"""Keepalive rounds between re-reads of our own keys (to repair keys deleted by hand)."""


class LeaseLost(RegistryUnavailable):
    """etcd no longer knows our lease (it expired while we were cut off)."""


class Publisher:
    """Writes the site record and its exports under the site's prefix and keeps the lease alive."""

    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        site: Site,
        exports: Iterable[ServiceExport] = (),
        *,
        ttl: int = 10,
        lease_file: Path | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._keys = keys
        self._site = site
        self._exports = tuple(exports)
        self._ttl = ttl
        self._lease_file = lease_file
        # Retries must come well within the lease TTL: etcd restarts a lease's countdown when it comes back,
        # and a publisher still backing off then lets the lease, and every record of the site, expire.
        self._backoff = backoff or Backoff(base=0.2, cap=max(0.5, ttl / 4))
        self._clock = clock
        self._changed = asyncio.Event()
        self._actual: dict[str, Stored] = {}
        self.lease = 0
        self.published = asyncio.Event()
        self.settled = asyncio.Event()
        """Set once a sync found etcd holding the last declared site and exports (nothing left to write);
        cleared when they are replaced or etcd fails us."""
        self.writes = 0
        """Keys put or deleted since start (tests and metrics)."""

    @property
    def site(self) -> Site:
        return self._site

    def set_site(self, site: Site) -> None:
        """Replace the site record (gateways, CA chain); written at the next sync."""
        self._site = site
        self._declare()

    def set_exports(self, exports: Iterable[ServiceExport]) -> None:
        """Replace the site's exports; written at the next sync."""
        self._exports = tuple(exports)
        self._declare()

    async def run(self) -> None:
        """Publish until cancelled, reconnecting with backoff."""
        await reconnecting(self._client, self._session, self._on_error)

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
        self.lease = await self._acquire_lease()
        self._actual, _ = await self._owned()
        rounds = 0
        interval = max(self._ttl / 3, 0.2)
        last_keepalive = time.monotonic()
        while True:
            self._changed.clear()
            await self._sync()
            self._backoff.reset()
            self.published.set()
            wait = interval - (time.monotonic() - last_keepalive)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
                    # stops the agent when it lands as the event fires (CPython gh-86296).
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
            if time.monotonic() - last_keepalive < interval:
                continue
            left = await self._client.keepalive(self.lease)
            last_keepalive = time.monotonic()
            if left <= 0:
                self._forget_lease()
                raise LeaseLost(f"lease {self.lease:x} expired; re-registering site {self._site.name}")
            rounds += 1
            if rounds % _RELIST_EVERY == 0:
                self._actual, _ = await self._owned()

    def _declare(self) -> None:
        self.settled.clear()
        self._changed.set()

    async def _sync(self) -> None:
        desired = desired_records(self._keys, self._site, self._exports, self._actual, self._clock())
        ops = plan(desired, self._actual, self.lease)
        if not ops:
            self.settled.set()
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
        log.info("registry publisher: wrote %d key(s) for site %s", len(ops), self._site.name)

    async def _owned(self) -> tuple[dict[str, Stored], int]:
        children, rev = await self._client.get_prefix(self._keys.site_children(self._site.name))
        own = {k: Stored(v.value, v.lease) for k, v in children.items()}
        site_kv = await self._client.get(self._keys.site(self._site.name))
        if site_kv is not None:
            own[self._keys.site(self._site.name)] = Stored(site_kv.value, site_kv.lease)
        return own, rev

    async def _acquire_lease(self) -> int:
        """Reuse our lease while it lives (after an etcd outage, or the previous run's after a restart: then
        nothing is rewritten), else grant one."""
        previous = self.lease or self._read_lease_file()
        if previous:
            left = await self._client.keepalive(previous)
            if left > 0:
                log.info("registry publisher: took over lease %x (%ds left)", previous, left)
                return previous
        lease = await self._client.grant(self._ttl)
        self._write_lease_file(lease)
        log.info("registry publisher: site %s holds lease %x (ttl %ds)", self._site.name, lease, self._ttl)
        return lease

    def _read_lease_file(self) -> int:
        if self._lease_file is None:
            return 0
        try:
            site, lease = self._lease_file.read_text().split()
            return int(lease, 16) if site == self._site.name else 0
        except (OSError, ValueError):
            return 0

    def _write_lease_file(self, lease: int) -> None:
        if self._lease_file is None:
            return
        self._lease_file.parent.mkdir(parents=True, exist_ok=True)
        write_private(self._lease_file, f"{self._site.name} {lease:x}\n".encode())

    def _forget_lease(self) -> None:
        if self._lease_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._lease_file.unlink()
