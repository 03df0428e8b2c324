"""Settings of the VM agent (the agent config's `vm:` section): exports with checks, discovery, VIPs."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from federation.core.errors import ConfigError, RecordError
from federation.core.records import Labels, Protocol, ServiceType, check_labels, labels_of
from federation.core.settings import Invalid, dns_label, ip_address, ip_network, required, setting
from federation.core.workloads import is_workload

AUTO = "auto"
"""An address of "auto" means the host's own address, found with pyroute2 at start."""

CHECK_KINDS = ("tcp", "http", "command", "none")
CAPTURE_MODES = ("auto", "on", "off")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?\Z")


def _check_kind(value: str) -> str | None:
    return None if value in CHECK_KINDS else f"{value!r} is not one of {', '.join(CHECK_KINDS)}"


def _http_path(value: str) -> str | None:
    return None if value.startswith("/") else f"{value!r} must start with /"


def _labels(raw: Any, where: str) -> Labels:
    """A mapping of Kubernetes labels, as the sorted pairs endpoint records hold."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"{where}: must be a mapping of label keys to string values")
    labels = labels_of({str(k): v for k, v in raw.items()})
    try:
        check_labels("", labels)
    except RecordError as exc:
        raise ConfigError(f"{where}: {str(exc).strip()}") from None
    return labels


def _port_name(value: str) -> str | None:
    return None if _PORT_NAME.match(value) else f"{value!r} is not a port name (DNS label of at most 15 chars)"


def _dnssd_type(t: str) -> str | None:
    if t.startswith("_") and t.endswith(".local.") and ("._tcp." in t or "._udp." in t):
        return None
    return f"{t!r} is not a DNS-SD type like _http._tcp.local."


def _interface_name(value: str) -> str | None:
    if value and (len(value) > 15 or "/" in value or " " in value):
        return f"{value!r} is not a Linux interface name (1..15 chars)"
    return None


def _workload(value: str) -> str | None:
    return None if not value or is_workload(value) else (
        f"{value!r} is not namespace/service-account (a DNS label, a slash, a DNS subdomain)")


def _workload_networks(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    """A mapping of source networks to `ns/sa`, as sorted (network, workload) pairs."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of networks (CIDR) to namespace/service-account")
    out = []
    for network, workload in raw.items():
        try:
            net = str(ipaddress.ip_network(str(network), strict=False))
        except ValueError:
            raise ConfigError(f"{where}: {network!r} is not a network (CIDR)") from None
        why = _workload(workload) if isinstance(workload, str) and workload else f"{workload!r} is not text"
        if why:
            raise ConfigError(f"{where}.{network}: {why}")
        out.append((net, workload))
    return tuple(sorted(out))


def _capture_mode(raw: Any, where: str) -> str:
    """auto, on or off; YAML reads a bare on/off as true/false, which mean the same here."""
    value = {True: "on", False: "off"}.get(raw, raw) if isinstance(raw, bool) else raw
    if value not in CAPTURE_MODES:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(CAPTURE_MODES)}")
    return str(value)


def _argv(raw: Any, where: str) -> tuple[str, ...]:
    """argv as a list, or a string split on white space (no shell)."""
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise ConfigError(f"{where}: must be a list of strings (argv, no shell)")
    return tuple(raw)


def _address(raw: Any, where: str, empty_ok: bool = False) -> str:
    if raw == AUTO or (empty_ok and raw == ""):
        return str(raw)
    try:
        return str(ipaddress.ip_address(str(raw)))
    except ValueError:
        raise ConfigError(f"{where}: {raw!r} is neither an IP address nor \"auto\"") from None


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """How one exported service is checked."""

    kind: str = setting("tcp", check=_check_kind)
    """A TCP connect is the one check every TCP service passes when it is up, without any configuration."""
    port: int = setting(0, lo=0, hi=65535)
    """0 checks the service's first port, which is what the check is usually about."""
    path: str = setting("/", check=_http_path)
    """HTTP path; "/" because every HTTP server answers it; point it at /healthz where one exists."""
    status_min: int = setting(200, lo=100, hi=599)
    """HTTP statuses from 200 to 399 pass, as in HAProxy and Consul: redirects mean the server is alive."""
    status_max: int = setting(399, lo=100, hi=599)
    """See status_min."""
    command: tuple[str, ...] = setting((), parse=_argv)
    """argv run without a shell for kind=command; exit status 0 passes (Nagios/Consul convention)."""
    interval: float = setting(5.0, lo=0.05, hi=3600.0)
    """Consul's and HAProxy's order of magnitude: with rise=fall=2 a change reaches the mesh in ~10 s."""
    timeout: float = setting(0.0, lo=0.0, hi=3600.0)
    """0: 2 s, or the interval if shorter; always below the interval, so a hanging check fails before the next."""
    rise: int = setting(2, lo=1, hi=100)
    """Two passes to come back: one lucky connect does not bring back a flapping service."""
    fall: int = setting(2, lo=1, hi=100)
    """Two failures to go: one lost SYN does not withdraw a service, and ready follows within two intervals."""

    @property
    def deadline(self) -> float:
        """The timeout of one check: `timeout`, or 2 s capped at the interval when it is 0."""
        return self.timeout or min(2.0, self.interval)

    def validate(self) -> None:
        """Checks between fields."""
        if self.kind == "command" and not self.command:
            raise Invalid("command", "is required for kind command")
        if self.timeout > self.interval:
            raise Invalid("timeout", f"{self.timeout} is longer than the interval {self.interval}")
        if self.status_min > self.status_max:
            raise Invalid("status_min", f"{self.status_min} is above status_max {self.status_max}")


@dataclass(frozen=True, slots=True)
class PortSettings:
    """One port of an exported VM service."""

    name: str = required(check=_port_name)
    """The port name, the same across sites (MCS)."""
    port: int = required(lo=1, hi=65535)
    """The port clients in the mesh use."""
    protocol: Protocol = Protocol.TCP
    """TCP, as nearly every service is."""
    target_port: int = setting(0, lo=0, hi=65535)
    """0 means the same as port; set it when the process listens on another port than the one exported."""


@dataclass(frozen=True, slots=True)
class VmServiceSettings:
    """A service running on this VM that the site exports."""

    namespace: str = required(check=dns_label)
    """The mesh namespace (MCS namespace sameness: the same service has the same namespace everywhere)."""
    name: str = required(check=dns_label)
    """The service name, a DNS label."""
    ports: tuple[PortSettings, ...] = required(nonempty=True)
    """At least one port."""
    address: str = setting("", parse=lambda raw, where: _address(raw, where, empty_ok=True))
    """Empty: the VM's `vm.address`; "auto" takes the host's own address, so one file fits every VM of a group."""
    check: CheckSettings = CheckSettings()
    """A TCP connect to the first port by default: a service nobody checks is exported while dead."""
    hostname: str | None = setting(None, check=dns_label)
    """Optional endpoint hostname for headless services."""
    type: ServiceType = ServiceType.CLUSTER_SET_IP
    """ClusterSetIP: clients get one VIP, which is what an application connecting by name expects."""
    weight: int = setting(1, lo=0, hi=65535)
    """Equal weights unless told otherwise."""
    labels: Labels = setting((), parse=_labels)
    """Endpoint labels (a mapping, Kubernetes syntax) for traffic-policy subsets such as `version: v2`;
    none by default, since a label only matters once a policy selects on it."""

    def validate(self) -> None:
        """Checks between fields."""
        if len({p.name for p in self.ports}) != len(self.ports):
            raise Invalid("ports", "port names must be unique")


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """Browsing DNS-SD (mDNS) on the VM's LAN and exporting what is found."""

    enabled: bool = False
    """Off: exporting whatever appears on a LAN must be an operator's decision."""
    types: tuple[str, ...] = setting(("_http._tcp.local.",), check=_dnssd_type)
    """HTTP is what most LAN devices and small services announce."""
    namespace: str = setting("lan", check=dns_label)
    """A namespace of their own, so discovered names never collide with declared services."""
    interfaces: tuple[str, ...] = setting((), check=ip_address)
    """Addresses of the interfaces to browse on; empty means all, so list the LAN's to keep public NICs out."""


@dataclass(frozen=True, slots=True)
class VmSettings:
    """The VM source of one agent."""

    address: str = setting(AUTO, parse=_address)
    """The address services default to; "auto" asks the kernel for the source address of the default route."""
    services: tuple[VmServiceSettings, ...] = ()
    """No exports until the operator declares some."""
    discovery: DiscoverySettings = DiscoverySettings()
    """Off by default, see DiscoverySettings.enabled."""
    announce: bool = False
    """Off: announcing mesh services on a LAN exposes their names to every device on it."""
    vip_interface: str = setting("meshfed0", check=_interface_name)
    """A dummy interface of our own, so VIPs never mix with the operator's addresses and vanish with it.
    Empty: no VIPs; imported services get loopback egress ports (shared hosts, tests)."""
    endpoint_ranges: tuple[str, ...] = setting(("240.241.0.0/16",), check=ip_network)
    """Where this VM gives each headless endpoint of another network an address of its own (on vip_interface):
    class E space next to the VIP range, local to this VM (no registry writes); a /16 holds 65,534. Empty: off."""
    egress_capture: str = setting("auto", parse=_capture_mode)
    """auto: one egress listener for the whole VIP range (nftables redirect) where the agent may install it
    (root, nft), else a listener per service port, so thousands of imports cost one socket and unprivileged
    agents still work; on: fail at start if capture is impossible; off: always a listener per port."""
    workload_identity: str = setting("", check=_workload)
    """`ns/sa` of the processes on this VM (clients from its loopback and its own address), which other sites'
    access policies see as `spiffe://<td>/site/<site>/ns/<ns>/sa/<sa>`. Empty: none, so a rule by identity
    sees them as unknown (a matching Deny denies, no Allow allows): one VM is one trust unit (docs/security.md)."""
    workload_identities: tuple[tuple[str, str], ...] = setting((), parse=_workload_networks)
    """LAN clients that route the VIP range through this VM, by source network: `{"10.0.5.0/24": "lan/printers"}`
    (the most specific network wins). None by default: a LAN address is only as trustworthy as the LAN."""

    def validate(self) -> None:
        """Checks between fields."""
        seen: set[tuple[str, str]] = set()
        for i, s in enumerate(self.services):
            if (s.namespace, s.name) in seen:
                raise Invalid(f"services[{i}]", f"{s.namespace}/{s.name} is declared twice")
            seen.add((s.namespace, s.name))

    def address_of(self, service: VmServiceSettings) -> str:
        """Where `service` runs: its own address, else the VM's (either may be "auto")."""
        return service.address or self.address
