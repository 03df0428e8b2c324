"""Pure conversion of Kubernetes objects (plain dicts shaped like the API's) into registry exports.

A Service is exported when a ServiceExport of the same namespace and name exists; its endpoints come
from the EndpointSlices labelled `kubernetes.io/service-name`. EndpointSlices carry no pod labels: an
endpoint gets the labels its pod (the slice's `targetRef`) has under the keys the ServiceExport names in
its `meshfed.io/endpoint-labels` annotation (e.g. "version,track"), and no others, so the registry holds
only what traffic policies select on. The export carries what the MCS API puts on the ServiceImport
(ipFamilies, sessionAffinity and its config, internalTrafficPolicy, trafficDistribution, ports'
appProtocol) and the ServiceExport's exportedLabels/exportedAnnotations. The ServiceExport
status conditions are in conditions.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from federation.core.errors import RecordError
from federation.core.records import (
    MAX_ENDPOINT_LABELS,
    Endpoint,
    EndpointPort,
    Labels,
    Locality,
    Protocol,
    ServiceExport,
    ServicePort,
    ServiceType,
    check_label_key,
    check_label_value,
    is_dns_label,
    validate_export,
)
from federation.sources.kubernetes.conditions import (
    REASON_INVALID,
    REASON_INVALID_EXPORT,
    REASON_INVALID_TYPE,
    REASON_NO_SERVICE,
    Invalid,
    MeshState,
    export_conditions,
    format_time,
    same_conditions,
)

Obj = Mapping[str, Any]
ObjKey = tuple[str, str]
"""(namespace, name) of a namespaced object."""

__all__ = ["NOWHERE", "Conversion", "Invalid", "MeshState", "Obj", "ObjKey", "convert", "convert_all",
           "export_conditions", "format_time", "is_owned", "key_of", "parse_time", "same_conditions"]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ENDPOINT_LABELS_ANNOTATION = "meshfed.io/endpoint-labels"
"""On a ServiceExport: comma-separated pod label keys that its endpoints carry into the registry."""
NOWHERE = Locality()
MAX_ENDPOINTS = 1000
"""Endpoints per export: the registry record stays well below etcd's 1.5 MiB value limit."""

@dataclass(slots=True)
class Conversion:
    """What `convert_all` made: the exports, and the ServiceExports that could not be exported."""

    exports: list[ServiceExport] = field(default_factory=list)
    invalid: dict[ObjKey, Invalid] = field(default_factory=dict)


def key_of(obj: Obj) -> ObjKey:
    """(namespace, name) from an object's metadata."""
    meta = _m(_m(obj).get("metadata"))
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def is_owned(obj: Obj, owned: tuple[str, str]) -> bool:
    """True if the object carries the owned label with the owned value."""
    labels = _m(_m(_m(obj).get("metadata")).get("labels"))
    return bool(labels.get(owned[0]) == owned[1])


def parse_time(text: Any) -> float:
    """RFC 3339 as the API writes it (`2024-05-01T10:00:00Z`) to unix time; 0.0 if missing or bad."""
    if not text or not isinstance(text, str):
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def convert(
    services: Iterable[Obj],
    endpointslices: Iterable[Obj],
    serviceexports: Iterable[Obj],
    site: str,
    locality: Locality = NOWHERE,
    owned: tuple[str, str] = ("", ""),
    pods: Iterable[Obj] = (),
) -> list[ServiceExport]:
    """The registry exports of one site: one per valid ServiceExport with its Service."""
    return convert_all(services, endpointslices, serviceexports, site, locality, owned, pods).exports


def convert_all(
    services: Iterable[Obj],
    endpointslices: Iterable[Obj],
    serviceexports: Iterable[Obj],
    site: str,
    locality: Locality = NOWHERE,
    owned: tuple[str, str] = ("", ""),
    pods: Iterable[Obj] = (),
) -> Conversion:
    """Exports plus the reason each ServiceExport that cannot be exported is invalid.

    `pods` are needed only for ServiceExports that name endpoint labels (ENDPOINT_LABELS_ANNOTATION).
    """
    pod_labels = {key_of(p): _m(_m(p.get("metadata")).get("labels")) for p in pods if isinstance(p, Mapping)}
    by_key = {key_of(s): s for s in services if isinstance(s, Mapping) and not (owned[0] and is_owned(s, owned))}
    slices: dict[ObjKey, list[Obj]] = {}
    for sl in endpointslices:
        if not isinstance(sl, Mapping):
            continue
        labels = _m(_m(_m(sl).get("metadata")).get("labels"))
        svc = labels.get(SERVICE_NAME_LABEL)
        if svc:
            slices.setdefault((key_of(sl)[0], str(svc)), []).append(sl)
    out = Conversion()
    for se in sorted((x for x in serviceexports if isinstance(x, Mapping)), key=key_of):
        k = key_of(se)
        service = by_key.get(k)
        result = _convert_one(se, service, slices.get(k, []), site, locality, pod_labels)
        if isinstance(result, Invalid):
            out.invalid[k] = result
        else:
            out.exports.append(result)
    return out


# ---------------------------------------------------------------- one export


def _convert_one(
    se: Obj, service: Obj | None, slices: list[Obj], site: str, locality: Locality,
    pod_labels: Mapping[ObjKey, Mapping[str, Any]],
) -> ServiceExport | Invalid:
    ns, name = key_of(se)
    if service is None:
        return Invalid(REASON_NO_SERVICE, f"there is no Service {ns}/{name} to export")
    spec = _m(service.get("spec"))
    stype = spec.get("type", "ClusterIP")
    if stype == "ExternalName":
        return Invalid(REASON_INVALID_TYPE, "ExternalName services cannot be exported (MCS)")
    headless = spec.get("clusterIP") == "None"
    se_spec = _m(se.get("spec"))
    try:
        labels = _string_map(se_spec.get("exportedLabels"), "exportedLabels")
        annotations = _string_map(se_spec.get("exportedAnnotations"), "exportedAnnotations")
        checked = ServiceExport(site, ns, name, (), ServiceType.HEADLESS, exported_labels=labels,
                                exported_annotations=annotations)
        validate_export(checked)
    except RecordError as exc:
        return Invalid(REASON_INVALID_EXPORT, f"the ServiceExport cannot be exported: spec.{exc}")
    affinity = spec.get("sessionAffinity") if isinstance(spec.get("sessionAffinity"), str) else "None"
    timeout = _m(_m(spec.get("sessionAffinityConfig")).get("clientIP")).get("timeoutSeconds")
    try:
        ports, renamed = _service_ports(_l(spec.get("ports")))
        carried = _carried_keys(_m(_m(se.get("metadata")).get("annotations")).get(ENDPOINT_LABELS_ANNOTATION))
        endpoints = _endpoints(slices, ports, renamed, headless, locality, carried, pod_labels)
        export = ServiceExport(
            site=site,
            namespace=ns,
            name=name,
            ports=ports,
            type=ServiceType.HEADLESS if headless else ServiceType.CLUSTER_SET_IP,
            endpoints=endpoints,
            exported_at=parse_time(_m(se.get("metadata")).get("creationTimestamp")),
            ip_families=tuple(f for f in _l(spec.get("ipFamilies")) if isinstance(f, str)),
            session_affinity=affinity,
            session_affinity_timeout=timeout if affinity == "ClientIP" and isinstance(timeout, int) else None,
            internal_traffic_policy=_opt_str(spec.get("internalTrafficPolicy")),
            traffic_distribution=_opt_str(spec.get("trafficDistribution")),
            exported_labels=labels,
            exported_annotations=annotations,
        )
        validate_export(export)
    except RecordError as exc:
        return Invalid(REASON_INVALID, f"the Service cannot be exported: {exc}")
    return export


def _string_map(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    """A ServiceExport label or annotation map, sorted; RecordError if it is not strings to strings."""
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise RecordError(f"{what} is not a map of strings")
    return tuple(sorted((str(k), v) for k, v in value.items()))


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _service_ports(raw: Sequence[Any]) -> tuple[tuple[ServicePort, ...], dict[str, str]]:
    """The service ports; an unnamed single port gets a name (`<proto>-<port>`) since the registry needs one."""
    ports = []
    renamed: dict[str, str] = {}
    for i, p in enumerate(raw):
        if not isinstance(p, Mapping):
            raise RecordError(f"ports[{i}] is not an object")
        try:
            proto = Protocol(p.get("protocol", "TCP"))
        except ValueError:
            raise RecordError(f"ports[{i}].protocol {p.get('protocol')!r} is not TCP, UDP or SCTP") from None
        number = p.get("port")
        if not isinstance(number, int) or isinstance(number, bool):
            raise RecordError(f"ports[{i}].port is not an integer")
        pname = str(p.get("name") or "")
        if not pname:
            pname = renamed[""] = f"{proto.value.lower()}-{number}"
        app = p.get("appProtocol")
        ports.append(ServicePort(pname, number, proto, app if isinstance(app, str) else ""))
    return tuple(ports), renamed


def _endpoints(
    slices: list[Obj],
    ports: tuple[ServicePort, ...],
    renamed: dict[str, str],
    headless: bool,
    locality: Locality,
    carried: tuple[str, ...] = (),
    pod_labels: Mapping[ObjKey, Mapping[str, Any]] | None = None,
) -> tuple[Endpoint, ...]:
    names = {p.name for p in ports}
    seen_addresses: set[tuple[str, ...]] = set()
    hostnames: set[str] = set()
    out: list[Endpoint] = []
    for sl in sorted(slices, key=lambda s: key_of(s)[1]):
        if _m(sl).get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices have no addresses the mesh can route to
        eports = []
        for p in map(_m, _l(sl.get("ports"))):
            pname = renamed.get(str(p.get("name") or ""), str(p.get("name") or ""))
            number = p.get("port")
            if pname in names and isinstance(number, int) and 1 <= number <= 65535:
                eports.append(EndpointPort(pname, number))
        for e in map(_m, _l(sl.get("endpoints"))):
            addresses = tuple(str(a) for a in _l(e.get("addresses")))
            if not addresses or addresses in seen_addresses or len(out) >= MAX_ENDPOINTS:
                continue
            seen_addresses.add(addresses)
            cond = _m(e.get("conditions"))
            # The API says a nil `ready` means ready; a terminating endpoint is never ready.
            ready = cond.get("ready") is not False and cond.get("terminating") is not True
            hostname = e.get("hostname") if headless else None
            if not isinstance(hostname, str) or not is_dns_label(hostname) or hostname in hostnames:
                hostname = None
            else:
                hostnames.add(hostname)
            zone = e.get("zone")
            labels = _pod_labels(e, key_of(sl)[0], carried, pod_labels) if carried and pod_labels else ()
            out.append(Endpoint(
                addresses=addresses,
                ports=tuple(eports),
                ready=ready,
                hostname=hostname,
                locality=Locality(locality.region, zone) if isinstance(zone, str) and zone else locality,
                labels=labels,
            ))  # fmt: skip
    return tuple(out)


def _carried_keys(annotation: Any) -> tuple[str, ...]:
    """The valid label keys an endpoint-labels annotation names (at most MAX_ENDPOINT_LABELS), sorted."""
    if not isinstance(annotation, str):
        return ()
    keys = set()
    for raw in annotation.split(","):
        key = raw.strip()
        try:
            check_label_key("annotation", key)
        except RecordError:
            continue  # a typo in one key must not unexport the service
        keys.add(key)
    return tuple(sorted(keys))[:MAX_ENDPOINT_LABELS]


def _pod_labels(
    endpoint: Obj, namespace: str, carried: tuple[str, ...], pods: Mapping[ObjKey, Mapping[str, Any]]
) -> Labels:
    """The carried labels of the pod an EndpointSlice endpoint points at (its targetRef), valid ones only."""
    ref = _m(endpoint.get("targetRef"))
    if ref.get("kind") != "Pod":
        return ()
    labels = pods.get((str(ref.get("namespace") or namespace), str(ref.get("name", ""))), {})
    out = []
    for key in carried:
        value = labels.get(key)
        if isinstance(value, str):
            try:
                check_label_value("label", value)
            except RecordError:
                continue
            out.append((key, value))
    return tuple(out)


def _m(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one: a malformed field reads as absent."""
    return value if isinstance(value, Mapping) else {}


def _l(value: Any) -> Sequence[Any]:
    """`value` if it is a list, else an empty one."""
    return value if isinstance(value, list | tuple) else ()
