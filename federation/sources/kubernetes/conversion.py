"""Pure conversion of Kubernetes objects (plain dicts shaped like the API's) into registry exports.

A Service is exported when a ServiceExport of the same namespace and name exists; its endpoints come
from the EndpointSlices labelled `kubernetes.io/service-name`. The export carries what the MCS API
puts on the ServiceImport (ipFamilies, sessionAffinity and its config, internalTrafficPolicy,
trafficDistribution, ports' appProtocol) and the ServiceExport's exportedLabels/exportedAnnotations.
ServiceExport status conditions follow the MCS API (sigs.k8s.io/mcs-api v1beta1): `Valid`, `Ready`
and `Conflict`, with the reasons that project defines (several conflict reasons joined by commas).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from federation.core.errors import RecordError
from federation.core.records import (
    Endpoint,
    EndpointPort,
    Locality,
    Protocol,
    ServiceExport,
    ServicePort,
    ServiceType,
    is_dns_label,
    validate_export,
)
from federation.core.view import Conflict

Obj = Mapping[str, Any]
ObjKey = tuple[str, str]
"""(namespace, name) of a namespaced object."""

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NOWHERE = Locality()
MAX_ENDPOINTS = 1000
"""Endpoints per export: the registry record stays well below etcd's 1.5 MiB value limit."""

# Reasons as in sigs.k8s.io/mcs-api (ServiceExportReason*).
REASON_VALID = "Valid"
REASON_NO_SERVICE = "NoService"
REASON_INVALID_TYPE = "InvalidServiceType"
REASON_INVALID = "InvalidService"
REASON_NO_CONFLICTS = "NoConflicts"
REASON_TYPE_CONFLICT = "TypeConflict"
REASON_PORT_CONFLICT = "PortConflict"
REASON_PENDING = "Pending"
REASON_EXPORTED = "Exported"
REASON_FAILED = "Failed"
REASON_INVALID_EXPORT = "InvalidServiceExport"
CONFLICT_REASONS = {
    "type": "TypeConflict", "ports": "PortConflict", "sessionAffinity": "SessionAffinityConflict",
    "sessionAffinityConfig": "SessionAffinityConfigConflict", "internalTrafficPolicy": "InternalTrafficPolicyConflict",
    "trafficDistribution": "TrafficDistributionConflict", "ipFamilies": "IPFamilyConflict",
    "labels": "LabelsConflict", "annotations": "AnnotationsConflict",
}
"""Conflict kinds of the mesh view -> the MCS reasons (ServiceExportReason*Conflict)."""


@dataclass(frozen=True, slots=True)
class MeshState:
    """What the mesh view says about one ServiceExport of this site."""

    synced: bool = False
    """The mesh registry has been read once: before that, nothing about other sites is known."""
    exported: bool = False
    """This site's export of the service is in the registry (other sites can import it)."""
    conflict: Conflict | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a ServiceExport cannot be exported: an MCS reason and a message for the operator."""

    reason: str
    message: str


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


def format_time(now: float) -> str:
    """Unix time as the API writes it."""
    return datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def convert(
    services: Iterable[Obj],
    endpointslices: Iterable[Obj],
    serviceexports: Iterable[Obj],
    site: str,
    locality: Locality = NOWHERE,
    owned: tuple[str, str] = ("", ""),
) -> list[ServiceExport]:
    """The registry exports of one site: one per valid ServiceExport with its Service."""
    return convert_all(services, endpointslices, serviceexports, site, locality, owned).exports


def convert_all(
    services: Iterable[Obj],
    endpointslices: Iterable[Obj],
    serviceexports: Iterable[Obj],
    site: str,
    locality: Locality = NOWHERE,
    owned: tuple[str, str] = ("", ""),
) -> Conversion:
    """Exports plus the reason each ServiceExport that cannot be exported is invalid."""
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
        result = _convert_one(se, service, slices.get(k, []), site, locality)
        if isinstance(result, Invalid):
            out.invalid[k] = result
        else:
            out.exports.append(result)
    return out


def export_conditions(
    previous: Sequence[Obj],
    invalid: Invalid | None,
    mesh: MeshState,
    now: float,
    generation: int = 0,
) -> list[dict[str, Any]]:
    """The `Valid`, `Ready` and `Conflict` conditions of one ServiceExport.

    Until this site's export is in the registry, Ready and Conflict are Unknown (Pending) rather than
    a guess. lastTransitionTime is kept from `previous` while a condition's status does not change.
    """
    pending = ("Unknown", REASON_PENDING, "waiting for the export to reach the mesh registry")
    if invalid is not None:
        valid = ("False", invalid.reason, invalid.message)
        ready = ("False", REASON_FAILED, f"the service is not exported: {invalid.message}")
        conf = ("Unknown", REASON_PENDING, "the service is not exported, so no conflict is checked")
    else:
        valid = ("True", REASON_VALID, "the service is exported to the mesh")
        if not (mesh.synced and mesh.exported):
            ready = conf = pending
        else:
            ready = ("True", REASON_EXPORTED, "the service is in the mesh registry, where other sites import it")
            if mesh.conflict is None:
                conf = ("False", REASON_NO_CONFLICTS, "the service agrees with every other site's export")
            else:
                kinds = mesh.conflict.kinds or (mesh.conflict.kind,)
                reason = ",".join(dict.fromkeys(CONFLICT_REASONS.get(k, "Conflict") for k in kinds))
                conf = ("True", reason, mesh.conflict.reason)
    before = {str(c.get("type")): c for c in _l(previous) if isinstance(c, Mapping)}
    out = []
    for ctype, (status, reason, message) in (("Valid", valid), ("Ready", ready), ("Conflict", conf)):
        old = before.get(ctype)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        out.append({
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message[:32768],
            "lastTransitionTime": since or format_time(now),
            "observedGeneration": generation,
        })  # fmt: skip
    return out


def same_conditions(a: Sequence[Obj], b: Sequence[Obj]) -> bool:
    """True if two condition lists say the same (times aside)."""

    def norm(cs: Sequence[Obj]) -> list[tuple[Any, ...]]:
        fields = ("type", "status", "reason", "message")
        return sorted(tuple(str(c.get(f)) for f in fields) for c in _l(cs) if isinstance(c, Mapping))

    return norm(a) == norm(b)


# ---------------------------------------------------------------- one export


def _convert_one(
    se: Obj, service: Obj | None, slices: list[Obj], site: str, locality: Locality
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
        endpoints = _endpoints(slices, ports, renamed, headless, locality)
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
            out.append(Endpoint(
                addresses=addresses,
                ports=tuple(eports),
                ready=ready,
                hostname=hostname,
                locality=Locality(locality.region, zone) if isinstance(zone, str) and zone else locality,
            ))  # fmt: skip
    return tuple(out)


def _m(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one: a malformed field reads as absent."""
    return value if isinstance(value, Mapping) else {}


def _l(value: Any) -> Sequence[Any]:
    """`value` if it is a list, else an empty one."""
    return value if isinstance(value, list | tuple) else ()
