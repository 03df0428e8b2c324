"""The mesh mirror: list once, watch from that revision, resync on compaction or a broken stream.

While etcd is unreachable it keeps serving the last known state and reports itself stale. Readers
follow `mesh`, a value holder of the latest immutable `MeshView` (incomplete until the initial sync,
unless `restore` gave it a saved listing to serve, stale, until then). `raw` (optional) is kept equal
to the listing as applied, for the snapshot writer (`federation.registry.snapshot`).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from federation.core.backoff import Backoff, registry_backoff
from federation.core.catalog import Catalog, Imports, Listed, Outcome
from federation.core.errors import RecordError, RegistryUnavailable
from federation.core.keys import Keys
from federation.core.ratelimit import LogLimiter
from federation.core.verification import Effect, RegistryTrust
from federation.core.view import Event, MeshView, SiteAdded, SiteChanged
from federation.registry.etcd import Compacted, EtcdClient, reconnecting
from federation.registry.snapshot import RawListing, Saved
from federation.runtime.values import Value

log = logging.getLogger(__name__)

TURN = 0.005
"""Seconds of registry work in one turn of the event loop before it yields: DNS answers and tunnel
relays wait at most this long behind a burst of changes or a large listing."""

Subscriber = Callable[[MeshView, Sequence[Event]], None]


class _Recheck(RegistryUnavailable):
    """The roots or the revocations changed: list again and verify every record afresh."""


class RegistryMetrics:
    """The registry's Prometheus metrics, on the agent's own CollectorRegistry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.synced = Gauge("meshfed_registry_synced", "1 once the initial registry listing is done", registry=registry)
        self.stale = Gauge(
            "meshfed_registry_stale",
            "1 while etcd is unreachable and the mirror serves its last state",
            registry=registry,
        )
        self.staleness = Gauge(
            "meshfed_registry_staleness_seconds", "Seconds since the mirror last heard from etcd", registry=registry
        )
        self.records = Gauge("meshfed_registry_records", "Valid sites and exports in the mirror", registry=registry)
        self.seen = Counter("meshfed_registry_records_seen", "Registry puts and deletes applied", registry=registry)
        self.rejected = Counter(
            "meshfed_registry_records_rejected",
            "Registry records skipped because they failed validation",
            registry=registry,
        )
        self.watch_restarts = Counter(
            "meshfed_registry_watch_restarts", "Times the list/watch session was restarted", registry=registry
        )
        self.resyncs = Counter("meshfed_registry_resyncs", "Full listings after the first one", registry=registry)


class Mirror:
    """A live, typed copy of every site's records, fed by etcd list/watch."""

    def __init__(
        self,
        client: EtcdClient,
        keys: Keys,
        *,
        metrics: RegistryMetrics | None = None,
        backoff: Backoff | None = None,
        probe_interval: float = 2.0,
        probe_timeout: float = 3.0,
        page: int = 1000,
        imports: Imports | None = None,
        trust: RegistryTrust | None = None,
        raw: RawListing | None = None,
        lag: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._metrics = metrics or RegistryMetrics(CollectorRegistry())
        self._backoff = backoff or registry_backoff()
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._page = page
        self._trust = trust
        self._documents = frozenset(trust.documents()) if trust is not None else frozenset()
        self.catalog = Catalog(keys, imports=imports, check=trust.check if trust is not None else None)
        self.mesh: Value[MeshView] = Value(MeshView.before_sync(), name="mesh view", same=operator.is_)
        """The latest snapshot: complete after the initial sync, then one new one per burst of changes."""
        self._subscribers: list[Subscriber] = []
        self._pending: list[Event] = []
        self._flush_scheduled = False
        self._changed = False
        self._reject_log = LogLimiter(interval=60.0, capacity=1024)
        self._last_contact: float | None = None
        self.synced = asyncio.Event()
        self.live: Value[bool] = Value(False, name="registry live")
        """True once a listing from etcd was applied (a restored view is complete, but not live)."""
        self.restored_at: float | None = None
        """When the snapshot this mirror serves until its first listing was written (Unix time), if any."""
        self._raw = raw
        self._lag = lag
        """Takes the heartbeats the watch delivers (`registry.heartbeat.LagMeter.take`); listings are not lag."""
        self.stale = True
        self.error: str | None = None
        self.sessions = 0
        self._listed = False
        """True while the catalog holds a listing this process made, so a new session may go on watching
        from the catalog's revision (on another member too: revisions are the cluster's) without listing."""
        self._metrics.staleness.set_function(self.staleness)
        self._metrics.stale.set(1)

    # -- reading

    def staleness(self) -> float:
        """Seconds since etcd last answered, 0 while the watch is healthy."""
        if not self.stale:
            return 0.0
        if self._last_contact is None:
            return float("inf")
        return time.monotonic() - self._last_contact

    def subscribe(self, callback: Subscriber) -> None:
        """Call `callback(view, events)` after each batch of changes (synchronously, in the loop): the typed
        event tap for tools and tests. The agent's subsystems follow `mesh` instead."""
        self._subscribers.append(callback)

    def restore(self, saved: Saved) -> None:
        """Serve a saved listing, stale, until the first real one (call before `run`).

        The view is complete, so DNS answers and the gateway admits the sites it holds; nothing is
        written to etcd from it, and the first listing replaces it with only the real difference.
        """
        # Its records are verified as a listing's are: against the roots and revocations it holds.
        for key in sorted(self._documents & set(saved.listing)):
            self._document(key, saved.listing[key].value)
        outcome = self.catalog.resync(saved.listing, saved.revision)
        if self._trust is not None:
            self._retry_held(outcome)  # VIP records sort before the site records that verify them
        self._record(outcome, count=len(saved.listing))
        self._flush(initial=True)
        self.restored_at = saved.saved_at
        self._last_contact = time.monotonic() - max(0.0, time.time() - saved.saved_at)
        age = time.time() - saved.saved_at
        self._mark_stale(f"etcd not reached yet; serving the registry view saved {age:.0f}s ago")
        log.warning("registry mirror: serving the registry view saved %.0fs ago (revision %d, %d records) until "
                    "etcd answers", age, saved.revision, len(self.catalog))

    # -- running

    async def run(self) -> None:
        """Mirror until cancelled; never deletes from the local view because etcd is away."""
        await reconnecting(self._client, self._session, self._on_error)

    def _on_error(self, exc: RegistryUnavailable) -> float:
        if isinstance(exc, _Recheck):
            self.catalog.forget()
            self._listed = False
            log.info("registry mirror: %s; listing again to verify every record", exc)
            return 0.0
        self._mark_stale(str(exc))
        self._metrics.watch_restarts.inc()
        if isinstance(exc, Compacted):
            self._listed = False  # the history the watch needs is gone: list again, at once
            delay = 0.0
        else:
            delay = self._backoff.next()
        log.warning("registry mirror: %s; resyncing in %.1fs (serving last known state)", exc, delay)
        return delay

    async def _session(self) -> None:
        if self._listed:
            # A broken stream or a lost member: watch on from where the catalog is, through whichever
            # member answers now, instead of listing the whole mesh again.
            current = await self._client.revision()
            if current >= self.catalog.revision:
                self._healthy()
                self._backoff.reset()
                await self._watching(self.catalog.revision)
                return
            log.warning("registry mirror: etcd is at revision %d, behind ours (%d): a new store; listing it",
                        current, self.catalog.revision)
            self._listed = False
        kvs, revision = await self._client.get_prefix(self._keys.root(), page=self._page)
        listing = {k: Listed(v.value, v.mod_revision) for k, v in kvs.items()}
        del kvs
        if self._raw is not None:
            self._raw.replace(listing, revision)
        # Mesh documents first: every record of the listing is verified against the roots and revocations
        # they hold. If they changed since the last listing, records seen before must be verified again.
        if any(self._document(k, listing[k].value) for k in sorted(self._documents & set(listing))):
            self.catalog.forget()
        outcome = Outcome()
        loop = asyncio.get_running_loop()
        turn = loop.time()
        for step in self.catalog.resync_steps(listing, revision):
            outcome.events += step.events
            outcome.rejected += step.rejected
            if loop.time() - turn > TURN:
                await asyncio.sleep(0)  # a listing of a large mesh must not stall DNS, tunnels or the lease
                turn = loop.time()
        if self._trust is not None:
            # VIP records sort before the site records whose signers verify them: held, applied now.
            self._retry_held(outcome)
        self.sessions += 1
        if self.sessions > 1:
            self._metrics.resyncs.inc()
        self._record(outcome, count=len(listing) if self.sessions == 1 else len(outcome.events))
        self._flush(initial=self.sessions == 1)
        self._healthy()
        if not self.synced.is_set():
            log.info("registry mirror: initial sync done at revision %d (%d records)", revision, len(self.catalog))
            self.synced.set()
            self._metrics.synced.set(1)
            self.live.set(True)
        self._backoff.reset()
        self._listed = True
        await self._watching(revision)

    async def _watching(self, revision: int) -> None:
        """Watch from `revision` + 1 while probing that etcd still answers; raises when either fails."""
        probe = asyncio.create_task(self._probe(), name="registry-probe")
        watch = asyncio.create_task(self._watch(revision), name="registry-watch")
        try:
            done, _ = await asyncio.wait({probe, watch}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise RegistryUnavailable("watch stream ended")
        finally:
            for task in (probe, watch):
                task.cancel()
            await asyncio.gather(probe, watch, return_exceptions=True)

    async def _watch(self, revision: int) -> None:
        loop = asyncio.get_running_loop()
        turn = loop.time()
        last = revision
        async for event in self._client.watch_prefix(self._keys.root(), revision + 1):
            if event.revision != last and loop.time() - turn > TURN:
                # A burst of changes: publish what is applied and let the data plane run before going on; only
                # between revisions, so that no view holds half of one transaction (an export and its chunks).
                await asyncio.sleep(0)
                turn = loop.time()
            last = event.revision
            if event.key in self._documents:
                effect = self._document(event.key, event.value)
                for site in sorted(effect.drop_sites):
                    self._record(self.catalog.delete(self._keys.site(site), event.revision), count=0)
                if effect.recheck:
                    raise _Recheck(effect.note)
            if event.value is None:
                outcome = self.catalog.delete(event.key, event.revision)
                if self._trust is not None:
                    self._trust.deleted(event.key)
            else:
                outcome = self.catalog.put(event.key, event.value, event.revision)
            # A heartbeat is no state worth saving: it would have the snapshot rewritten every few seconds.
            if self._raw is not None and outcome.beat is None and outcome.beat_gone is None:
                if event.value is None:
                    self._raw.delete(event.key, event.revision)
                else:
                    self._raw.put(event.key, event.value, event.revision)
            self._record(outcome, count=1)
            if self._lag is not None and (outcome.beat is not None or outcome.beat_gone is not None):
                self._lag(outcome)
            if self._trust is not None:
                self._retry_held(outcome)
            self._last_contact = time.monotonic()

    async def _probe(self) -> None:
        """Detect a silent etcd (partition, stopped process) that leaves the watch hanging."""
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                async with asyncio.timeout(self._probe_timeout):
                    await self._client.revision()
            except TimeoutError:
                raise RegistryUnavailable(f"etcd did not answer within {self._probe_timeout:.1f}s") from None
            self._healthy()

    # -- private

    def _document(self, key: str, value: bytes | None) -> Effect:
        """Hand a mesh document to the verifier; log what it changed or why it was refused."""
        assert self._trust is not None
        try:
            effect = self._trust.document(key, value)
        except RecordError as exc:
            self._metrics.rejected.inc()
            if self._reject_log.allow(key, time.monotonic()):
                log.warning("registry mirror: refused mesh document %s: %s", key, exc)
            return Effect()
        if effect.note:
            log.warning("registry mirror: %s", effect.note)
        return effect

    def _retry_held(self, outcome: Outcome) -> None:
        """A site record came or changed: records of that site held back for want of it are tried again."""
        assert self._trust is not None
        for event in outcome.events:
            if isinstance(event, SiteAdded | SiteChanged):
                for key, value, rev in self._trust.retry(event.site.name):
                    rev = rev or self.catalog.revision_of(key)  # VIP records need it for compare-and-swap
                    self.catalog.forget([key])
                    self._record(self.catalog.put(key, value, rev), count=0)

    def _healthy(self) -> None:
        self._last_contact = time.monotonic()
        if self.stale:
            if self.synced.is_set() or self.restored_at is not None:
                log.info("registry mirror: etcd reachable again; serving live state")
            self.stale = False
            self.error = None
            self._metrics.stale.set(0)

    def _mark_stale(self, reason: str) -> None:
        self.stale = True
        self.error = reason
        self._metrics.stale.set(1)

    def _record(self, outcome: Outcome, count: int) -> None:
        self._metrics.seen.inc(count)
        now = time.monotonic()
        for rej in outcome.rejected:
            self._metrics.rejected.inc()
            if self._reject_log.allow(rej.key, now):
                log.warning("registry mirror: skipped record %s: %s", rej.key, rej.reason)
        if outcome.events or outcome.changed:
            self._pending.extend(outcome.events)
            self._changed = True
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self, initial: bool = False) -> None:
        """Publish one new view for every burst of events (the watch hands them over without yielding).

        Subscribers also hear of the initial sync when it brought no events, so they can start answering.
        """
        self._flush_scheduled = False
        events, self._pending = self._pending, []
        changed, self._changed = self._changed, False
        self._metrics.records.set(len(self.catalog))
        if not changed and not initial:
            return
        view = self.catalog.view()
        self.mesh.set(view)
        if not events and not initial:
            return
        for callback in self._subscribers:
            try:
                callback(view, events)
            except Exception:
                log.exception("registry mirror: subscriber %r failed", callback)
