"""What a pass of the Kubernetes import plan computes again: the services the mesh view's change log, the
egress listener maps, the endpoint address table or the watch of owned objects say changed. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from federation.core.endpoints import EndpointAddresses
from federation.core.view import ServiceId
from federation.sources.kubernetes.conversion import Obj, ObjKey, is_owned
from federation.sources.kubernetes.desired import MCS_SERVICE_LABEL, SERVICEIMPORTS, SERVICES
from federation.sources.kubernetes.importing import ImportIndex, Inputs, Op, Touched


class ImportPlanner:
    """Follows what changed between passes of the import plan and keeps its `ImportIndex`. Pure.

    The shell calls `touch` for every owned object the cluster (or its own write) changed, and `plan` with
    the inputs of a pass; the services to compute again come from the mesh view's change log, the egress
    listener maps (a key whose listener came, went or moved) and the endpoint address table."""

    def __init__(self) -> None:
        self.index = ImportIndex()
        self._seen: int | None = None
        self._history: object = None
        """The change log of the view planned last: a view of another (a restored snapshot's) means plan all."""
        self._listeners: Mapping[Any, Any] | None = None
        self._endpoint_listeners: Mapping[Any, Any] | None = None
        self._endpoints: EndpointAddresses | None = None
        self._objects: set[tuple[str, ObjKey]] = set()
        self._full = True
        self._ips = ClusterIps()
        self.imports_changed = True
        """A ServiceImport came, went or changed since the shell last counted them (it clears this)."""
        self._ip_keys: set[ObjKey] | None = None
        """Services changed since the cluster IPs were last read (None: all)."""

    def touch(self, resource: str, key: ObjKey | None) -> None:
        """An owned object of `resource` changed in the cluster (None: the resource was listed again)."""
        if key is None:
            self._full = True
        else:
            self._objects.add((resource, key))
        self.imports_changed = self.imports_changed or resource == SERVICEIMPORTS
        if resource == SERVICES and self._ip_keys is not None:
            if key is None:
                self._ip_keys = None
            else:
                self._ip_keys.add(key)

    def cluster_ips(self, services: Mapping[ObjKey, Obj], owned: tuple[str, str]) -> Mapping[ServiceId, str] | None:
        """(namespace, name) -> the ClusterIP of its derived Service, if it changed since the last call (looks
        at the Services touched since then only)."""
        keys, self._ip_keys = self._ip_keys, set()
        return self._ips.update(services, keys, owned)

    def reset(self) -> None:
        """Plan everything next time (a pass failed, or a periodic resync is due)."""
        self._full = True

    def plan(self, inputs: Inputs, listeners: Mapping[Any, Any], endpoint_listeners: Mapping[Any, Any]) -> list[Op]:
        """The operations of this pass; `listeners`: PortId -> egress listener, `endpoint_listeners`: (ns, name,
        port, site, host) -> listener, as the targets of `inputs` read them."""
        view = inputs.view
        known = self._seen is not None and not self._full and view.history is not None and view.history is self._history
        changes = view.changes_since(self._seen) if known and self._seen is not None else None  # another log: all
        touched: Touched | None = None
        if changes is not None:
            services = set(changes.services)
            services.update(_changed(self._listeners, listeners))
            services.update(_changed(self._endpoint_listeners, endpoint_listeners))
            if inputs.endpoints is not self._endpoints:
                since = inputs.endpoints.changes_since(self._endpoints) \
                    if inputs.endpoints is not None and self._endpoints is not None else None
                services.update(since if since is not None else {*(inputs.endpoints or {}), *(self._endpoints or {})})
            touched = Touched(frozenset(services), frozenset(self._objects), changes.sites)
        ops = self.index.apply(inputs, touched)
        self._seen, self._full, self._history = view.generation, False, view.history
        self._listeners, self._endpoint_listeners, self._endpoints = listeners, endpoint_listeners, inputs.endpoints
        self._objects.clear()
        return ops


def _changed(old: Mapping[Any, Any] | None, new: Mapping[Any, Any]) -> set[ServiceId]:
    """The services with a listener key that came, went or moved from `old` to `new` (keys start ns, name)."""
    if old is new:
        return set()
    old = old or {}
    keys = {k for k, v in new.items() if old.get(k) != v} | {k for k in old if k not in new}
    return {(k[0], k[1]) for k in keys}


class ClusterIps:
    """The ClusterIP of each derived Service (the ClusterSetIP pods here can route), kept per Service key. Pure."""

    def __init__(self) -> None:
        self._by_key: dict[ObjKey, tuple[ServiceId, str]] = {}
        self._table: dict[ServiceId, str] = {}

    def update(self, services: Mapping[ObjKey, Obj], keys: Iterable[ObjKey] | None,
               owned: tuple[str, str]) -> Mapping[ServiceId, str] | None:
        """Look again at `keys` of `services` (None: all of them); the new table if it changed, else None."""
        if keys is None:
            self._by_key.clear()
            self._table.clear()
            keys = services
            changed = True
        else:
            changed = False
        for k in keys:
            old = self._by_key.pop(k, None)
            if old is not None:
                self._table.pop(old[0], None)
            new = _cluster_ip(services.get(k), owned)
            if new is not None:
                self._by_key[k] = new
                self._table[new[0]] = new[1]
            changed = changed or new != old
        return dict(self._table) if changed else None


def _cluster_ip(obj: Obj | None, owned: tuple[str, str]) -> tuple[ServiceId, str] | None:
    if obj is None or not is_owned(obj, owned):
        return None
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    name, ip = (meta.get("labels") or {}).get(MCS_SERVICE_LABEL), spec.get("clusterIP")
    if isinstance(name, str) and isinstance(ip, str) and ip not in ("", "None"):
        return (str(meta.get("namespace", "")), name), ip
    return None
