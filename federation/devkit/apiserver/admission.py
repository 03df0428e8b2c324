"""What the API server does to an object before storing it: metadata, defaults, Service IPs, schemas.

Pure but for the IP allocator's state. A refused write raises `Refused` with the HTTP code, reason and
message a real kube-apiserver gives (422 Invalid with field causes, 409 AlreadyExists, 404 NotFound).
"""

from __future__ import annotations

import copy
import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from federation.devkit.apiserver import schema
from federation.devkit.apiserver.resources import Resource

Obj = dict[str, Any]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_MAX_ANNOTATIONS = 256 * 1024


class Refused(Exception):
    """The API server refuses the write; code, reason and message as it answers them."""

    def __init__(self, code: int, reason: str, message: str, causes: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.causes = code, reason, message, list(causes)


def invalid(resource: Resource, name: str, causes: list[str]) -> Refused:
    """422 Invalid as kube-apiserver words it."""
    what = f'{resource.kind} "{name}" is invalid: ' + "; ".join(causes)
    return Refused(422, "Invalid", what, causes)


def check_metadata(resource: Resource, obj: Obj) -> None:
    """Names, labels and annotations as ObjectMeta validation checks them."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise Refused(400, "BadRequest", "the object has no metadata")
    name = meta.get("name")
    causes = []
    pattern = _LABEL_1035 if resource.plural in ("services", "namespaces") else _SUBDOMAIN
    if not isinstance(name, str) or not name:
        causes.append("metadata.name: Required value: name or generateName is required")
    elif len(name) > (63 if pattern is _LABEL_1035 else 253) or not pattern.match(name):
        causes.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 "
                      f"{'label' if pattern is _LABEL_1035 else 'subdomain'} must consist of lower case "
                      "alphanumeric characters or '-'")
    for k, v in (meta.get("labels") or {}).items():
        if not _QUALIFIED.match(str(k)):
            causes.append(f"metadata.labels: Invalid value: {k!r}: name part must consist of alphanumeric characters")
        if not isinstance(v, str) or not _LABEL_VALUE.match(v):
            causes.append(f"metadata.labels: Invalid value: {v!r}: a valid label must be an empty string or "
                          "consist of alphanumeric characters, '-', '_' or '.'")
    annotations = meta.get("annotations") or {}
    for k, v in annotations.items():
        if not _QUALIFIED.match(str(k)) or not isinstance(v, str):
            causes.append(f"metadata.annotations: Invalid value: {k!r}: name part must consist of alphanumeric "
                          "characters, and values must be strings")
    if sum(len(str(k)) + len(str(v)) for k, v in annotations.items()) > _MAX_ANNOTATIONS:
        causes.append("metadata.annotations: Too long: must have at most 262144 bytes")
    if causes:
        raise invalid(resource, str(name), causes)


def new_metadata(obj: Obj, now: str, keep_times: bool = False) -> None:
    """What the server sets on create: uid, creationTimestamp, generation (a put keeps given times)."""
    meta = obj["metadata"]
    for k in ("resourceVersion", "deletionTimestamp", "managedFields"):
        meta.pop(k, None)
    meta["uid"] = meta.get("uid") if keep_times and meta.get("uid") else str(uuid.uuid4())
    if not (keep_times and meta.get("creationTimestamp")):
        meta["creationTimestamp"] = now
    meta["generation"] = 1


def custom_resource(resource: Resource, version: str, obj: Obj) -> list[str]:
    """Default, prune and validate a custom resource at `version`; returns the pruned (unknown) fields."""
    sch = resource.schemas[version]
    schema.defaults(obj, sch)
    pruned, dropped = schema.prune(obj, sch)
    obj.clear()
    obj.update(pruned)
    errors = schema.validate(obj, sch)
    if errors:
        raise invalid(resource, str(obj["metadata"].get("name", "")), errors)
    return dropped


class ServiceIPs:
    """ClusterIP allocation from the service CIDRs, one per family, the first CIDR's family primary."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(c) for c in cidrs]
        self.families = [f"IPv{n.version}" for n in self.networks]
        self.used: set[str] = set()

    def allocate(self, family: str) -> str:
        net = self.networks[self.families.index(family)]
        for host in net.hosts():
            ip = str(host)
            if ip not in self.used and int(host) - int(net.network_address) >= 10:  # .1-.9 kept, as kube does
                self.used.add(ip)
                return ip
        raise Refused(422, "Invalid", f"spec.clusterIPs: Internal error: range {net} is full")

    def release(self, obj: Mapping[str, Any]) -> None:
        for ip in (obj.get("spec") or {}).get("clusterIPs") or ():
            self.used.discard(ip)


def service(resource: Resource, new: Obj, old: Obj | None, ips: ServiceIPs) -> None:
    """Service defaults, validation and ClusterIP allocation (on create) or immutability (on update)."""
    spec = new.setdefault("spec", {})
    name = str(new["metadata"].get("name", ""))
    stype = spec.setdefault("type", "ClusterIP")
    causes = _service_ports(spec, stype)
    if stype == "ExternalName":
        if not spec.get("externalName"):
            causes.append("spec.externalName: Required value")
        for f in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            spec.pop(f, None)
    else:
        spec.setdefault("sessionAffinity", "None")
        if spec["sessionAffinity"] == "ClientIP":
            spec.setdefault("sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 10800}})
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if old is not None and (old.get("spec") or {}).get("clusterIPs"):
            for f in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                was = old["spec"].get(f)
                if f in ("clusterIP", "clusterIPs") and spec.get(f, was) != was:
                    causes.append(f"spec.{f}: Invalid value: {spec.get(f)!r}: field is immutable")
                if was is not None:
                    spec[f] = was
        else:
            causes += _allocate(spec, ips)
    if causes:
        raise invalid(resource, name, causes)
    new.setdefault("status", {}).setdefault("loadBalancer", {})


def _service_ports(spec: Obj, stype: str) -> list[str]:
    causes = []
    ports = spec.get("ports") or []
    names = [p.get("name") or "" for p in ports if isinstance(p, dict)]
    for i, p in enumerate(ports):
        if not isinstance(p, dict):
            causes.append(f"spec.ports[{i}]: Invalid value: not an object")
            continue
        p.setdefault("protocol", "TCP")
        if p["protocol"] not in _PROTOCOLS:
            causes.append(f'spec.ports[{i}].protocol: Unsupported value: "{p["protocol"]}": supported values: '
                          '"SCTP", "TCP", "UDP"')
        number = p.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            causes.append(f"spec.ports[{i}].port: Invalid value: {number!r}: must be between 1 and 65535, inclusive")
        elif stype != "ExternalName" and spec.get("clusterIP") != "None":
            p.setdefault("targetPort", number)
        if len(ports) > 1 and not names[i]:
            causes.append(f"spec.ports[{i}].name: Required value")
        elif names[i] and names.count(names[i]) > 1 and names.index(names[i]) != i:
            causes.append(f"spec.ports[{i}].name: Duplicate value: {names[i]!r}")
    if not ports and stype != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append("spec.ports: Required value")
    return causes


def _allocate(spec: Obj, ips: ServiceIPs) -> list[str]:
    policy = spec.setdefault("ipFamilyPolicy", "SingleStack")
    asked = [f for f in spec.get("ipFamilies") or [] if isinstance(f, str)]
    if any(f not in ("IPv4", "IPv6") for f in asked):
        return [f"spec.ipFamilies: Unsupported value: {asked!r}: supported values: \"IPv4\", \"IPv6\""]
    missing = [f for f in asked if f not in ips.families]
    if (policy == "SingleStack" and asked[:1] and asked[0] not in ips.families) or (
            policy == "RequireDualStack" and (len(ips.families) < 2 or missing)):
        return [f"spec.ipFamilies: Invalid value: {asked!r}: the cluster does not support these IP families"]
    order = [f for f in asked if f in ips.families] + [f for f in ips.families if f not in asked]
    families = order[:1] if policy == "SingleStack" else order
    spec["ipFamilies"] = families
    if spec.get("clusterIP") == "None":
        spec["clusterIPs"] = ["None"]
        return []
    requested = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
    allocated = []
    for i, family in enumerate(families):
        if i < len(requested) and requested[i]:
            ip = requested[i]
            try:
                net = ips.networks[ips.families.index(family)]
                if ipaddress.ip_address(ip) not in net or ip in ips.used:
                    raise ValueError(ip)
            except ValueError:
                return [f"spec.clusterIPs[{i}]: Invalid value: {ip!r}: provided IP is not in the valid range "
                        "or is already allocated"]
            ips.used.add(ip)
            allocated.append(ip)
        else:
            allocated.append(ips.allocate(family))
    spec["clusterIPs"] = allocated
    spec["clusterIP"] = allocated[0]
    return []


def namespace(new: Obj) -> None:
    new.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    new.setdefault("status", {})["phase"] = "Active"


def crd_status(new: Obj) -> None:
    """A CRD the server accepted is Established at once (there is no controller to wait for)."""
    names = copy.deepcopy((new.get("spec") or {}).get("names") or {})
    now = new["metadata"].get("creationTimestamp")
    new["status"] = {
        "acceptedNames": names,
        "storedVersions": [v["name"] for v in new["spec"].get("versions") or [] if v.get("storage")],
        "conditions": [
            {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now}
            for t, r, m in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                            ("Established", "InitialNamesAccepted", "the initial names have been accepted"))
        ],
    }  # fmt: skip
