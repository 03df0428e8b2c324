"""Typed registry records, their JSON codec (with a schema version) and the etcd key layout.

Pure: no IO. Every decode validates and raises `RecordError` with a precise reason.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from federation.errors import RecordError

SCHEMA = 1
"""Version of the JSON layout of every record; readers reject other versions."""

DEFAULT_PREFIX = "/meshfed/v1"

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
_MAX_ADDRESSES = 100


class ServiceType(enum.StrEnum):
    """MCS service types."""

    CLUSTER_SET_IP = "ClusterSetIP"
    HEADLESS = "Headless"


class Protocol(enum.StrEnum):
    """Transport protocols a service port may use."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


@dataclass(frozen=True, slots=True)
class Locality:
    """Where something runs, for nearest-first ordering."""

    region: str = ""
    zone: str = ""


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a service, the same across sites."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """The port an endpoint listens on for the service port of the same name."""

    name: str
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One backend: its addresses and ports, readiness, optional hostname, locality and weight."""

    addresses: tuple[str, ...]
    ports: tuple[EndpointPort, ...] = ()
    ready: bool = True
    hostname: str | None = None
    locality: Locality = Locality()
    weight: int = 1

    def port_for(self, service_port: ServicePort) -> int:
        """The target port for `service_port`: the endpoint's own when named, else the service's."""
        for p in self.ports:
            if p.name == service_port.name:
                return p.port
        return service_port.port


@dataclass(frozen=True, slots=True)
class Gateway:
    """A site's east-west gateway: where other networks send this site's traffic."""

    name: str
    address: str
    port: int = 15443


@dataclass(frozen=True, slots=True)
class Site:
    """A cluster or a group of VMs, with its network, locality and gateways."""

    name: str
    network: str
    locality: Locality = Locality()
    kind: str = "vm"
    gateways: tuple[Gateway, ...] = ()
    ca_chain: str = ""
    agent_version: str = ""


@dataclass(frozen=True, slots=True)
class ServiceExport:
    """One site's export of `namespace/name`: ports, type and endpoints."""

    site: str
    namespace: str
    name: str
    ports: tuple[ServicePort, ...]
    type: ServiceType = ServiceType.CLUSTER_SET_IP
    endpoints: tuple[Endpoint, ...] = ()
    exported_at: float = 0.0
    """Unix time the site first exported the service; the oldest export wins a conflict."""

    @property
    def service(self) -> tuple[str, str]:
        """The mesh-wide identity of the service: (namespace, name)."""
        return (self.namespace, self.name)

    def spec(self) -> tuple[ServiceType, tuple[ServicePort, ...]]:
        """The part that must agree across sites (MCS conflict rule), ports in a canonical order."""
        return (self.type, tuple(sorted(self.ports, key=lambda p: (p.port, p.protocol, p.name))))


# ---------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class SiteKey:
    """A parsed `<prefix>/sites/<site>` key."""

    site: str


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """A parsed `<prefix>/sites/<site>/services/<ns>/<name>` key."""

    site: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout under one prefix (DESIGN.md: every key a site writes is under its own prefix)."""

    prefix: str = DEFAULT_PREFIX

    def root(self) -> str:
        """Everything meshfed stores."""
        return self.prefix + "/"

    def sites(self) -> str:
        """Every site's records."""
        return f"{self.prefix}/sites/"

    def site(self, site: str) -> str:
        """The site record."""
        return f"{self.prefix}/sites/{site}"

    def site_children(self, site: str) -> str:
        """Prefix of the keys a site writes below its record."""
        return f"{self.prefix}/sites/{site}/"

    def service(self, site: str, namespace: str, name: str) -> str:
        """One site's export of one service."""
        return f"{self.prefix}/sites/{site}/services/{namespace}/{name}"

    def mesh(self, *parts: str) -> str:
        """A mesh-wide object."""
        return "/".join((self.prefix, "mesh", *parts))

    def parse(self, key: str) -> SiteKey | ServiceKey | None:
        """What a key names, or None for keys outside the site layout (mesh objects).

        Raises RecordError for a key under `sites/` that does not fit the layout.
        """
        head = f"{self.prefix}/sites/"
        if not key.startswith(head):
            return None
        parts = key[len(head):].split("/")
        if len(parts) == 1:
            _check_label("site", parts[0])
            return SiteKey(parts[0])
        if len(parts) == 4 and parts[1] == "services":
            site, _, ns, name = parts
            _check_label("site", site)
            _check_label("namespace", ns)
            _check_label("service name", name)
            return ServiceKey(site, ns, name)
        raise RecordError(f"key {key!r} does not fit the layout sites/<site>[/services/<ns>/<name>]")


# ---------------------------------------------------------------- encode


def encode_site(site: Site) -> bytes:
    """The site record as canonical JSON bytes."""
    return _dump(
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
    return _dump(
        {
            "schema": SCHEMA,
            "kind": "ServiceExport",
            "site": export.site,
            "namespace": export.namespace,
            "name": export.name,
            "type": export.type.value,
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol.value} for p in export.ports],
            "endpoints": [_endpoint_out(e) for e in export.endpoints],
            "exportedAt": export.exported_at,
        }
    )


def _dump(obj: dict[str, Any]) -> bytes:
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
    return out


# ---------------------------------------------------------------- decode


def decode_site(key: SiteKey, data: bytes) -> Site:
    """Validate and decode a site record stored under `key`."""
    obj = _load(data, "Site")
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
    obj = _load(data, "ServiceExport")
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
    export = ServiceExport(
        site=key.site,
        namespace=key.namespace,
        name=key.name,
        ports=ports,
        type=stype,
        endpoints=endpoints,
        exported_at=float(exported_at),
    )
    validate_export(export)
    return export


def _load(data: bytes, kind: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError("value is not a JSON object")
    if obj.get("schema") != SCHEMA:
        raise RecordError(f"schema {obj.get('schema')!r} is not supported (this agent reads {SCHEMA})")
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
    return ServicePort(name=_str(value, "name"), port=_int(value, "port", where), protocol=proto)


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
    return Endpoint(
        addresses=tuple(addresses),
        ports=tuple(ports),
        ready=ready,
        hostname=hostname,
        locality=_locality_in(value.get("locality"), f"{where}.locality"),
        weight=_int(value, "weight", where, default=1),
    )


# ---------------------------------------------------------------- validation


def validate_site(site: Site) -> None:
    """Raise RecordError naming the first thing wrong with `site`."""
    _check_label("site", site.name)
    _check_label("network", site.network)
    if site.kind not in ("vm", "kubernetes"):
        raise RecordError(f"siteKind {site.kind!r} is not vm or kubernetes")
    for i, g in enumerate(site.gateways):
        _check_label(f"gateways[{i}].name", g.name)
        _check_host(f"gateways[{i}].address", g.address)
        _check_port(f"gateways[{i}].port", g.port)


def validate_export(export: ServiceExport) -> None:
    """Raise RecordError naming the first thing wrong with `export`."""
    _check_label("site", export.site)
    _check_label("namespace", export.namespace)
    _check_label("service name", export.name)
    if not export.ports and export.type is ServiceType.CLUSTER_SET_IP:
        raise RecordError("a ClusterSetIP service needs at least one port")
    seen: set[str] = set()
    for i, p in enumerate(export.ports):
        if not _PORT_NAME.match(p.name):
            raise RecordError(f"ports[{i}].name {p.name!r} is not a port name (DNS label of at most 15 chars)")
        if p.name in seen:
            raise RecordError(f"ports[{i}].name {p.name!r} is used twice")
        seen.add(p.name)
        _check_port(f"ports[{i}].port", p.port)
    hostnames: set[str] = set()
    for i, e in enumerate(export.endpoints):
        where = f"endpoints[{i}]"
        if not e.addresses:
            raise RecordError(f"{where}.addresses is empty")
        if len(e.addresses) > _MAX_ADDRESSES:
            raise RecordError(f"{where}.addresses has more than {_MAX_ADDRESSES} entries")
        for a in e.addresses:
            _check_ip(f"{where}.addresses", a)
        for ep in e.ports:
            if ep.name not in seen:
                raise RecordError(f"{where}.ports names {ep.name!r}, which is not a service port")
            _check_port(f"{where}.ports.{ep.name}", ep.port)
        if e.hostname is not None:
            _check_label(f"{where}.hostname", e.hostname)
            if e.hostname in hostnames:
                raise RecordError(f"{where}.hostname {e.hostname!r} is used twice")
            hostnames.add(e.hostname)
        if not 0 <= e.weight <= 65535:
            raise RecordError(f"{where}.weight {e.weight} is not in 0..65535")


def is_dns_label(value: str) -> bool:
    """True if `value` is an RFC 1123 DNS label (lower case, as Kubernetes names are)."""
    return bool(_LABEL.match(value))


def _check_label(what: str, value: str) -> None:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise RecordError(f"{what} {value!r} is not a DNS label (a-z, 0-9, '-', at most 63 chars)")


def _check_port(what: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise RecordError(f"{what} {value!r} is not in 1..65535")


def _check_ip(what: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise RecordError(f"{what} {value!r} is not an IP address") from None


def _check_host(what: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_LABEL.match(lbl) for lbl in labels):
        raise RecordError(f"{what} {value!r} is neither an IP address nor a DNS name")

