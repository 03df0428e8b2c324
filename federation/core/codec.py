"""The JSON codec of registry records, with a schema version. Pure: no IO.

Every decode validates and raises `RecordError` with a precise reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from federation.core.errors import RecordError
from federation.core.keys import MAX_CHUNKS, ServiceKey, SiteKey
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


@dataclass(frozen=True, slots=True)
class Layout:
    """How a chunked export's endpoints are laid out: `chunks` records of kind EndpointChunk, all of `generation`
    (docs/architecture.md, "The record envelope"; `core/chunks.py`)."""

    chunks: int
    generation: int


def encode_export(export: ServiceExport, layout: Layout | None = None) -> bytes:
    """The export record as canonical JSON bytes; with `layout`, its endpoints are in chunks (not in it)."""
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "ServiceExport",
        "site": export.site,
        "namespace": export.namespace,
        "name": export.name,
        "type": export.type.value,
        "ports": [_port_out(p) for p in export.ports],
        "exportedAt": export.exported_at,
    }
    if layout is None:
        out["endpoints"] = [_endpoint_out(e) for e in export.endpoints]
    else:
        out["endpointChunks"] = layout.chunks
        out["generation"] = layout.generation
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
    """Validate and decode an export record stored under `key` (a chunked one: without its endpoints)."""
    return decode_export_layout(key, data)[0]


def decode_export_layout(key: ServiceKey, data: bytes) -> tuple[ServiceExport, Layout | None]:
    """Validate and decode an export record stored under `key`, and its chunk layout (None: endpoints inline)."""
    obj = load_record(data, "ServiceExport")
    layout = layout_of(obj)
    for fld, want in (("site", key.site), ("namespace", key.namespace), ("name", key.name)):
        got = _str(obj, fld)
        if got != want:
            raise RecordError(f"record says {fld} {got!r} but its key says {want!r}")
    try:
        stype = ServiceType(_str(obj, "type"))
    except ValueError:
        raise RecordError(f"type {obj.get('type')!r} is not ClusterSetIP or Headless") from None
    ports = tuple(_port_in(p, i) for i, p in enumerate(_list(obj, "ports")))
    raw = _list(obj, "endpoints", required=False)
    if layout is not None and raw:
        raise RecordError("a chunked export (endpointChunks) carries no endpoints of its own")
    endpoints = tuple(_endpoint_in(e, i) for i, e in enumerate(raw))
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
    return export, layout


def layout_of(obj: dict[str, Any]) -> Layout | None:
    """The chunk layout an export record's JSON object names (None: its endpoints are inline)."""
    chunks, generation = obj.get("endpointChunks"), obj.get("generation")
    if chunks is None:
        return None
    if not isinstance(chunks, int) or isinstance(chunks, bool) or not 1 <= chunks <= MAX_CHUNKS:
        raise RecordError(f"endpointChunks {chunks!r} is not a number in 1..{MAX_CHUNKS}")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise RecordError(f"generation {generation!r} is not a whole number")
    return Layout(chunks, generation)


def endpoint_out(e: Endpoint) -> dict[str, Any]:
    """One endpoint as records hold it (exports and endpoint chunks)."""
    return _endpoint_out(e)


def endpoint_in(value: Any, i: int) -> Endpoint:
    """One endpoint of a record, decoded (not yet validated: `records.validate_endpoints`)."""
    return _endpoint_in(value, i)


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


_SHARED_MAX = 4096
"""Most distinct endpoint port lists and localities kept for sharing; past it, new ones are not shared."""
_shared_ports: dict[tuple[tuple[Any, Any], ...], tuple[EndpointPort, ...]] = {(): ()}
_shared_localities: dict[tuple[Any, Any], Locality] = {("", ""): Locality()}


def _endpoint_in(value: Any, i: int) -> Endpoint:
    """One endpoint; the port list and locality are shared with every endpoint that has the same ones
    (a mesh of a million endpoints holds a few hundred distinct ones), so an endpoint costs its addresses."""
    if not isinstance(value, dict):
        raise RecordError(f"endpoints[{i}] is not an object")
    addresses = value.get("addresses")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise RecordError(f"endpoints[{i}].addresses is not a list of strings")
    raw_ports = value.get("ports") or ()
    try:
        key = tuple((p["name"], p["port"]) for p in raw_ports)
        ports = _shared_ports.get(key)
    except (TypeError, KeyError):
        key, ports = None, None
    if ports is None:
        ports = _ports_in(raw_ports, i)
        if key is not None and len(_shared_ports) < _SHARED_MAX:
            _shared_ports[key] = ports
    ready = value.get("ready", True)
    if not isinstance(ready, bool):
        raise RecordError(f"endpoints[{i}].ready is not a boolean")
    hostname = value.get("hostname")
    if hostname is not None and not isinstance(hostname, str):
        raise RecordError(f"endpoints[{i}].hostname is not a string")
    labels = value.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise RecordError(f"endpoints[{i}].labels is not a mapping of strings")
    weight = value.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool):
        raise RecordError(f"endpoints[{i}].weight is not an integer")
    return Endpoint(
        addresses=tuple(addresses),
        ports=ports,
        ready=ready,
        hostname=hostname,
        locality=_shared_locality(value.get("locality"), i),
        weight=weight,
        labels=labels_of(labels) if labels else (),
    )


def _ports_in(raw: Any, i: int) -> tuple[EndpointPort, ...]:
    if not isinstance(raw, list | tuple):
        raise RecordError(f"endpoints[{i}].ports is not a list")
    out = []
    for j, p in enumerate(raw):
        if not isinstance(p, dict):
            raise RecordError(f"endpoints[{i}].ports[{j}] is not an object")
        out.append(EndpointPort(name=_str(p, "name"), port=_int(p, "port", f"endpoints[{i}].ports[{j}]")))
    return tuple(out)


def _shared_locality(value: Any, i: int) -> Locality:
    if value is None:
        return _shared_localities[("", "")]
    if isinstance(value, dict):
        key = (value.get("region", ""), value.get("zone", ""))
        if isinstance(key[0], str) and isinstance(key[1], str):
            hit = _shared_localities.get(key)
            if hit is not None:
                return hit
    loc = _locality_in(value, f"endpoints[{i}].locality")
    if len(_shared_localities) < _SHARED_MAX:
        _shared_localities[(loc.region, loc.zone)] = loc
    return loc
