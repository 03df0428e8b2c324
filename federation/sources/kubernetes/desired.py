"""The objects one federated service becomes in a cluster: its ServiceImport, derived Service and EndpointSlices. Pure.

The ServiceImport carries what the MCS API says it must (KEP-1645): type, the union of ports, one
clusterset IP per family with `ipFamilies` in the same order (the derived Service's ClusterIPs, the
addresses pods here can route), session affinity, internal traffic policy and traffic distribution
of the oldest export, and the exported labels and annotations. The EndpointSlices are MCS slices
(`multicluster.kubernetes.io/service-name`, `.../source-cluster`), one group per source site:
endpoints of sites on this network directly, the local egress listener for sites on other networks.

A headless service's endpoints on another network (with `endpoints`, this site's addresses for them) are
one slice endpoint each, with its hostname and its address here; that address is the ClusterIP of a
selector-less per-endpoint Service (labelled `ENDPOINT_OF_LABEL`, not an MCS object) whose own slice
points at the egress listener of that endpoint, so kube-proxy takes `<address>:<port>` there.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from federation.core.endpoints import RemoteEndpoint
from federation.core.records import ServiceExport, ServiceType, Site
from federation.core.view import FederatedService, MeshView
from federation.sources.kubernetes.conversion import Obj

EgressTarget = Callable[[str, str, str], "tuple[str, int] | None"]
"""(namespace, name, port name) -> (address, port) of the local egress listener, or None."""
EndpointTarget = Callable[[str, str, str, str, str], "tuple[str, int] | None"]
"""(namespace, name, port name, site, hostname) -> (address, port) of that endpoint's egress listener, or None."""

SERVICES = "services"
ENDPOINTSLICES = "endpointslices"
SERVICEIMPORTS = "serviceimports"

MCS_SERVICE_LABEL = "multicluster.kubernetes.io/service-name"
SOURCE_CLUSTER_LABEL = "multicluster.kubernetes.io/source-cluster"
SLICE_SERVICE_LABEL = "kubernetes.io/service-name"
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
ENDPOINT_OF_LABEL = "multicluster.meshfed.io/endpoint-of"
"""On a per-endpoint Service and its slice: the imported service it stands for one endpoint of."""
SLICE_MANAGER = "agent.meshfed.io"
"""A label value (no "/" allowed), in the form the EndpointSlice controller uses for its own."""
MAX_SLICE_ENDPOINTS = 100
"""The EndpointSlice controller's default; kube-proxy handles larger slices worse."""
DEFAULT_AFFINITY_TIMEOUT = 10800
"""What the API server fills in for ClientIP affinity without a timeout (three hours)."""

PortKey = tuple[tuple[str, int, str], ...]


def derived_name(name: str) -> str:
    """The derived Service's name: recognisable, unique per import, and short enough for slice names."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:44]}-mf-{digest}"


def desired_objects(view: MeshView, svc: FederatedService, own: Site, egress_target: EgressTarget,
                    owned: tuple[str, str], current_svc: Obj | None,
                    remote: tuple[RemoteEndpoint, ...] | None = None,
                    endpoint_target: EndpointTarget | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(resource, object) for everything `svc` needs in this cluster; `remote`: the addresses here of its
    headless endpoints on other networks (None: the egress listener stands for each such site)."""
    out = head_objects(svc, owned, current_svc, remote, endpoint_target)
    for objs in slice_objects(view, svc, own, egress_target, owned, remote).values():
        out.extend(objs)
    return out


def head_objects(svc: FederatedService, owned: tuple[str, str], current_svc: Obj | None,
                 remote: tuple[RemoteEndpoint, ...] | None = None,
                 endpoint_target: EndpointTarget | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The objects of `svc` that are not one source site's EndpointSlices: the derived Service, the
    ServiceImport and the per-endpoint Services with their slices."""
    ns, name = svc.namespace, svc.name
    derived = derived_name(name)
    headless = svc.type is ServiceType.HEADLESS
    ports = [_port(p.name, p.port, p.protocol.value, p.app_protocol) for p in svc.ports]
    labels = {owned[0]: owned[1], MCS_SERVICE_LABEL: name}
    derived_spec: dict[str, Any] = {"type": "ClusterIP", "ports": ports}
    if headless:
        derived_spec["clusterIP"] = "None"
    else:
        derived_spec.update(affinity(svc))  # kube-proxy keeps clients on one endpoint of the derived Service
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": derived, "namespace": ns, "labels": dict(labels)},
        "spec": derived_spec,
    }
    out: list[tuple[str, dict[str, Any]]] = [(SERVICES, service), (SERVICEIMPORTS, _import(svc, owned, current_svc))]
    if remote is not None and headless:
        out.extend(_per_endpoint(svc, remote, owned, derived, endpoint_target))
    return out


def slice_objects(view: MeshView, svc: FederatedService, own: Site, egress_target: EgressTarget,
                  owned: tuple[str, str], remote: tuple[RemoteEndpoint, ...] | None = None,
                  exports: tuple[ServiceExport, ...] | None = None) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The MCS EndpointSlices of `svc` by source site, for `exports` (None: all of the service's)."""
    derived = derived_name(svc.name)
    labels = {owned[0]: owned[1], MCS_SERVICE_LABEL: svc.name}
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for (site, family, port_key), endpoints in sorted(_endpoint_groups(view, svc, own, egress_target, remote,
                                                                       exports).items()):
        slice_labels = {**labels, SLICE_SERVICE_LABEL: derived, SLICE_MANAGER_LABEL: SLICE_MANAGER,
                        SOURCE_CLUSTER_LABEL: site}
        for chunk in range(0, len(endpoints), MAX_SLICE_ENDPOINTS):
            digest = hashlib.sha256(f"{site}|{family}|{port_key}|{chunk}".encode()).hexdigest()[:8]
            out.setdefault(site, []).append((ENDPOINTSLICES, {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": f"{derived}-{digest}", "namespace": svc.namespace, "labels": dict(slice_labels)},
                "addressType": family,
                "endpoints": endpoints[chunk:chunk + MAX_SLICE_ENDPOINTS],
                "ports": [_port(pname, number, proto) for pname, number, proto in port_key],
            }))  # fmt: skip
    return out


def affinity(svc: FederatedService) -> dict[str, Any]:
    """sessionAffinity (and its config) as a Service or ServiceImport spec carries it."""
    if svc.session_affinity is None:
        return {}
    out: dict[str, Any] = {"sessionAffinity": svc.session_affinity}
    if svc.session_affinity == "ClientIP":
        timeout = svc.session_affinity_timeout or DEFAULT_AFFINITY_TIMEOUT
        out["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    return out


def families_of(addresses: list[str]) -> list[str]:
    """The IP families of `addresses`, in the order they first appear."""
    return list(dict.fromkeys(_family(a) for a in addresses if _family(a)))


# ---------------------------------------------------------------- the pieces


def _import(svc: FederatedService, owned: tuple[str, str], current_svc: Obj | None) -> dict[str, Any]:
    current = (current_svc or {}).get("spec") or {}
    spec: dict[str, Any] = {"type": svc.type.value,
                            "ports": [_port(p.name, p.port, p.protocol.value, p.app_protocol) for p in svc.ports]}
    if svc.type is ServiceType.CLUSTER_SET_IP:
        ips = [ip for ip in current.get("clusterIPs") or [current.get("clusterIP")]
               if isinstance(ip, str) and ip not in ("", "None")]
        spec["ips"] = ips[:2]
        spec["ipFamilies"] = families_of(spec["ips"])  # one per IP, in the same order (MCS)
        spec.update(affinity(svc))
    else:
        spec["ips"] = []
        wanted = list(svc.ip_families) or families_of([a for e in svc.exports for ep in e.endpoints
                                                       for a in ep.addresses])
        spec["ipFamilies"] = wanted[:2] or [f for f in current.get("ipFamilies") or [] if f in ("IPv4", "IPv6")][:2]
    if svc.internal_traffic_policy:
        spec["internalTrafficPolicy"] = svc.internal_traffic_policy
    if svc.traffic_distribution:
        spec["trafficDistribution"] = svc.traffic_distribution
    meta: dict[str, Any] = {"name": svc.name, "namespace": svc.namespace,
                            "labels": {**{k: v for k, v in svc.labels if k != owned[0]}, owned[0]: owned[1]}}
    if svc.annotations:
        meta["annotations"] = dict(svc.annotations)
    return {
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": meta,
        "spec": spec,
        # Written through the status subresource once the object exists (create drops status).
        "status": {"clusters": [{"cluster": site} for site in svc.sites]},
    }


def _endpoint_groups(view: MeshView, svc: FederatedService, own: Site, egress_target: EgressTarget,
                     remote: tuple[RemoteEndpoint, ...] | None = None, exports: tuple[ServiceExport, ...] | None = None,
                     ) -> dict[tuple[str, str, PortKey], list[dict[str, Any]]]:
    """Slice endpoints by (source site, address family, port mapping): a slice has one port list."""
    groups: dict[tuple[str, str, PortKey], list[dict[str, Any]]] = {}
    headless = svc.type is ServiceType.HEADLESS
    listeners: dict[str, tuple[str, int]] = {}
    for p in svc.ports:
        target = egress_target(svc.namespace, svc.name, p.name)
        if target is not None:
            listeners[p.name] = target
    for export in svc.exports if exports is None else exports:
        site = view.sites.get(export.site)
        if site is None:
            continue
        served = [p for p in svc.ports if svc.serves(export.site, p.name)]
        if not served:
            continue  # every port of this site's export conflicts: it gets no traffic
        if site.network == own.network:
            for e in export.endpoints:
                port_key = tuple((p.name, e.port_for(p), p.protocol.value) for p in served)
                for family, addresses in _by_family(e.addresses).items():
                    item: dict[str, Any] = {"addresses": addresses, "conditions": {"ready": e.ready}}
                    if headless and e.hostname:
                        item["hostname"] = e.hostname
                    if e.locality.zone:
                        item["zone"] = e.locality.zone
                    groups.setdefault((export.site, family, port_key), []).append(item)
            continue
        if remote is not None and headless:
            # Another network, headless: each endpoint at its address here (its per-endpoint Service).
            port_key = tuple((p.name, p.port, p.protocol.value) for p in served)
            for r in remote:
                if r.site == export.site:
                    groups.setdefault((export.site, _family(r.address), port_key), []).append(
                        {"addresses": [r.address], "conditions": {"ready": r.endpoint.ready}, "hostname": r.hostname})
            continue
        # Another network: the local egress listener stands for the site's endpoints, ready while one is.
        ready = any(e.ready for e in export.endpoints)
        by_address: dict[str, list[tuple[str, int, str]]] = {}
        for p in served:
            if p.name in listeners:
                address, port = listeners[p.name]
                by_address.setdefault(address, []).append((p.name, port, p.protocol.value))
        for address, plist in by_address.items():
            for family in _by_family((address,)):
                groups.setdefault((export.site, family, tuple(plist)), []).append(
                    {"addresses": [address], "conditions": {"ready": ready}})
    return groups


def _per_endpoint(svc: FederatedService, remote: tuple[RemoteEndpoint, ...], owned: tuple[str, str],
                  derived: str, endpoint_target: EndpointTarget | None) -> list[tuple[str, dict[str, Any]]]:
    """A selector-less Service at each remote endpoint's address, and a slice to its egress listeners."""
    out: list[tuple[str, dict[str, Any]]] = []
    for r in remote:
        served = [p for p in svc.ports if svc.serves(r.site, p.name)]
        digest = hashlib.sha256(f"{r.site}|{r.hostname}|{r.address}".encode()).hexdigest()[:8]
        name = f"{derived}-{digest}"
        labels = {owned[0]: owned[1], ENDPOINT_OF_LABEL: svc.name}
        out.append((SERVICES, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": svc.namespace, "labels": dict(labels)},
            "spec": {"type": "ClusterIP", "clusterIP": r.address, "clusterIPs": [r.address],
                     "ports": [_port(p.name, p.port, p.protocol.value) for p in served]},
        }))  # fmt: skip
        by_host: dict[str, list[tuple[str, int, str]]] = {}
        for p in served:
            target = endpoint_target(svc.namespace, svc.name, p.name, r.site, r.hostname) if endpoint_target else None
            if target is not None:
                by_host.setdefault(target[0], []).append((p.name, target[1], p.protocol.value))
        for host, plist in sorted(by_host.items()):
            tail = hashlib.sha256(host.encode()).hexdigest()[:6]
            out.append((ENDPOINTSLICES, {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-{tail}", "namespace": svc.namespace,
                             "labels": {**labels, SLICE_SERVICE_LABEL: name, SLICE_MANAGER_LABEL: SLICE_MANAGER}},
                "addressType": _family(host) or "IPv4",
                "endpoints": [{"addresses": [host], "conditions": {"ready": r.endpoint.ready}}],
                "ports": [_port(n, number, proto) for n, number, proto in plist],
            }))  # fmt: skip
    return out


def _port(name: str, number: int, protocol: str, app_protocol: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": number, "protocol": protocol}
    if app_protocol:
        out["appProtocol"] = app_protocol
    return out


def _family(address: Any) -> str:
    try:
        return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"
    except ValueError:
        return ""


def _by_family(addresses: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in addresses:
        family = _family(a)
        if family:
            out.setdefault(family, []).append(a)
    return out


def labels_of(obj: Obj) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}
