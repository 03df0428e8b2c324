"""Pure import plan: from the mesh view to ServiceImports, derived Services and EndpointSlices.

For each federated service, in the service's namespace, the objects of desired.py; this module
compares them with what the agent owns and plans the writes. Only objects carrying the owned label
are ever changed or deleted; the labels and annotations of an owned ServiceImport are all the
agent's (the owned label plus the exported ones), so an exported label that goes is removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.endpoints import EndpointAddresses
from federation.core.records import Site
from federation.core.view import MeshView
from federation.sources.kubernetes.conversion import Obj, ObjKey, is_owned, key_of
from federation.sources.kubernetes.desired import (
    DEFAULT_AFFINITY_TIMEOUT,
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
    desired_objects,
)

__all__ = ["MCS_SERVICE_LABEL", "SLICE_MANAGER", "SLICE_MANAGER_LABEL", "SLICE_SERVICE_LABEL",
           "SOURCE_CLUSTER_LABEL", "Create", "Delete", "EgressTarget", "Op", "Owned", "Patch", "derived_name",
           "plan_imports"]

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
    desired: dict[str, dict[ObjKey, dict[str, Any]]] = {r: {} for r in RESOURCES}
    for (ns, name), svc in view.services().items():
        derived = derived_name(name)
        current_svc = _owned(existing.services, owned).get((ns, derived))
        remote = endpoints.get((ns, name), ()) if endpoints is not None else None
        for resource, obj in desired_objects(view, svc, own, egress_target, owned, current_svc, remote,
                                             endpoint_target):
            desired[resource][key_of(obj)] = obj
    ops: list[Op] = []
    recreate: list[Op] = []
    for resource in RESOURCES:
        actual = _owned(existing.of(resource), owned)
        for k, want in sorted(desired[resource].items()):
            have = actual.get(k)
            if have is None:
                ops.append(Create(resource, want))
            elif resource == SERVICES and _headless(have) != _headless(want):
                recreate.append(Delete(resource, *k))  # clusterIP is immutable
                ops.append(Create(resource, want))
            elif _projection(resource, have, want) != _projection(resource, want, want):
                ops.append(Patch(resource, k[0], k[1], _patch_body(resource, want, have)))
            if have is not None and resource == SERVICEIMPORTS and _clusters(have) != _clusters(want):
                ops.append(Patch(resource, k[0], k[1], {"status": want["status"]}, "status"))
    deletes: list[Op] = [
        Delete(resource, *k)
        for resource in reversed(RESOURCES)
        for k in sorted(_owned(existing.of(resource), owned))
        if k not in desired[resource]
    ]
    return recreate + ops + deletes


# ---------------------------------------------------------------- comparing


def _owned(objs: Mapping[ObjKey, Obj], owned: tuple[str, str]) -> dict[ObjKey, Obj]:
    return {k: o for k, o in objs.items() if is_owned(o, owned)}


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
