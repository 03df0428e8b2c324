"""The JSON codec of registry records, with a schema version. Pure: no IO.

Every decode validates and raises `RecordError` with a precise reason.
"""

from __future__ import annotations

import json
from typing import Any

from federation.core.errors import RecordError
from federation.core.keys import ServiceKey, SiteKey
from federation.core.records import (
    Endpoint,
    EndpointPort,
    Gateway,
    Locality,
    Protocol,
    ServiceExport,
    ServicePort,
    ServiceType,
    Site,
    labels_of,
    validate_export,
    validate_site,
)

SCHEMA = 1
"""Version of the JSON layout of every record; readers reject other versions.

Optional fields (ipFamilies, sessionAffinity..., exportedLabels, ports[].appProtocol) are written
only when set, so a record without them is the same bytes as before they existed, and agents that
predate them read records that carry them (they ignore keys they do not know).
"""


def encode_site(site: Site) -> bytes:
    """The site record as canonical JSON bytes."""
    return dump_json(
        {
            "schema": SCHEMA,
            "kind": "Site",
            "name": site.name,
            "network": site.network,
            "locality": _locality_out(site.locality),
            "siteKind": site.kind,
            "gateways": [{"name": g.name, "address": g.address, "port": g.port} for g in site.gateways],
            "caChain": site.ca_chain,
            "agentVersion": site.agent_version,
        }
    )


def encode_export(export: ServiceExport) -> bytes:
    """The export record as canonical JSON bytes."""
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "ServiceExport",
        "site": export.site,
        "namespace": export.namespace,
        "name": export.name,
        "type": export.type.value,
        "ports": [_port_out(p) for p in export.ports],
        "endpoints": [_endpoint_out(e) for e in export.endpoints],
        "exportedAt": export.exported_at,
    }
    if export.ip_families:
        out["ipFamilies"] = list(export.ip_families)
    for key, value in (("sessionAffinity", export.session_affinity),
                       ("sessionAffinityTimeout", export.session_affinity_timeout),
                       ("internalTrafficPolicy", export.internal_traffic_policy),
                       ("trafficDistribution", export.traffic_distribution)):
        if value is not None:
            out[key] = value
    if export.exported_labels is not None:
        out["exportedLabels"] = dict(export.exported_labels)
    if export.exported_annotations is not None:
        out["exportedAnnotations"] = dict(export.exported_annotations)
    return dump_json(out)


def _port_out(p: ServicePort) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "port": p.port, "protocol": p.protocol.value}
    if p.app_protocol:
        out["appProtocol"] = p.app_protocol
    return out


def dump_json(obj: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces (equal records are equal bytes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _locality_out(loc: Locality) -> dict[str, str]:
    return {"region": loc.region, "zone": loc.zone}


def _endpoint_out(e: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {
        "addresses": list(e.addresses),
        "ready": e.ready,
        "weight": e.weight,
        "locality": _locality_out(e.locality),
    }
    if e.ports:
        out["ports"] = [{"name": p.name, "port": p.port} for p in e.ports]
    if e.hostname is not None:
        out["hostname"] = e.hostname
    if e.labels:
        out["labels"] = dict(e.labels)
    return out


# ---------------------------------------------------------------- decode


def decode_site(key: SiteKey, data: bytes) -> Site:
    """Validate and decode a site record stored under `key`."""
    obj = load_record(data, "Site")
    name = _str(obj, "name")
    if name != key.site:
        raise RecordError(f"record names site {name!r} but its key names site {key.site!r}")
    gateways = tuple(_gateway_in(g, i) for i, g in enumerate(_list(obj, "gateways", required=False)))
    site = Site(
        name=name,
        network=_str(obj, "network"),
        locality=_locality_in(obj.get("locality"), "locality"),
        kind=_str(obj, "siteKind", default="vm"),
        gateways=gateways,
        ca_chain=_str(obj, "caChain", default=""),
        agent_version=_str(obj, "agentVersion", default=""),
    )
    validate_site(site)
    return site


def decode_export(key: ServiceKey, data: bytes) -> ServiceExport:
    """Validate and decode an export record stored under `key`."""
    obj = load_record(data, "ServiceExport")
    for fld, want in (("site", key.site), ("namespace", key.namespace), ("name", key.name)):
        got = _str(obj, fld)
        if got != want:
            raise RecordError(f"record says {fld} {got!r} but its key says {want!r}")
    try:
        stype = ServiceType(_str(obj, "type"))
    except ValueError:
        raise RecordError(f"type {obj.get('type')!r} is not ClusterSetIP or Headless") from None
    ports = tuple(_port_in(p, i) for i, p in enumerate(_list(obj, "ports")))
    endpoints = tuple(_endpoint_in(e, i) for i, e in enumerate(_list(obj, "endpoints", required=False)))
    exported_at = obj.get("exportedAt", 0.0)
    if not isinstance(exported_at, int | float) or isinstance(exported_at, bool):
        raise RecordError("exportedAt is not a number")
    families = obj.get("ipFamilies", [])
    if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
        raise RecordError("ipFamilies is not a list of strings")
    timeout = obj.get("sessionAffinityTimeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
        raise RecordError("sessionAffinityTimeout is not an integer")
    export = ServiceExport(
        site=key.site,
        namespace=key.namespace,
        name=key.name,
        ports=ports,
        type=stype,
        endpoints=endpoints,
        exported_at=float(exported_at),
        ip_families=tuple(families),
        session_affinity=_opt_str(obj, "sessionAffinity"),
        session_affinity_timeout=timeout,
        internal_traffic_policy=_opt_str(obj, "internalTrafficPolicy"),
        traffic_distribution=_opt_str(obj, "trafficDistribution"),
        exported_labels=_string_map(obj, "exportedLabels"),
        exported_annotations=_string_map(obj, "exportedAnnotations"),
    )
    validate_export(export)
    return export


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{name} is not a string")
    return value


def _string_map(obj: dict[str, Any], name: str) -> tuple[tuple[str, str], ...] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RecordError(f"{name} is not a map of strings")
    return tuple(sorted(value.items()))


def load_record(data: bytes, kind: str, schema: int = SCHEMA) -> dict[str, Any]:
    """The JSON object of a record of `kind`; RecordError if it is not JSON, another kind or schema."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError("value is not a JSON object")
    if obj.get("schema") != schema:
        raise RecordError(f"schema {obj.get('schema')!r} is not supported (this agent reads {schema})")
    if obj.get("kind") != kind:
        raise RecordError(f"kind {obj.get('kind')!r} where {kind!r} belongs")
    return obj


def _str(obj: dict[str, Any], name: str, default: str | None = None) -> str:
    value = obj.get(name, default)
    if value is None:
        raise RecordError(f"{name} is missing")
    if not isinstance(value, str):
        raise RecordError(f"{name} is not a string")
    return value


def _int(obj: dict[str, Any], name: str, where: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if value is None:
        raise RecordError(f"{where}.{name} is missing")
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordError(f"{where}.{name} is not an integer")
    return value


def _list(obj: dict[str, Any], name: str, required: bool = True) -> list[Any]:
    value = obj.get(name)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise RecordError(f"{name} is not a list")
    return value


def _locality_in(value: Any, where: str) -> Locality:
    if value is None:
        return Locality()
    if not isinstance(value, dict):
        raise RecordError(f"{where} is not an object")
    region, zone = value.get("region", ""), value.get("zone", "")
    if not isinstance(region, str) or not isinstance(zone, str):
        raise RecordError(f"{where}.region and .zone must be strings")
    return Locality(region, zone)


def _gateway_in(value: Any, i: int) -> Gateway:
    where = f"gateways[{i}]"
    if not isinstance(value, dict):
        raise RecordError(f"{where} is not an object")
    return Gateway(
        name=_str(value, "name"),
        address=_str(value, "address"),
        port=_int(value, "port", where, default=15443),
    )


def _port_in(value: Any, i: int) -> ServicePort:
    where = f"ports[{i}]"
    if not isinstance(value, dict):
        raise RecordError(f"{where} is not an object")
    try:
        proto = Protocol(value.get("protocol", "TCP"))
    except ValueError:
        raise RecordError(f"{where}.protocol {value.get('protocol')!r} is not TCP, UDP or SCTP") from None
    return ServicePort(name=_str(value, "name"), port=_int(value, "port", where), protocol=proto,
                       app_protocol=_str(value, "appProtocol", default=""))


def _endpoint_in(value: Any, i: int) -> Endpoint:
    where = f"endpoints[{i}]"
    if not isinstance(value, dict):
        raise RecordError(f"{where} is not an object")
    addresses = value.get("addresses")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise RecordError(f"{where}.addresses is not a list of strings")
    ports = []
    for j, p in enumerate(value.get("ports") or []):
        if not isinstance(p, dict):
            raise RecordError(f"{where}.ports[{j}] is not an object")
        ports.append(EndpointPort(name=_str(p, "name"), port=_int(p, "port", f"{where}.ports[{j}]")))
    ready = value.get("ready", True)
    if not isinstance(ready, bool):
        raise RecordError(f"{where}.ready is not a boolean")
    hostname = value.get("hostname")
    if hostname is not None and not isinstance(hostname, str):
        raise RecordError(f"{where}.hostname is not a string")
    labels = value.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise RecordError(f"{where}.labels is not a mapping of strings")
    return Endpoint(
        addresses=tuple(addresses),
        ports=tuple(ports),
        ready=ready,
        hostname=hostname,
        locality=_locality_in(value.get("locality"), f"{where}.locality"),
        weight=_int(value, "weight", where, default=1),
        labels=labels_of(labels),
    )
