"""Agent settings: frozen dataclasses per subsystem, loaded from YAML plus MESHFED_* environment.

A bad file fails at start with one line: the file, the field and the reason.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from federation.core.errors import ConfigError, RecordError
from federation.core.keys import DEFAULT_PREFIX
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

SECTIONS_PARSED_ELSEWHERE = ("dns", "gateway", "kubernetes", "vm", "pki")
"""Top-level sections other subsystems parse from the raw mapping (kept in AgentConfig.sections)."""


@dataclass(frozen=True, slots=True)
class SiteSettings:
    """Who this agent speaks for."""

    name: str
    """The site's unique name, a DNS label; it appears in keys, DNS names and SPIFFE IDs."""
    network: str
    """Sites on the same network reach each other's endpoints directly; others go through gateways."""
    region: str = ""
    """Locality for nearest-first ordering; empty when unknown."""
    zone: str = ""
    """Locality for nearest-first ordering; empty when unknown."""
    kind: str = "vm"
    """vm or kubernetes: decides where imported services get their address."""
    gateway_address: str = ""
    """Address other networks reach this site's gateway at (a LoadBalancer or public IP); empty: its listen address."""


@dataclass(frozen=True, slots=True)
class RegistryTLS:
    """Client TLS towards etcd."""

    ca: Path
    """CA bundle that signed etcd's server certificate."""
    cert: Path
    """This agent's client certificate (etcd --client-cert-auth)."""
    key: Path
    """Its private key; must not be readable by others."""


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Where the registry lives and how the agent holds its records there."""

    endpoints: tuple[str, ...] = ()
    """etcd host:port list; empty starts an embedded etcd under the state directory (one-machine setups)."""
    prefix: str = DEFAULT_PREFIX
    """Root of every key; change only to run several meshes on one etcd."""
    lease_ttl: int = 10
    """Seconds a dead agent's records outlive it: short for quick failover, long enough to ride out a stall."""
    timeout: float = 5.0
    """Seconds an etcd call may take before the agent treats etcd as unreachable."""
    tls: RegistryTLS | None = None
    """Client TLS for etcd; None talks plaintext (only sensible on loopback)."""


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin HTTP endpoint: /healthz, /readyz, /metrics, /registry."""

    address: str = "127.0.0.1"
    """Loopback by default: metrics and registry contents are not for the whole network."""
    port: int = 15000
    """Same number Envoy uses for its admin port, so operators find it; 0 picks a free port."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything `meshfed agent` needs."""

    site: SiteSettings
    registry: RegistrySettings = RegistrySettings()
    admin: AdminSettings = AdminSettings()
    state_dir: Path = Path("/var/lib/meshfed")
    """Lease id, embedded etcd data, issued certificates; private to the agent (0700)."""
    exports: tuple[ServiceExport, ...] = ()
    """Services this site exports, declared statically."""
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Raw sections parsed by other subsystems (dns, gateway, kubernetes, vm)."""
    source: str = "<defaults>"
    """The file this came from, for error messages."""


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, validate and return the agent config at `path`, with MESHFED_* overrides applied."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data if data is not None else {}, str(path), environ or os.environ)


def parse_config(data: Any, source: str, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate an already-loaded mapping."""
    try:
        return _parse(data, source, environ or {})
    except _FieldError as exc:
        raise ConfigError(f"{source}: {exc.field}: {exc.reason}") from None


# ---------------------------------------------------------------- private


class _FieldError(Exception):
    def __init__(self, fld: str, reason: str) -> None:
        super().__init__(f"{fld}: {reason}")
        self.field = fld
        self.reason = reason


def _parse(data: Any, source: str, environ: Mapping[str, str]) -> AgentConfig:
    top = _mapping(data, "(top level)")
    known = {"site", "registry", "admin", "state_dir", "exports", *SECTIONS_PARSED_ELSEWHERE}
    _no_unknown(top, known, "")
    site = _site(_mapping(top.get("site"), "site", required=True))
    registry = _registry(_mapping(top.get("registry", {}), "registry"), environ)
    admin = _admin(_mapping(top.get("admin", {}), "admin"), environ)
    state_dir = Path(environ.get("MESHFED_STATE_DIR") or _str(top, "state_dir", "", "/var/lib/meshfed"))
    exports_raw = top.get("exports", [])
    if not isinstance(exports_raw, list):
        raise _FieldError("exports", "must be a list")
    exports = tuple(_export(e, f"exports[{i}]", site.name) for i, e in enumerate(exports_raw))
    seen: set[tuple[str, str]] = set()
    for i, e in enumerate(exports):
        if e.service in seen:
            raise _FieldError(f"exports[{i}]", f"{e.namespace}/{e.name} is exported twice")
        seen.add(e.service)
    sections = {name: dict(_mapping(top.get(name, {}), name)) for name in SECTIONS_PARSED_ELSEWHERE}
    # In a pod the address of the egress listeners is only known at run time (the Deployment's downward API).
    if environ.get("MESHFED_POD_IP") and "egress_address" not in sections["kubernetes"]:
        sections["kubernetes"]["egress_address"] = environ["MESHFED_POD_IP"]
    return AgentConfig(site, registry, admin, state_dir, exports, sections, source)


def _site(d: Mapping[str, Any]) -> SiteSettings:
    _no_unknown(d, {"name", "network", "region", "zone", "kind", "gateway_address"}, "site")
    s = SiteSettings(
        name=_label(d, "name", "site"),
        network=_label(d, "network", "site"),
        region=_str(d, "region", "site", ""),
        zone=_str(d, "zone", "site", ""),
        kind=_str(d, "kind", "site", "vm"),
        gateway_address=_str(d, "gateway_address", "site", ""),
    )
    if s.gateway_address:
        _ip(s.gateway_address, "site.gateway_address")
    if s.kind not in ("vm", "kubernetes"):
        raise _FieldError("site.kind", f"{s.kind!r} is not vm or kubernetes")
    return s


def _registry(d: Mapping[str, Any], environ: Mapping[str, str]) -> RegistrySettings:
    _no_unknown(d, {"endpoints", "prefix", "lease_ttl", "timeout", "tls"}, "registry")
    raw = environ.get("MESHFED_REGISTRY_ENDPOINTS")
    endpoints_value: Any = raw.split(",") if raw else d.get("endpoints", [])
    if isinstance(endpoints_value, str):
        endpoints_value = [endpoints_value]
    if not isinstance(endpoints_value, list):
        raise _FieldError("registry.endpoints", "must be a list of host:port")
    endpoints = tuple(_endpoint(str(e).strip(), "registry.endpoints") for e in endpoints_value if str(e).strip())
    prefix = _str(d, "prefix", "registry", DEFAULT_PREFIX)
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise _FieldError("registry.prefix", f"{prefix!r} must start with '/' and not end with one")
    ttl = _int(d, "lease_ttl", "registry", 10, 2, 3600)
    timeout = _float(d, "timeout", "registry", 5.0, 0.1, 120.0)
    tls = None
    if d.get("tls") is not None:
        t = _mapping(d["tls"], "registry.tls")
        _no_unknown(t, {"ca", "cert", "key"}, "registry.tls")
        tls = RegistryTLS(*(_file(t, f, "registry.tls") for f in ("ca", "cert", "key")))
    return RegistrySettings(endpoints, prefix, ttl, timeout, tls)


def _admin(d: Mapping[str, Any], environ: Mapping[str, str]) -> AdminSettings:
    _no_unknown(d, {"address", "port"}, "admin")
    if "MESHFED_ADMIN_ADDRESS" in environ:
        host, _, port = environ["MESHFED_ADMIN_ADDRESS"].rpartition(":")
        d = {"address": host, "port": int(port) if port.isdigit() else port}
    address = _str(d, "address", "admin", "127.0.0.1")
    _ip(address, "admin.address")
    return AdminSettings(address, _int(d, "port", "admin", 15000, 0, 65535))


def _export(raw: Any, where: str, site: str) -> ServiceExport:
    d = _mapping(raw, where)
    _no_unknown(d, {"namespace", "name", "type", "ports", "endpoints"}, where)
    type_name = _str(d, "type", where, "ClusterSetIP")
    try:
        stype = ServiceType(type_name)
    except ValueError:
        raise _FieldError(f"{where}.type", f"{type_name!r} is not ClusterSetIP or Headless") from None
    ports = []
    for i, p in enumerate(d.get("ports") or []):
        pw = f"{where}.ports[{i}]"
        pm = _mapping(p, pw)
        _no_unknown(pm, {"name", "port", "protocol"}, pw)
        proto = _str(pm, "protocol", pw, "TCP").upper()
        if proto not in Protocol.__members__:
            raise _FieldError(f"{pw}.protocol", f"{proto!r} is not TCP, UDP or SCTP")
        ports.append(ServicePort(_str(pm, "name", pw), _int(pm, "port", pw, None, 1, 65535), Protocol(proto)))
    endpoints = []
    for i, e in enumerate(d.get("endpoints") or []):
        ew = f"{where}.endpoints[{i}]"
        em = _mapping(e, ew)
        _no_unknown(em, {"addresses", "address", "ports", "ready", "hostname", "zone", "region", "weight"}, ew)
        addrs = em.get("addresses", [em["address"]] if "address" in em else None)
        if not isinstance(addrs, list) or not addrs:
            raise _FieldError(f"{ew}.addresses", "must be a non-empty list of IP addresses")
        for a in addrs:
            _ip(str(a), f"{ew}.addresses")
        eports = tuple(
            EndpointPort(str(k), _int({"p": v}, "p", f"{ew}.ports.{k}", None, 1, 65535))
            for k, v in _mapping(em.get("ports", {}), f"{ew}.ports").items()
        )
        ready = em.get("ready", True)
        if not isinstance(ready, bool):
            raise _FieldError(f"{ew}.ready", "must be true or false")
        hostname = em.get("hostname")
        endpoints.append(
            Endpoint(
                addresses=tuple(str(a) for a in addrs),
                ports=eports,
                ready=ready,
                hostname=None if hostname is None else str(hostname),
                locality=Locality(_str(em, "region", ew, ""), _str(em, "zone", ew, "")),
                weight=_int(em, "weight", ew, 1, 0, 65535),
            )
        )
    export = ServiceExport(
        site=site,
        namespace=_label(d, "namespace", where),
        name=_label(d, "name", where),
        ports=tuple(ports),
        type=stype,
        endpoints=tuple(endpoints),
    )
    try:
        validate_export(export)
    except RecordError as exc:
        raise _FieldError(where, str(exc)) from None
    return export


def _mapping(value: Any, where: str, required: bool = False) -> Mapping[str, Any]:
    if value is None:
        if required:
            raise _FieldError(where, "is required")
        return {}
    if not isinstance(value, dict):
        raise _FieldError(where, f"must be a mapping, not {type(value).__name__}")
    return value


def _no_unknown(d: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in d:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise _FieldError(f"{prefix}{key}", f"unknown field (known: {', '.join(sorted(known))})")


def _str(d: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    fld = f"{where}.{name}" if where else name
    value = d.get(name, default)
    if value is None:
        raise _FieldError(fld, "is required")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _FieldError(fld, "must be a string")
    return str(value)


def _label(d: Mapping[str, Any], name: str, where: str) -> str:
    value = _str(d, name, where)
    if not is_dns_label(value):
        raise _FieldError(f"{where}.{name}", f"{value!r} is not a DNS label (a-z, 0-9, '-', at most 63 chars)")
    return value


def _int(d: Mapping[str, Any], name: str, where: str, default: int | None, lo: int, hi: int) -> int:
    value = d.get(name, default)
    if value is None:
        raise _FieldError(f"{where}.{name}", "is required")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _FieldError(f"{where}.{name}", f"{value!r} is not a whole number in {lo}..{hi}")
    return value


def _float(d: Mapping[str, Any], name: str, where: str, default: float, lo: float, hi: float) -> float:
    value = d.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _FieldError(f"{where}.{name}", f"{value!r} is not a number in {lo}..{hi}")
    return float(value)


def _ip(value: str, where: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _FieldError(where, f"{value!r} is not an IP address") from None


def _endpoint(value: str, where: str) -> str:
    host, sep, port = value.removeprefix("http://").removeprefix("https://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _FieldError(where, f"{value!r} is not host:port")
    return f"{host}:{port}"


def _file(d: Mapping[str, Any], name: str, where: str) -> Path:
    path = Path(_str(d, name, where))
    if not path.is_file():
        raise _FieldError(f"{where}.{name}", f"{path} does not exist or is not a file")
    return path
