"""Builders of Kubernetes objects shaped exactly like the API server returns them (plain dicts)."""

from __future__ import annotations

from typing import Any

CREATED = "2024-05-01T10:00:00Z"


def meta(ns: str, name: str, created: str = CREATED, labels: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": ns, "creationTimestamp": created}
    if labels:
        out["labels"] = labels
    return out


def service(
    ns: str = "shop",
    name: str = "web",
    ports: list[dict[str, Any]] | None = None,
    headless: bool = False,
    type: str = "ClusterIP",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": type,
        "selector": {"app": name},
        "ports": ports if ports is not None else [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        "sessionAffinity": "None",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    if type == "ExternalName":
        spec = {"type": type, "externalName": "example.com"}
    else:
        spec["clusterIP"] = "None" if headless else "10.96.0.10"
        spec["clusterIPs"] = [spec["clusterIP"]]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(ns, name, labels=labels), "spec": spec,
            "status": {"loadBalancer": {}}}


def endpoint(address: str, ready: bool | None = True, hostname: str | None = None, zone: str = "z1",
             terminating: bool = False) -> dict[str, Any]:
    cond: dict[str, Any] = {"serving": True, "terminating": terminating}
    if ready is not None:
        cond["ready"] = ready
    out: dict[str, Any] = {"addresses": [address], "conditions": cond, "nodeName": "node-1", "zone": zone,
                           "targetRef": {"kind": "Pod", "namespace": "shop", "name": f"pod-{address}"}}
    if hostname:
        out["hostname"] = hostname
    return out


def endpointslice(
    ns: str = "shop",
    service_name: str = "web",
    endpoints: list[dict[str, Any]] | None = None,
    ports: list[dict[str, Any]] | None = None,
    name: str | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta(ns, name or f"{service_name}-abcde", labels={
            "kubernetes.io/service-name": service_name,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        }),
        "addressType": address_type,
        "endpoints": endpoints if endpoints is not None else [endpoint("10.244.1.5")],
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def serviceexport(ns: str = "shop", name: str = "web", created: str = CREATED) -> dict[str, Any]:
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": meta(ns, name, created)}


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
