"""Pure import plan: from the mesh view to ServiceImports, derived Services and EndpointSlices.

For each federated service the agent owns, in the service's namespace, a ServiceImport (MCS) and a
selector-less derived Service whose EndpointSlices point straight at the endpoints of sites on this
site's network, and at the local gateway's egress listener for sites on other networks. Only objects
carrying the owned label are ever changed or deleted.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.core.records import ServiceType, Site
from federation.core.view import FederatedService, MeshView
from federation.sources.kubernetes.conversion import Obj, ObjKey, is_owned, key_of

EgressTarget = Callable[[str, str, str], "tuple[str, int] | None"]
"""(namespace, name, port name) -> (address, port) of the local egress listener, or None."""

SERVICES = "services"
ENDPOINTSLICES = "endpointslices"
SERVICEIMPORTS = "serviceimports"
RESOURCES = (SERVICES, SERVICEIMPORTS, ENDPOINTSLICES)

MCS_SERVICE_LABEL = "multicluster.kubernetes.io/service-name"
SLICE_SERVICE_LABEL = "kubernetes.io/service-name"
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "agent.meshfed.io"
"""A label value (no "/" allowed), in the form the EndpointSlice controller uses for its own."""
MAX_SLICE_ENDPOINTS = 100
"""The EndpointSlice controller's default; kube-proxy handles larger slices worse."""


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


def derived_name(name: str) -> str:
    """The derived Service's name: recognisable, unique per import, and short enough for slice names."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:44]}-mf-{digest}"


def plan_imports(
    view: MeshView,
    own: Site,
    existing: Owned,
    egress_target: EgressTarget,
    owned: tuple[str, str],
) -> list[Op]:
    """The operations that make the owned objects match the mesh view."""
    desired: dict[str, dict[ObjKey, dict[str, Any]]] = {r: {} for r in RESOURCES}
    for (ns, name), svc in view.services().items():
        derived = derived_name(name)
        current_svc = _owned(existing.services, owned).get((ns, derived))
        for resource, obj in _desired_for(view, svc, own, egress_target, owned, current_svc):
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
                ops.append(Patch(resource, k[0], k[1], _patch_body(resource, want)))
            if have is not None and resource == SERVICEIMPORTS and _clusters(have) != _clusters(want):
                ops.append(Patch(resource, k[0], k[1], {"status": want["status"]}, "status"))
    deletes: list[Op] = [
        Delete(resource, *k)
        for resource in reversed(RESOURCES)
        for k in sorted(_owned(existing.of(resource), owned))
        if k not in desired[resource]
    ]
    return recreate + ops + deletes


# ---------------------------------------------------------------- desired objects


def _desired_for(
    view: MeshView,
    svc: FederatedService,
    own: Site,
    egress_target: EgressTarget,
    owned: tuple[str, str],
    current_svc: Obj | None,
) -> list[tuple[str, dict[str, Any]]]:
    ns, name = svc.namespace, svc.name
    derived = derived_name(name)
    headless = svc.type is ServiceType.HEADLESS
    ports = [{"name": p.name, "port": p.port, "protocol": p.protocol.value} for p in svc.ports]
    labels = {owned[0]: owned[1], MCS_SERVICE_LABEL: name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": derived, "namespace": ns, "labels": dict(labels)},
        "spec": {"type": "ClusterIP", "ports": ports, **({"clusterIP": "None"} if headless else {})},
    }
    ips: list[str] = []
    cluster_ip = ((current_svc or {}).get("spec") or {}).get("clusterIP")
    if not headless and isinstance(cluster_ip, str) and cluster_ip not in ("", "None"):
        ips = [cluster_ip]
    serviceimport = {
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": name, "namespace": ns, "labels": {owned[0]: owned[1]}},
        "spec": {"type": svc.type.value, "ports": ports, "ips": ips},
        # Written through the status subresource once the object exists (create drops status).
        "status": {"clusters": [{"cluster": site} for site in svc.sites]},
    }
    out: list[tuple[str, dict[str, Any]]] = [(SERVICES, service), (SERVICEIMPORTS, serviceimport)]
    slice_labels = {
        **labels,
        SLICE_SERVICE_LABEL: derived,
        SLICE_MANAGER_LABEL: SLICE_MANAGER,
    }
    for (family, port_key), endpoints in sorted(_endpoint_groups(view, svc, own, egress_target, headless).items()):
        for chunk in range(0, len(endpoints), MAX_SLICE_ENDPOINTS):
            digest = hashlib.sha256(f"{family}|{port_key}|{chunk}".encode()).hexdigest()[:8]
            out.append((ENDPOINTSLICES, {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{derived}-{digest}", "namespace": ns, "labels": dict(slice_labels)},
                "addressType": family,
                "endpoints": endpoints[chunk:chunk + MAX_SLICE_ENDPOINTS],
                "ports": [
                    {"name": pname, "port": number, "protocol": proto} for pname, number, proto in port_key
                ],
            }))  # fmt: skip
    return out


PortKey = tuple[tuple[str, int, str], ...]


def _endpoint_groups(
    view: MeshView, svc: FederatedService, own: Site, egress_target: EgressTarget, headless: bool
) -> dict[tuple[str, PortKey], list[dict[str, Any]]]:
    """Slice endpoints grouped by address family and port mapping (a slice has one port list)."""
    groups: dict[tuple[str, PortKey], list[dict[str, Any]]] = {}
    remote_ready: bool | None = None
    for export in svc.exports:
        site = view.sites.get(export.site)
        if site is None:
            continue
        if site.network != own.network:
            remote_ready = bool(remote_ready) or any(e.ready for e in export.endpoints)
            continue
        for e in export.endpoints:
            port_key = tuple((p.name, e.port_for(p), p.protocol.value) for p in svc.ports)
            for family, addresses in _by_family(e.addresses).items():
                item: dict[str, Any] = {"addresses": addresses, "conditions": {"ready": e.ready}}
                if headless and e.hostname:
                    item["hostname"] = e.hostname
                if e.locality.zone:
                    item["zone"] = e.locality.zone
                groups.setdefault((family, port_key), []).append(item)
    if remote_ready is not None:
        by_address: dict[str, list[tuple[str, int, str]]] = {}
        for p in svc.ports:
            target = egress_target(svc.namespace, svc.name, p.name)
            if target is not None:
                by_address.setdefault(target[0], []).append((p.name, target[1], p.protocol.value))
        for address, plist in by_address.items():
            for family in _by_family((address,)):
                item = {"addresses": [address], "conditions": {"ready": remote_ready}}
                groups.setdefault((family, tuple(plist)), []).append(item)
    return groups


def _by_family(addresses: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in addresses:
        try:
            family = "IPv6" if ipaddress.ip_address(a).version == 6 else "IPv4"
        except ValueError:
            continue
        out.setdefault(family, []).append(a)
    return out


# ---------------------------------------------------------------- comparing


def _owned(objs: Mapping[ObjKey, Obj], owned: tuple[str, str]) -> dict[ObjKey, Obj]:
    return {k: o for k, o in objs.items() if is_owned(o, owned)}


def _headless(obj: Obj) -> bool:
    return bool((obj.get("spec") or {}).get("clusterIP") == "None")


def _projection(resource: str, obj: Obj, want: Obj) -> Any:
    """The fields the agent sets (labels: only its own keys), normalised as the API server returns them."""
    have_labels = (obj.get("metadata") or {}).get("labels") or {}
    labels = {k: have_labels.get(k) for k in want["metadata"]["labels"]}
    spec = obj.get("spec") or {}
    if resource == ENDPOINTSLICES:
        return (labels, obj.get("addressType"), _norm_endpoints(obj.get("endpoints")), _norm_ports(obj.get("ports")))
    if resource == SERVICEIMPORTS:
        return (labels, spec.get("type"), _norm_ports(spec.get("ports")), list(spec.get("ips") or []))
    return (labels, _norm_ports(spec.get("ports")))


def _clusters(obj: Obj) -> list[Any]:
    clusters = (obj.get("status") or {}).get("clusters") or []
    return [c.get("cluster") for c in clusters if isinstance(c, Mapping)]


def _norm_ports(ports: Any) -> list[tuple[Any, ...]]:
    return [(p.get("name", ""), p.get("port"), p.get("protocol", "TCP")) for p in ports or []]


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


def _patch_body(resource: str, want: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"labels": want["metadata"]["labels"]}}
    if resource == ENDPOINTSLICES:
        body["endpoints"] = want["endpoints"]
        body["ports"] = want["ports"]
    elif resource == SERVICEIMPORTS:
        body["spec"] = want["spec"]
    else:
        body["spec"] = {"ports": want["spec"]["ports"]}
    return body
