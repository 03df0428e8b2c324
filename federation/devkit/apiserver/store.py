"""The development API server's state: objects per resource, one resourceVersion counter, history and watches.

No HTTP here. Objects are kept at their resource's storage version and converted on the way out
(CRD conversion strategy None: only apiVersion changes). Every change gets the next resourceVersion
and goes to history, from which a watch resumes; `expire()` compacts it (410 Gone for older watches).
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any

from federation.devkit.apiserver.resources import BUILTINS, Resource
from federation.devkit.apiserver.selectors import Matcher

Obj = dict[str, Any]
Key = tuple[str, str]
"""(namespace, name); the namespace is "" for cluster-scoped objects."""


@dataclass(eq=False)
class Watcher:
    """One open watch: what it selects, at which version it speaks, and its queue of events."""

    resource: Resource
    version: str
    namespace: str | None
    bookmarks: bool
    labels: Matcher | None = None
    fields: Matcher | None = None
    queue: asyncio.Queue[Obj | str] = field(default_factory=asyncio.Queue)

    def selects(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and (obj.get("metadata") or {}).get("namespace") != self.namespace:
            return False
        return (self.labels is None or self.labels(obj)) and (self.fields is None or self.fields(obj))

    def event(self, etype: str, obj: Obj, prev: Obj | None) -> Obj | None:
        """The event this watcher sees for a change, if any: a selector change turns MODIFIED into ADDED/DELETED."""
        now, before = self.selects(obj), self.selects(prev)
        if etype == "MODIFIED" and now != before:
            etype = "ADDED" if now else "DELETED"
        elif not now:
            return None
        return {"type": etype, "object": convert(obj, self.resource, self.version)}


def convert(obj: Obj, resource: Resource, version: str) -> Obj:
    """A copy of `obj` at `version` of its resource."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = resource.api_version(version)
    out["kind"] = resource.kind
    return out


class Store:
    """Objects, resourceVersions, history and watchers of one development API server."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.objects: dict[str, dict[Key, Obj]] = {}
        self.rv = 100
        self.floor = 0
        """Oldest resourceVersion a watch may resume from (history before it is compacted)."""
        self.history: list[tuple[int, str, str, Obj, Obj | None]] = []
        self.watchers: set[Watcher] = set()
        for r in BUILTINS:
            self.register(r)

    def register(self, resource: Resource) -> None:
        """Serve `resource` (a new CRD, or a changed one: its objects stay)."""
        self.resources[resource.plural] = resource
        self.objects.setdefault(resource.plural, {})

    def unregister(self, plural: str) -> None:
        """Stop serving a custom resource and drop its objects (as deleting its CRD does)."""
        for key in sorted(self.objects.get(plural, {})):
            self.delete(plural, key)
        self.resources.pop(plural, None)
        self.objects.pop(plural, None)

    def find(self, group: str, version: str, plural: str) -> Resource | None:
        """The resource served at group/version/plural, or None."""
        r = self.resources.get(plural)
        return r if r is not None and r.group == group and version in r.versions else None

    def get(self, plural: str, key: Key) -> Obj | None:
        return self.objects.get(plural, {}).get(key)

    def list(self, plural: str, namespace: str | None, labels: Matcher | None = None,
             fields: Matcher | None = None) -> list[Obj]:
        """Objects of `plural` (in `namespace` if given) that match the selectors, by namespace and name."""
        return [
            o for (ns, _), o in sorted(self.objects.get(plural, {}).items())
            if namespace in (None, ns) and (labels is None or labels(o)) and (fields is None or fields(o))
        ]  # fmt: skip

    def put(self, plural: str, key: Key, obj: Obj) -> Obj:
        """Store `obj` under `key` with the next resourceVersion; ADDED or MODIFIED to watchers. Returns a copy."""
        prev = self.objects[plural].get(key)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[plural][key] = obj
        self._emit(plural, "ADDED" if prev is None else "MODIFIED", obj, prev)
        return copy.deepcopy(obj)

    def delete(self, plural: str, key: Key) -> Obj:
        """Remove an object; DELETED (with a new resourceVersion) to watchers. KeyError if absent."""
        obj = self.objects[plural].pop(key)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(plural, "DELETED", obj, obj)
        return copy.deepcopy(obj)

    # ------------------------------------------------------------ watching

    def watch(self, watcher: Watcher, since: str, initial: bool = False) -> None:
        """Queue what `watcher` must see first: every object for `since` in ("", "0"), else the history after it.

        `initial` (sendInitialEvents) lists every object, then a bookmark marking the end of them.
        """
        plural = watcher.resource.plural
        if since in ("", "0") or initial:
            for o in self.list(plural, watcher.namespace):
                ev = watcher.event("ADDED", o, None)
                if ev is not None:
                    watcher.queue.put_nowait(ev)
            if initial:
                watcher.queue.put_nowait(self._bookmark(watcher, {"k8s.io/initial-events-end": "true"}))
        elif not since.isdigit():
            watcher.queue.put_nowait(status_event(400, "BadRequest", f"invalid resource version: {since}"))
        elif int(since) < self.floor:
            watcher.queue.put_nowait(status_event(410, "Expired", f"too old resource version: {since} ({self.rv})"))
        else:
            for rv, p, etype, obj, prev in self.history:
                if rv > int(since) and p == plural:
                    ev = watcher.event(etype, obj, prev)
                    if ev is not None:
                        watcher.queue.put_nowait(ev)
        self.watchers.add(watcher)

    def expire(self) -> None:
        """Compact history: every open watch gets a 410 Expired ERROR event, as after etcd compaction."""
        self.floor = self.rv
        self.history.clear()
        for w in list(self.watchers):
            w.queue.put_nowait(status_event(410, "Expired", f"too old resource version: ({self.rv})"))

    def drop_watches(self) -> None:
        """Cut every watch connection without a clean end."""
        for w in list(self.watchers):
            w.queue.put_nowait("drop")

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to every watch that asked for bookmarks."""
        for w in list(self.watchers):
            if w.bookmarks:
                w.queue.put_nowait(self._bookmark(w))

    def _bookmark(self, w: Watcher, annotations: dict[str, str] | None = None) -> Obj:
        meta: Obj = {"resourceVersion": str(self.rv)}
        if annotations:
            meta["annotations"] = annotations
        return {"type": "BOOKMARK",
                "object": {"kind": w.resource.kind, "apiVersion": w.resource.api_version(w.version), "metadata": meta}}

    def _emit(self, plural: str, etype: str, obj: Obj, prev: Obj | None) -> None:
        snapshot = copy.deepcopy(obj)
        before = copy.deepcopy(prev) if prev is not None and prev is not obj else snapshot if prev is obj else None
        self.history.append((self.rv, plural, etype, snapshot, before))
        for w in list(self.watchers):
            if w.resource.plural == plural:
                ev = w.event(etype, snapshot, before)
                if ev is not None:
                    w.queue.put_nowait(ev)


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Obj:
    """A metav1.Status object."""
    out: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


def status_event(code: int, reason: str, message: str) -> Obj:
    return {"type": "ERROR", "object": status(code, reason, message)}
