"""Pure import plan: from the mesh view to ServiceImports, derived Services and EndpointSlices.

For each federated service, in the service's namespace, the objects of desired.py; this module
compares them with what the agent owns and plans the writes. Only objects carrying the owned label
are ever changed or deleted; the labels and annotations of an owned ServiceImport are all the
agent's (the owned label plus the exported ones), so an exported label that goes is removed.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.endpoints import EndpointAddresses
from federation.core.records import ServiceExport, ServiceType, Site
from federation.core.view import FederatedService, MeshView, ServiceId
from federation.sources.kubernetes.conversion import Obj, ObjKey, is_owned, key_of
from federation.sources.kubernetes.desired import (
    DEFAULT_AFFINITY_TIMEOUT,
    ENDPOINT_OF_LABEL,
    ENDPOINTSLICES,
    MCS_SERVICE_LABEL,
    SERVICEIMPORTS,
    SERVICES,
    SLICE_MANAGER,
    SLICE_MANAGER_LABEL,
    SLICE_SERVICE_LABEL,
    SOURCE_CLUSTER_LABEL,
    EgressTarget,
    EndpointTarget,
    derived_name,
    head_objects,
    labels_of,
    slice_objects,
)

__all__ = [
    "MCS_SERVICE_LABEL",
    "SLICE_MANAGER",
    "SLICE_MANAGER_LABEL",
    "SLICE_SERVICE_LABEL",
    "SOURCE_CLUSTER_LABEL",
    "Create",
    "Delete",
    "EgressTarget",
    "ImportIndex",
    "Inputs",
    "Op",
    "Owned",
    "Patch",
    "Touched",
    "derived_name",
    "plan_imports",
]

RESOURCES = (SERVICES, SERVICEIMPORTS, ENDPOINTSLICES)


@dataclass(frozen=True, slots=True)
class Create:
    """Create `obj` in `resource`."""

    resource: str
    obj: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Patch:
    """JSON merge patch of one owned object."""

    resource: str
    namespace: str
    name: str
    body: dict[str, Any]
    subresource: str = ""
    """"status" for the status subresource (ServiceImport.status.clusters)."""


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete one owned object."""

    resource: str
    namespace: str
    name: str


Op = Create | Patch | Delete


@dataclass(frozen=True, slots=True)
class Owned:
    """The objects the agent owns now, per resource, keyed by (namespace, name)."""

    services: Mapping[ObjKey, Obj] = field(default_factory=dict)
    serviceimports: Mapping[ObjKey, Obj] = field(default_factory=dict)
    endpointslices: Mapping[ObjKey, Obj] = field(default_factory=dict)

    def of(self, resource: str) -> Mapping[ObjKey, Obj]:
        return {SERVICES: self.services, SERVICEIMPORTS: self.serviceimports, ENDPOINTSLICES: self.endpointslices}[
            resource
        ]


def plan_imports(
    view: MeshView,
    own: Site,
    existing: Owned,
    egress_target: EgressTarget,
    owned: tuple[str, str],
    endpoints: EndpointAddresses | None = None,
    endpoint_target: EndpointTarget | None = None,
) -> list[Op]:
    """The operations that make the owned objects match the mesh view (`endpoints`: this site's addresses of
    headless endpoints on other networks, each a per-endpoint Service; None: off)."""
    return ImportIndex().apply(Inputs(view, own, existing, egress_target, owned, endpoints, endpoint_target))


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the desired objects are computed from, and what the cluster holds now."""

    view: MeshView
    own: Site
    existing: Owned
    egress_target: EgressTarget
    owned: tuple[str, str]
    endpoints: EndpointAddresses | None = None
    endpoint_target: EndpointTarget | None = None


@dataclass(frozen=True, slots=True)
class Touched:
    """What changed since the last plan: services (their exports, a site they are exported from, their
    egress listeners or endpoint addresses) and owned objects in the cluster (resource, key)."""

    services: frozenset[ServiceId] = frozenset()
    objects: frozenset[tuple[str, ObjKey]] = frozenset()
    sites: frozenset[str] = frozenset()
    """Sites whose record came, went or changed (their network decides their slices)."""


Keyed = tuple[tuple[str, ObjKey], dict[str, Any]]
"""((resource, key), object)"""


@dataclass(frozen=True, slots=True)
class _Entry:
    """What one service's desired objects were computed from, and its slices by source site."""

    shape: FederatedService
    """The service without its exports and conflicts: while it stays, a site's slices depend on its export only."""
    targets: tuple[Any, ...]
    remote: Any
    groups: dict[str, tuple[ServiceExport, str | None, list[Keyed]]]
    """site -> (its export, its network, its EndpointSlices)"""
    exports: tuple[ServiceExport, ...]
    current: Obj | None
    """The derived Service the ServiceImport's IPs were read from (the store's object)."""
    head: list[Keyed]
    """The derived Service, the ServiceImport and the per-endpoint objects."""


class ImportIndex:
    """The desired objects of every imported service, kept per service and source site (issue 11: work in
    proportion to the change). Pure: `apply(inputs, touched)` recomputes the touched services only (and of
    those, the EndpointSlices of the sites whose export or network changed) and returns the operations for
    what changed, the ones a full plan of the same inputs would return when the cluster matched the previous
    plan; `touched=None` (the first pass, a relist, a periodic resync) recomputes and compares everything."""

    def __init__(self) -> None:
        self._by_service: dict[ServiceId, dict[tuple[str, ObjKey], dict[str, Any]]] = {}
        self._entries: dict[ServiceId, _Entry] = {}
        self._desired: dict[str, dict[ObjKey, dict[str, Any]]] = {r: {} for r in RESOURCES}
        self._network: str | None = None
        self.computed = 0
        """Services whose desired objects were computed, in all (tests and the benchmark read it)."""
        self.sliced = 0
        """Source sites whose EndpointSlices were computed, in all."""

    def desired(self) -> dict[str, dict[ObjKey, dict[str, Any]]]:
        """Every desired object, by resource and key (a copy)."""
        return {r: dict(objs) for r, objs in self._desired.items()}

    def apply(self, inputs: Inputs, touched: Touched | None = None) -> list[Op]:
        """The operations for what `touched` says changed (None: everything)."""
        view, existing = inputs.view, inputs.existing
        if touched is None or inputs.own.network != self._network:  # our network decides every slice
            self._by_service.clear()
            self._entries.clear()
            self._desired = {r: {} for r in RESOURCES}
            self._network = inputs.own.network
            services: set[ServiceId] = set(view.services())
            candidates = {(r, k) for r in RESOURCES for k, o in existing.of(r).items() if is_owned(o, inputs.owned)}
        else:
            services = set(touched.services)
            candidates = set(touched.objects)
            for resource, k in touched.objects:
                obj = existing.of(resource).get(k)
                owner = _service_of(resource, k, obj) if obj is not None and is_owned(obj, inputs.owned) else None
                services.update(s for s in (owner, self._owner(resource, k)) if s is not None)
        moved = None if touched is None else touched.sites
        for ident in services:
            old = self._by_service.pop(ident, {})
            new = self._compute(inputs, ident, moved, old)
            # Only objects computed afresh are compared with the cluster; one kept from the last pass is as it was.
            for key in old if new is not old else ():
                if key not in new:
                    self._desired[key[0]].pop(key[1], None)
                    candidates.add(key)
            for key, obj in new.items() if new is not old else ():
                if old.get(key) is not obj:
                    self._desired[key[0]][key[1]] = obj
                    candidates.add(key)
            if new:
                self._by_service[ident] = new
        return self._diff(inputs, candidates)

    def _owner(self, resource: str, k: ObjKey) -> ServiceId | None:
        obj = self._desired[resource].get(k)
        return _service_of(resource, k, obj) if obj is not None else None

    def _compute(self, inputs: Inputs, ident: ServiceId, moved: frozenset[str] | None,
                 before: dict[tuple[str, ObjKey], dict[str, Any]]) -> dict[tuple[str, ObjKey], dict[str, Any]]:
        """The desired objects of `ident`, reusing what the last pass computed where its inputs are the same
        objects (`moved`: the sites whose record changed; None: do not assume only they did)."""
        view = inputs.view
        svc = view.services().get(ident)
        old = self._entries.pop(ident, None)
        if svc is None:
            return {}
        self.computed += 1
        ns, name = ident
        current = inputs.existing.services.get((ns, derived_name(name)))
        current_svc = current if current is not None and is_owned(current, inputs.owned) else None
        remote = inputs.endpoints.get(ident, ()) if inputs.endpoints is not None else None
        targets = tuple(inputs.egress_target(ns, name, p.name) for p in svc.ports)
        shape = dataclasses.replace(svc, exports=(), conflicts=())
        same = old is not None and old.shape == shape and old.remote is remote
        kept_exports = same and old is not None and len(old.exports) == len(svc.exports) \
            and all(map(operator.is_, old.exports, svc.exports))
        kept_groups = old.groups if same and old is not None and old.targets == targets else {}
        if kept_exports and kept_groups and moved is not None:
            check = [e for e in svc.exports if e.site in moved]  # only these can have moved to another network
            groups = kept_groups
        else:
            check, groups = list(svc.exports), {}
        todo: list[ServiceExport] = []
        for e in check:
            site = view.sites.get(e.site)
            network = site.network if site is not None else None
            kept = kept_groups.get(e.site)
            if kept is not None and kept[0] is e and kept[1] == network:
                groups[e.site] = kept
            else:
                todo.append(e)
                groups = dict(groups) if groups is kept_groups else groups
                groups[e.site] = (e, network, [])
        if todo:
            self.sliced += len(todo)
            fresh = slice_objects(view, svc, inputs.own, inputs.egress_target, inputs.owned, remote, tuple(todo))
            for e in todo:
                groups[e.site] = (e, groups[e.site][1], _keyed(fresh.get(e.site, [])))
        if kept_exports and old is not None and old.current is current_svc \
                and (remote is None or svc.type is not ServiceType.HEADLESS):
            head = old.head  # e.g. a site record changed that moves none of this service's objects
        else:
            head = _keyed(head_objects(svc, inputs.owned, current_svc, remote, inputs.endpoint_target))
        self._entries[ident] = _Entry(shape, targets, remote, groups, svc.exports, current_svc, head)
        if old is not None and groups is old.groups and head is old.head:
            return before  # nothing computed afresh
        out = dict(head)
        for _, _, objs in groups.values():
            out.update(objs)
        return out

    def _diff(self, inputs: Inputs, candidates: set[tuple[str, ObjKey]]) -> list[Op]:
        ops: list[Op] = []
        recreate: list[Op] = []
        deletes: list[Delete] = []
        for resource in RESOURCES:
            store = inputs.existing.of(resource)
            desired = self._desired[resource]
            for k in sorted(k for r, k in candidates if r == resource):
                want = desired.get(k)
                found = store.get(k)
                have = found if found is not None and is_owned(found, inputs.owned) else None
                if want is None:
                    if have is not None:
                        deletes.append(Delete(resource, *k))
                elif have is None:
                    ops.append(Create(resource, want))
                elif resource == SERVICES and _headless(have) != _headless(want):
                    recreate.append(Delete(resource, *k))  # clusterIP is immutable
                    ops.append(Create(resource, want))
                elif _projection(resource, have, want) != _projection(resource, want, want):
                    ops.append(Patch(resource, k[0], k[1], _patch_body(resource, want, have)))
                if want is not None and have is not None and resource == SERVICEIMPORTS \
                        and _clusters(have) != _clusters(want):
                    ops.append(Patch(resource, k[0], k[1], {"status": want["status"]}, "status"))
        deletes.sort(key=lambda op: (-RESOURCES.index(op.resource), op.namespace, op.name))
        return recreate + ops + deletes


def _keyed(objs: list[tuple[str, dict[str, Any]]]) -> list[Keyed]:
    return [((resource, key_of(obj)), obj) for resource, obj in objs]


def _service_of(resource: str, k: ObjKey, obj: Obj) -> ServiceId | None:
    """The imported service an owned object belongs to (its ServiceImport's key, or the MCS label)."""
    if resource == SERVICEIMPORTS:
        return k
    labels = labels_of(obj)
    name = labels.get(MCS_SERVICE_LABEL) or labels.get(ENDPOINT_OF_LABEL)
    return (k[0], name) if isinstance(name, str) else None


# ---------------------------------------------------------------- comparing


def _headless(obj: Obj) -> bool:
    return bool((obj.get("spec") or {}).get("clusterIP") == "None")


def _projection(resource: str, obj: Obj, want: Obj) -> Any:
    """The fields the agent sets (labels: only its own keys), normalised as the API server returns them."""
    meta = obj.get("metadata") or {}
    have_labels = meta.get("labels") or {}
    spec = obj.get("spec") or {}
    if resource == ENDPOINTSLICES:
        labels = {k: have_labels.get(k) for k in want["metadata"]["labels"]}
        return (labels, obj.get("addressType"), _norm_endpoints(obj.get("endpoints")), _norm_ports(obj.get("ports")))
    if resource == SERVICEIMPORTS:
        return (dict(have_labels), dict(meta.get("annotations") or {}), _norm_import(spec))
    labels = {k: have_labels.get(k) for k in want["metadata"]["labels"]}
    return (labels, _norm_ports(spec.get("ports")), _norm_affinity(spec))


def _clusters(obj: Obj) -> list[Any]:
    clusters = (obj.get("status") or {}).get("clusters") or []
    return [c.get("cluster") for c in clusters if isinstance(c, Mapping)]


def _norm_ports(ports: Any) -> list[tuple[Any, ...]]:
    return [(p.get("name", ""), p.get("port"), p.get("protocol", "TCP"), p.get("appProtocol", ""))
            for p in ports or []]


def _norm_affinity(spec: Mapping[str, Any]) -> tuple[Any, Any]:
    mode = spec.get("sessionAffinity") or "None"
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    return (mode, (timeout or DEFAULT_AFFINITY_TIMEOUT) if mode == "ClientIP" else None)


def _norm_import(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    rest = {k: v for k, v in spec.items() if k not in ("ports", "ips", "ipFamilies")}
    return (_norm_ports(spec.get("ports")), list(spec.get("ips") or []), list(spec.get("ipFamilies") or []),
            sorted(rest.items(), key=lambda kv: kv[0]))


def _norm_endpoints(endpoints: Any) -> list[tuple[Any, ...]]:
    return [
        (
            tuple(e.get("addresses") or ()),
            (e.get("conditions") or {}).get("ready") is not False,
            e.get("hostname"),
            e.get("zone"),
        )
        for e in endpoints or []
    ]


def _patch_body(resource: str, want: dict[str, Any], have: Obj) -> dict[str, Any]:
    """A JSON merge patch from `have` to `want` for the fields the agent sets (null removes a field)."""
    body: dict[str, Any] = {"metadata": {"labels": want["metadata"]["labels"]}}
    if resource == ENDPOINTSLICES:
        body["endpoints"] = want["endpoints"]
        body["ports"] = want["ports"]
    elif resource == SERVICEIMPORTS:
        meta = have.get("metadata") or {}
        body["metadata"] = {"labels": _replacing(meta.get("labels"), want["metadata"]["labels"])}
        annotations = _replacing(meta.get("annotations"), want["metadata"].get("annotations") or {})
        if annotations:  # an empty map would be written as `annotations: {}`
            body["metadata"]["annotations"] = annotations
        body["spec"] = _replacing(have.get("spec"), want["spec"])
    else:
        spec = want["spec"]
        body["spec"] = {"ports": spec["ports"], "sessionAffinity": spec.get("sessionAffinity", "None"),
                        "sessionAffinityConfig": spec.get("sessionAffinityConfig")}
    return body


def _replacing(have: Any, want: Mapping[str, Any]) -> dict[str, Any]:
    """`want`, plus null for every key of `have` it lacks (merge patch semantics: remove them)."""
    gone = {k: None for k in (have if isinstance(have, Mapping) else {}) if k not in want}
    return {**gone, **want}
