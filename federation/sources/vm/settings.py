"""Settings of the VM agent (the agent config's `vm:` section): exports with checks, discovery, VIPs."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from federation.core.errors import ConfigError
from federation.core.records import Protocol, ServiceType, is_dns_label

AUTO = "auto"
"""An address of "auto" means the host's own address, found with pyroute2 at start."""

CHECK_KINDS = ("tcp", "http", "command", "none")


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """How one exported service is checked."""

    kind: str = "tcp"
    """A TCP connect is the one check every TCP service passes when it is up, without any configuration."""
    port: int = 0
    """0 checks the service's first port, which is what the check is usually about."""
    path: str = "/"
    """HTTP path; "/" because every HTTP server answers it; point it at /healthz where one exists."""
    status_min: int = 200
    """HTTP statuses from 200 to 399 pass, as in HAProxy and Consul: redirects mean the server is alive."""
    status_max: int = 399
    """See status_min."""
    command: tuple[str, ...] = ()
    """argv run without a shell for kind=command; exit status 0 passes (Nagios/Consul convention)."""
    interval: float = 5.0
    """Consul's and HAProxy's order of magnitude: with rise=fall=2 a change reaches the mesh in ~10 s."""
    timeout: float = 2.0
    """Below the interval, so a hanging check fails before the next one is due."""
    rise: int = 2
    """Two passes to come back: one lucky connect does not bring back a flapping service."""
    fall: int = 2
    """Two failures to go: one lost SYN does not withdraw a service, and ready follows within two intervals."""


@dataclass(frozen=True, slots=True)
class PortSettings:
    """One port of an exported VM service."""

    name: str
    """The port name, the same across sites (MCS)."""
    port: int
    """The port clients in the mesh use."""
    protocol: Protocol = Protocol.TCP
    """TCP, as nearly every service is."""
    target_port: int = 0
    """0 means the same as port; set it when the process listens on another port than the one exported."""


@dataclass(frozen=True, slots=True)
class VmServiceSettings:
    """A service running on this VM that the site exports."""

    namespace: str
    """The mesh namespace (MCS namespace sameness: the same service has the same namespace everywhere)."""
    name: str
    """The service name, a DNS label."""
    ports: tuple[PortSettings, ...]
    """At least one port."""
    address: str = AUTO
    """"auto" takes the host's own address, so one config file fits every VM of a group."""
    check: CheckSettings = CheckSettings()
    """A TCP connect to the first port by default: a service nobody checks is exported while dead."""
    hostname: str | None = None
    """Optional endpoint hostname for headless services."""
    type: ServiceType = ServiceType.CLUSTER_SET_IP
    """ClusterSetIP: clients get one VIP, which is what an application connecting by name expects."""
    weight: int = 1
    """Equal weights unless told otherwise."""


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """Browsing DNS-SD (mDNS) on the VM's LAN and exporting what is found."""

    enabled: bool = False
    """Off: exporting whatever appears on a LAN must be an operator's decision."""
    types: tuple[str, ...] = ("_http._tcp.local.",)
    """HTTP is what most LAN devices and small services announce."""
    namespace: str = "lan"
    """A namespace of their own, so discovered names never collide with declared services."""
    interfaces: tuple[str, ...] = ()
    """Addresses of the interfaces to browse on; empty means all, so list the LAN's to keep public NICs out."""


@dataclass(frozen=True, slots=True)
class VmSettings:
    """The VM source of one agent."""

    address: str = AUTO
    """The address services default to; "auto" asks the kernel for the source address of the default route."""
    services: tuple[VmServiceSettings, ...] = ()
    """No exports until the operator declares some."""
    discovery: DiscoverySettings = DiscoverySettings()
    """Off by default, see DiscoverySettings.enabled."""
    announce: bool = False
    """Off: announcing mesh services on a LAN exposes their names to every device on it."""
    vip_interface: str = "meshfed0"
    """A dummy interface of our own, so VIPs never mix with the operator's addresses and vanish with it.
    Empty: no VIPs; imported services get loopback egress ports (shared hosts, tests)."""


def parse_vm_settings(data: Mapping[str, Any], where: str) -> VmSettings:
    """Validate the `vm:` section; raise ConfigError(f"{where}.{field}: reason")."""
    d = _mapping(data, where)
    _known(d, VmSettings.__dataclass_fields__, where)
    address = _address(d.get("address", AUTO), f"{where}.address")
    services_raw = d.get("services", [])
    if not isinstance(services_raw, list):
        raise ConfigError(f"{where}.services: must be a list")
    services = tuple(_service(s, f"{where}.services[{i}]", address) for i, s in enumerate(services_raw))
    seen: set[tuple[str, str]] = set()
    for i, s in enumerate(services):
        if (s.namespace, s.name) in seen:
            raise ConfigError(f"{where}.services[{i}]: {s.namespace}/{s.name} is declared twice")
        seen.add((s.namespace, s.name))
    interface = _str(d, "vip_interface", where, "meshfed0")
    if interface and (len(interface) > 15 or "/" in interface or " " in interface):
        raise ConfigError(f"{where}.vip_interface: {interface!r} is not a Linux interface name (1..15 chars)")
    return VmSettings(
        address=address,
        services=services,
        discovery=_discovery(d.get("discovery", {}), f"{where}.discovery"),
        announce=_bool(d, "announce", where, False),
        vip_interface=interface,
    )


# ---------------------------------------------------------------- private


def _service(raw: Any, where: str, default_address: str) -> VmServiceSettings:
    d = _mapping(raw, where)
    _known(d, VmServiceSettings.__dataclass_fields__, where)
    namespace, name = _label(d, "namespace", where), _label(d, "name", where)
    ports_raw = d.get("ports")
    if not isinstance(ports_raw, list) or not ports_raw:
        raise ConfigError(f"{where}.ports: must be a non-empty list")
    ports = tuple(_port(p, f"{where}.ports[{i}]") for i, p in enumerate(ports_raw))
    if len({p.name for p in ports}) != len(ports):
        raise ConfigError(f"{where}.ports: port names must be unique")
    type_name = _str(d, "type", where, ServiceType.CLUSTER_SET_IP.value)
    try:
        stype = ServiceType(type_name)
    except ValueError:
        raise ConfigError(f"{where}.type: {type_name!r} is not ClusterSetIP or Headless") from None
    hostname = d.get("hostname")
    if hostname is not None and (not isinstance(hostname, str) or not is_dns_label(hostname)):
        raise ConfigError(f"{where}.hostname: {hostname!r} is not a DNS label")
    return VmServiceSettings(
        namespace=namespace,
        name=name,
        ports=ports,
        address=_address(d.get("address", default_address), f"{where}.address"),
        check=_check(d.get("check", {}), f"{where}.check"),
        hostname=hostname,
        type=stype,
        weight=_int(d, "weight", where, 1, 0, 65535),
    )


def _port(raw: Any, where: str) -> PortSettings:
    d = _mapping(raw, where)
    _known(d, PortSettings.__dataclass_fields__, where)
    proto = _str(d, "protocol", where, "TCP").upper()
    if proto not in Protocol.__members__:
        raise ConfigError(f"{where}.protocol: {proto!r} is not TCP, UDP or SCTP")
    name = _str(d, "name", where)
    if not is_dns_label(name) or len(name) > 15:
        raise ConfigError(f"{where}.name: {name!r} is not a port name (DNS label of at most 15 chars)")
    return PortSettings(name, _int(d, "port", where, None, 1, 65535), Protocol(proto),
                        _int(d, "target_port", where, 0, 0, 65535))


def _check(raw: Any, where: str) -> CheckSettings:
    d = _mapping(raw, where)
    _known(d, CheckSettings.__dataclass_fields__, where)
    kind = _str(d, "kind", where, "tcp")
    if kind not in CHECK_KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(CHECK_KINDS)}")
    command = d.get("command", [])
    if isinstance(command, str):
        command = command.split()
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise ConfigError(f"{where}.command: must be a list of strings (argv, no shell)")
    if kind == "command" and not command:
        raise ConfigError(f"{where}.command: is required for kind command")
    path = _str(d, "path", where, "/")
    if not path.startswith("/"):
        raise ConfigError(f"{where}.path: {path!r} must start with /")
    interval = _float(d, "interval", where, 5.0, 0.05, 3600.0)
    timeout = _float(d, "timeout", where, min(2.0, interval), 0.01, 3600.0)
    if timeout > interval:
        raise ConfigError(f"{where}.timeout: {timeout} is longer than the interval {interval}")
    smin, smax = _int(d, "status_min", where, 200, 100, 599), _int(d, "status_max", where, 399, 100, 599)
    if smin > smax:
        raise ConfigError(f"{where}.status_min: {smin} is above status_max {smax}")
    return CheckSettings(
        kind=kind, port=_int(d, "port", where, 0, 0, 65535), path=path, status_min=smin, status_max=smax,
        command=tuple(command), interval=interval, timeout=timeout,
        rise=_int(d, "rise", where, 2, 1, 100), fall=_int(d, "fall", where, 2, 1, 100),
    )  # fmt: skip


def _discovery(raw: Any, where: str) -> DiscoverySettings:
    d = _mapping(raw, where)
    _known(d, DiscoverySettings.__dataclass_fields__, where)
    types = _strings(d, "types", where, DiscoverySettings().types)
    for t in types:
        if not (t.startswith("_") and t.endswith(".local.") and ("._tcp." in t or "._udp." in t)):
            raise ConfigError(f"{where}.types: {t!r} is not a DNS-SD type like _http._tcp.local.")
    return DiscoverySettings(
        enabled=_bool(d, "enabled", where, False),
        types=types,
        namespace=_label(d, "namespace", where, "lan"),
        interfaces=tuple(_ip(a, f"{where}.interfaces") for a in _strings(d, "interfaces", where, ())),
    )


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping, not {type(value).__name__}")
    return value


def _known(d: Mapping[str, Any], known: Mapping[str, Any], where: str) -> None:
    for key in d:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown field (known: {', '.join(sorted(known))})")


def _str(d: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = d.get(name, default)
    if value is None:
        raise ConfigError(f"{where}.{name}: is required")
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{name}: must be a string")
    return value


def _strings(d: Mapping[str, Any], name: str, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = d.get(name, list(default))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{name}: must be a list of strings")
    return tuple(value)


def _label(d: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = _str(d, name, where, default)
    if not is_dns_label(value):
        raise ConfigError(f"{where}.{name}: {value!r} is not a DNS label (a-z, 0-9, '-', at most 63 chars)")
    return value


def _int(d: Mapping[str, Any], name: str, where: str, default: int | None, lo: int, hi: int) -> int:
    value = d.get(name, default)
    if value is None:
        raise ConfigError(f"{where}.{name}: is required")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}.{name}: {value!r} is not a whole number in {lo}..{hi}")
    return value


def _float(d: Mapping[str, Any], name: str, where: str, default: float, lo: float, hi: float) -> float:
    value = d.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{where}.{name}: {value!r} is not a number of seconds in {lo}..{hi}")
    return float(value)


def _bool(d: Mapping[str, Any], name: str, where: str, default: bool) -> bool:
    value = d.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{name}: must be true or false")
    return value


def _address(value: Any, where: str) -> str:
    if value == AUTO:
        return AUTO
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is neither an IP address nor \"auto\"") from None


def _ip(value: str, where: str) -> str:
    if value == AUTO:
        raise ConfigError(f"{where}: \"auto\" is not allowed here; give interface addresses")
    return _address(value, where)
