"""The agent's settings tree: one file (YAML) plus MESHFED_* environment, read once, at start.

Every section is a frozen dataclass of its own subsystem (gateway, dns, vm, kubernetes) or of this
module (site, registry, admin); `federation.core.settings.read` reads them all in one style, refusing
unknown keys everywhere. A bad file fails with one line: the file, the field and the reason.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from federation.core.errors import ConfigError, RecordError
from federation.core.imports import EVERYTHING as IMPORT_EVERYTHING
from federation.core.imports import check_patterns
from federation.core.keys import DEFAULT_PREFIX
from federation.core.records import (
    Endpoint,
    EndpointPort,
    Locality,
    Protocol,
    ServiceExport,
    ServicePort,
    ServiceType,
    validate_export,
)
from federation.core.settings import (
    Invalid,
    Spec,
    convert,
    dns_label,
    host_port,
    ip_address,
    optional_ip,
    read,
    required,
    setting,
)
from federation.core.verification import Mode
from federation.dns.settings import DnsSettings
from federation.registry.publisher import DUPLICATE_MODES
from federation.runtime.files import TlsFiles
from federation.sources.kubernetes.settings import KubernetesSettings
from federation.sources.vm.settings import VmSettings
from gateway.accesslog import AccessLogSettings
from gateway.ingress import IngressSettings
from gateway.settings import GatewaySettings


@dataclass(frozen=True, slots=True)
class SiteSettings:
    """Who this agent speaks for."""

    name: str = required(check=dns_label)
    """The site's unique name, a DNS label; it appears in keys, DNS names and SPIFFE IDs."""
    network: str = required(check=dns_label)
    """Sites on the same network reach each other's endpoints directly; others go through gateways."""
    region: str = ""
    """Locality for nearest-first ordering; empty when unknown."""
    zone: str = ""
    """Locality for nearest-first ordering; empty when unknown."""
    kind: str = setting("vm", check=lambda k: None if k in ("vm", "kubernetes") else f"{k!r} is not vm or kubernetes")
    """vm or kubernetes: decides where imported services get their address."""
    gateway_address: str = setting("", check=optional_ip)
    """Address other networks reach this site's gateway at (a LoadBalancer or public IP); empty: its listen address."""

    @property
    def locality(self) -> Locality:
        """The site's locality as the records carry it."""
        return Locality(self.region, self.zone)


def _tls(raw: Any, where: str) -> TlsFiles | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with ca, cert and key")
    unknown = sorted(set(raw) - {"ca", "cert", "key"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: ca, cert, key)")
    missing = [name for name in ("ca", "cert", "key") if name not in raw]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: is required")
    paths = []
    for name in ("ca", "cert", "key"):
        path = Path(convert(str, raw[name], f"{where}.{name}"))
        if not path.is_file():
            raise ConfigError(f"{where}.{name}: {path} does not exist or is not a file")
        paths.append(path)
    return TlsFiles(*paths)


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Where the registry lives and how the agent holds its records there."""

    endpoints: tuple[str, ...] = setting((), check=host_port)
    """etcd host:port list; empty starts an embedded etcd under the state directory (one-machine setups)."""
    prefix: str = setting(DEFAULT_PREFIX, check=lambda p: None if p.startswith("/") and not p.endswith("/")
                          else f"{p!r} must start with '/' and not end with one")
    """Root of every key; change only to run several meshes on one etcd."""
    lease_ttl: int = setting(10, lo=2, hi=3600)
    """Seconds a dead agent's records outlive it: short for quick failover, long enough to ride out a stall."""
    timeout: float = setting(5.0, lo=0.1, hi=120.0)
    """Seconds an etcd call may take before the agent treats etcd as unreachable."""
    heartbeat_interval: float = setting(30.0, lo=0.0, hi=3600.0, check=lambda v: None if v == 0 or v >= 1
                                        else f"{v} is below 1 s (0 turns the heartbeat off)")
    """Seconds between the site's heartbeats (the lag metric); 30 s is ~33 writes/s at 1,000 sites; 0: off."""
    tls: TlsFiles | None = setting(None, parse=_tls)
    """Client TLS for etcd (ca, cert, key files); None talks plaintext (only sensible on loopback)."""
    snapshot: bool = True
    """Keep the last registry view in the state directory: a restart while etcd is away serves it, stale."""
    snapshot_max_bytes: int = setting(64 * 1024 * 1024, lo=1024 * 1024, hi=4 * 1024 * 1024 * 1024)
    """The most registry (raw bytes) the snapshot holds, in memory and on disk: about 500 sites of 100 exports."""
    signatures: Mode = Mode.REQUIRE
    """require: only records that verify count, so a raw etcd writer cannot steer traffic; accept (during an
    upgrade from unsigned agents) also takes unsigned records of sites that have never signed."""
    endpoint_chunk_size: int = setting(0, lo=0, hi=10_000)
    """Endpoints per chunk record of a large export (100 is Kubernetes' EndpointSlice size), so that one endpoint
    change rewrites one chunk; 0, the default of this release, writes whole records, which agents of the previous
    release read (they read no chunks): set it once every agent of the mesh runs this release (docs/operations.md)."""
    on_duplicate: str = setting("wait", check=lambda v: None if v in DUPLICATE_MODES
                                else f"{v!r} is not one of {', '.join(DUPLICATE_MODES)}")
    """wait: a second agent of the same site writes nothing until the first is gone (a restored VM image,
    a second pod); refuse: it stops at once, with the reason."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(_strip_scheme(e) for e in self.endpoints))


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin HTTP endpoint: /healthz, /readyz, /metrics, /registry, /status."""

    address: str = setting("127.0.0.1", check=ip_address)
    """Loopback by default: metrics and registry contents are not for the whole network."""
    port: int = setting(15000, lo=0, hi=65535)
    """Same number Envoy uses for its admin port, so operators find it; 0 picks a free port."""


def _imports(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return IMPORT_EVERYTHING
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: must be a non-empty list of NAMESPACE/NAME patterns (\"*/*\": everything)")
    return check_patterns(raw, where)


def _exports(raw: Any, where: str) -> tuple[ServiceExport, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list")
    exports = tuple(read(_ExportSettings, e, f"{where}[{i}]").export(f"{where}[{i}]") for i, e in enumerate(raw))
    seen: set[tuple[str, str]] = set()
    for i, e in enumerate(exports):
        if e.service in seen:
            raise ConfigError(f"{where}[{i}]: {e.namespace}/{e.name} is exported twice")
        seen.add(e.service)
    return exports


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything `meshfed agent` needs: one section per subsystem."""

    site: SiteSettings = required()
    """Required: an agent speaks for exactly one site."""
    registry: RegistrySettings = RegistrySettings()
    """Embedded etcd unless endpoints are given."""
    admin: AdminSettings = AdminSettings()
    """Loopback port 15000."""
    state_dir: Path = Path("/var/lib/meshfed")
    """Lease id, embedded etcd data, issued certificates; private to the agent (0700)."""
    exports: tuple[ServiceExport, ...] = setting((), parse=_exports)
    """Services this site exports, declared statically (VM sites usually use `vm.services` instead)."""
    imports: tuple[str, ...] = setting(IMPORT_EVERYTHING, parse=_imports)
    """The services of other sites this site carries, as `namespace/name` globs (`shop/*`, `*/web`); the
    default imports everything. Others never reach the mirror, DNS, VIPs or egress (a restart applies it)."""
    gateway: GatewaySettings = GatewaySettings()
    """Needs `ca_dir` to run; without it the site has no cross-network traffic."""
    dns: DnsSettings = DnsSettings()
    """On, on loopback port 53."""
    vm: VmSettings = VmSettings()
    """Used by sites of kind vm."""
    kubernetes: KubernetesSettings = KubernetesSettings()
    """Off unless enabled (sites of kind kubernetes)."""
    access_log: AccessLogSettings = AccessLogSettings()
    """Off: one JSON line per relayed connection costs a busy gateway; set `path` (a file or `-`) to turn it on."""
    ingress: tuple[IngressSettings, ...] = ()
    """Listeners for clients outside the mesh (global ingress), each to a service or by TLS server name;
    none by default: opening a port to the outside is the operator's choice."""
    source: str = "<defaults>"
    """The file these settings came from, for messages (not a key of the file)."""

    def __post_init__(self) -> None:
        # Exports are read before the site's name is known to them: stamp it (frozen, hence setattr).
        object.__setattr__(self, "exports", tuple(dataclasses.replace(e, site=self.site.name) for e in self.exports))

    def validate(self) -> None:
        """Checks between sections."""
        if self.ingress and not self.gateway.ca_dir:
            raise Invalid("ingress", "ingress clients are routed by the egress, which needs gateway.ca_dir")
        listens = [i.listen for i in self.ingress]
        if len(set(listens)) != len(listens):
            raise Invalid("ingress", "two listeners on the same address and port")
        if self.kubernetes.enabled and self.site.kind != "kubernetes":
            raise Invalid("kubernetes.enabled", f"site {self.site.name} is of kind {self.site.kind}, not kubernetes")
        if self.registry.signatures is Mode.REQUIRE and not self.gateway.ca_dir:
            raise Invalid("registry.signatures", "require needs the mesh's roots to verify against and a site key "
                          "to sign with: set gateway.ca_dir (from `meshfed ca site`), or use accept for a mesh "
                          "that trusts its registry")


ADMIN_ADDR_FILE = "admin.addr"
"""The file in the state directory where a running agent writes its admin address (for `meshfed status`)."""

ENVIRONMENT = {
    "MESHFED_REGISTRY_ENDPOINTS": "registry.endpoints (comma separated host:port list)",
    "MESHFED_STATE_DIR": "state_dir",
    "MESHFED_ADMIN_ADDRESS": "admin.address and admin.port (host:port)",
    "MESHFED_POD_IP": "kubernetes.egress_address, unless the file sets it (the Deployment's downward API)",
}
"""The environment variables the loader reads, and what each sets."""


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> AgentSettings:
    """Read, validate and return the agent settings at `path`, with MESHFED_* and then `overrides`
    ({"gateway.workers": 2}: command-line flags) applied, all checked like the file."""
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
    data = data if data is not None else {}
    for dotted, value in (overrides or {}).items():
        section, _, field = dotted.partition(".")
        if not isinstance(data, dict) or not isinstance(data.get(section, {}) or {}, dict):
            break  # parse_settings reports the shape problem
        data[section] = {**(data.get(section) or {}), field: value}
    return parse_settings(data, str(path), os.environ if environ is None else environ)


def parse_settings(data: Any, source: str, environ: Mapping[str, str] | None = None) -> AgentSettings:
    """Validate an already-loaded mapping; ConfigError("<source>: <field>: <reason>")."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    if "source" in data:
        raise ConfigError(f"{source}: source: unknown field")
    try:
        return read(AgentSettings, {**_with_environment(data, environ or {}), "source": source}, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# ---------------------------------------------------------------- private


def _with_environment(data: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}

    def section(name: str) -> dict[str, Any]:
        value = out.setdefault(name, {})
        if value is None:
            value = out[name] = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping, not a {type(value).__name__}")
        return value

    if environ.get("MESHFED_REGISTRY_ENDPOINTS"):
        section("registry")["endpoints"] = [e for e in environ["MESHFED_REGISTRY_ENDPOINTS"].split(",") if e.strip()]
    if environ.get("MESHFED_STATE_DIR"):
        out["state_dir"] = environ["MESHFED_STATE_DIR"]
    if "MESHFED_ADMIN_ADDRESS" in environ:
        host, _, port = environ["MESHFED_ADMIN_ADDRESS"].rpartition(":")
        admin = section("admin")
        admin["address"] = host
        admin["port"] = int(port) if port.isdigit() else port
    if environ.get("MESHFED_POD_IP") and "egress_address" not in section("kubernetes"):
        section("kubernetes")["egress_address"] = environ["MESHFED_POD_IP"]
    return out


def _strip_scheme(endpoint: str) -> str:
    return endpoint.strip().removeprefix("http://").removeprefix("https://")


@dataclass(frozen=True, slots=True)
class _PortSettings:
    name: str = required()
    port: int = required(lo=1, hi=65535)
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True, slots=True)
class _EndpointSettings:
    addresses: tuple[str, ...] = setting((), check=ip_address)
    address: str = setting("", check=optional_ip)
    ports: tuple[tuple[str, int], ...] = setting((), parse=lambda raw, where: tuple(
        (str(k), convert(int, v, f"{where}.{k}", Spec(lo=1, hi=65535))) for k, v in _mapping(raw, where).items()))
    ready: bool = True
    hostname: str | None = None
    region: str = ""
    zone: str = ""
    weight: int = setting(1, lo=0, hi=65535)

    def validate(self) -> None:
        if not self.addresses and not self.address:
            raise Invalid("addresses", "must be a non-empty list of IP addresses")


@dataclass(frozen=True, slots=True)
class _ExportSettings:
    namespace: str = required(check=dns_label)
    name: str = required(check=dns_label)
    type: ServiceType = ServiceType.CLUSTER_SET_IP
    ports: tuple[_PortSettings, ...] = ()
    endpoints: tuple[_EndpointSettings, ...] = ()

    def export(self, where: str) -> ServiceExport:
        """The export record these settings declare (validated as a record too)."""
        export = ServiceExport(
            site="", namespace=self.namespace, name=self.name, type=self.type,
            ports=tuple(ServicePort(p.name, p.port, p.protocol) for p in self.ports),
            endpoints=tuple(Endpoint(
                addresses=e.addresses or (e.address,),
                ports=tuple(EndpointPort(k, v) for k, v in e.ports),
                ready=e.ready, hostname=e.hostname, locality=Locality(e.region, e.zone), weight=e.weight,
            ) for e in self.endpoints),
        )  # fmt: skip
        try:
            validate_export(dataclasses.replace(export, site="site"))  # AgentSettings stamps the real site name
        except RecordError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return export


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping of port name to port")
    return raw
