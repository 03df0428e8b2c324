"""One resource's cache, kept by list-then-watch with resourceVersion (client-go's reflector, in small)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from federation.core.backoff import Backoff
from federation.sources.kubernetes.client import ApiError, ApiUnavailable, Expired, KubeClient
from federation.sources.kubernetes.conversion import ObjKey, key_of

log = logging.getLogger(__name__)


class WatchMetrics:
    """Watch restarts by resource and reason."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.restarts = Counter(
            "meshfed_kubernetes_watch_restarts", "Watches restarted, by resource and reason (expired, error, ended)",
            ["resource", "reason"], registry=registry,
        )  # fmt: skip
        self.relists = Counter(
            "meshfed_kubernetes_relists", "Full lists of a resource (start and after 410 Gone)", ["resource"],
            registry=registry,
        )  # fmt: skip


class Reflector:
    """Keeps `store` equal to the API server's objects of one resource; calls `on_change` after each change.

    The store is only ever replaced by a successful list, so an unreachable API server leaves it as it
    was: nothing is withdrawn because the server was briefly away.
    """

    def __init__(
        self,
        client: KubeClient,
        resource: str,
        on_change: Callable[[], None],
        *,
        metrics: WatchMetrics,
        backoff: Backoff,
        watch_timeout: int = 300,
        keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_key: Callable[[ObjKey | None], None] | None = None,
    ) -> None:
        self.resource = resource
        self._keep = keep
        """What of each object the store keeps (all of it when None); a change to nothing kept, only to the
        resourceVersion, updates the store without waking anyone."""
        self._on_key = on_key
        """Told the key of each object that changed, before `on_change` (None: the store was listed again)."""
        self.store: dict[ObjKey, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self._client = client
        self._on_change = on_change
        self._metrics = metrics
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._rv = ""

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion, until cancelled."""
        while True:
            try:
                if not self._rv:
                    await self._list()
                if await self._watch():
                    self._backoff.reset()
                    self._metrics.restarts.labels(self.resource, "ended").inc()
                    continue
                self._metrics.restarts.labels(self.resource, "ended").inc()
                delay = self._backoff.next()  # a stream that ends at once must not become a busy loop
            except Expired as exc:
                log.info("kubernetes watch of %s expired (%s); relisting", self.resource, exc)
                self._metrics.restarts.labels(self.resource, "expired").inc()
                self._rv = ""
                continue
            except (ApiUnavailable, ApiError) as exc:
                self._metrics.restarts.labels(self.resource, "error").inc()
                delay = self._backoff.next()
                log.warning("kubernetes watch of %s: %s; retrying in %.1fs", self.resource, exc, delay)
            await asyncio.sleep(delay)

    def apply(self, obj: dict[str, Any], deleted: bool = False) -> None:
        """Record the result of our own write at once, so the next plan does not repeat it."""
        k = key_of(obj)
        if deleted:
            self.store.pop(k, None)
        elif _newer(obj, self.store.get(k)):
            self.store[k] = obj

    async def _list(self) -> None:
        items, rv = await self._client.list_all(self.resource)
        self._metrics.relists.labels(self.resource).inc()
        fresh = {key_of(o): self._keep(o) if self._keep else o for o in items}
        changed = _rvs(fresh) != _rvs(self.store)
        self.store = fresh
        self._rv = rv
        first = not self.synced.is_set()
        self.synced.set()
        log.debug("kubernetes: listed %d %s at resourceVersion %s", len(fresh), self.resource, rv)
        if changed or first:
            if self._on_key is not None:
                self._on_key(None)
            self._on_change()

    async def _watch(self) -> bool:
        """Follow one watch stream; True if it delivered anything before it ended."""
        got = False
        async for event in self._client.watch(self.resource, self._rv, self._watch_timeout):
            got = True
            obj = event["object"]
            rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            if rv:
                self._rv = rv
            etype = event.get("type")
            if etype == "BOOKMARK":
                continue
            k = key_of(obj)
            if etype == "DELETED":
                if self.store.pop(k, None) is None:
                    continue
            elif etype in ("ADDED", "MODIFIED"):
                if self._keep is not None:
                    obj = self._keep(obj)
                old = self.store.get(k)
                if not _newer(obj, old):
                    continue
                self.store[k] = obj
                if self._keep is not None and old is not None and _unversioned(obj) == _unversioned(old):
                    continue  # e.g. a pod's status changed, not the labels kept
            else:
                continue
            if self._on_key is not None:
                self._on_key(k)
            self._on_change()
        return got


def _unversioned(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def _rvs(store: dict[ObjKey, dict[str, Any]]) -> dict[ObjKey, Any]:
    return {k: (o.get("metadata") or {}).get("resourceVersion") for k, o in store.items()}


def _newer(obj: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """False only when both resourceVersions are numbers and `obj`'s is older (a write we already applied)."""
    if old is None:
        return True
    a = (obj.get("metadata") or {}).get("resourceVersion", "")
    b = (old.get("metadata") or {}).get("resourceVersion", "")
    if str(a).isdigit() and str(b).isdigit():
        return int(a) > int(b) or (int(a) == int(b) and obj != old)
    return True
