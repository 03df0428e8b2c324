"""Typed registry records (sites, exports, endpoints, ports) and their validation. Pure: no IO.

Every check raises `RecordError` naming the field and the reason; readers skip such records.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from federation.core.errors import RecordError

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?\Z")
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")
_POLICY_WORD = re.compile(r"^[A-Z][A-Za-z]{0,62}\Z")
_MAX_ADDRESSES = 100
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
MAX_ENDPOINT_LABELS = 16
"""Labels per endpoint: enough for subsets (version, track, tier), small enough for 1,000-endpoint records."""

Labels = tuple[tuple[str, str], ...]
"""Kubernetes-style labels as sorted (key, value) pairs, so that records stay hashable."""

MAX_METADATA = 64
"""Exported labels (and annotations) per export: a record stays small, and no real use needs more."""
MAX_ANNOTATION_BYTES = 32 * 1024
"""All exported annotations of one export together: an eighth of what Kubernetes allows on an object."""
IP_FAMILIES = ("IPv4", "IPv6")
SESSION_AFFINITIES = ("None", "ClientIP")
INTERNAL_TRAFFIC_POLICIES = ("Cluster", "Local")


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
    app_protocol: str = ""
    """The Service port's appProtocol (e.g. `http`, `kubernetes.io/h2c`); empty when not given."""


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
    labels: Labels = ()
    """Sorted (key, value) pairs from pod labels or VM config, for subsets; readers accept records without."""

    def label(self, key: str) -> str | None:
        """The value of label `key`, or None."""
        for k, v in self.labels:
            if k == key:
                return v
        return None

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
    ip_families: tuple[str, ...] = ()
    """The exported Service's IP families in its order (IPv4, IPv6); empty where the source has none (VMs)."""
    session_affinity: str | None = None
    """The Service's sessionAffinity (None or ClientIP); None (Python) where the source has no such notion."""
    session_affinity_timeout: int | None = None
    """sessionAffinityConfig.clientIP.timeoutSeconds, with ClientIP affinity."""
    internal_traffic_policy: str | None = None
    """The Service's internalTrafficPolicy (Cluster or Local), carried to the ServiceImport."""
    traffic_distribution: str | None = None
    """The Service's trafficDistribution (e.g. PreferClose), carried to the ServiceImport."""
    exported_labels: tuple[tuple[str, str], ...] | None = None
    """ServiceExport.spec.exportedLabels, sorted; None where the source cannot express them (VMs)."""
    exported_annotations: tuple[tuple[str, str], ...] | None = None
    """ServiceExport.spec.exportedAnnotations, sorted; None where the source cannot express them."""

    @property
    def service(self) -> tuple[str, str]:
        """The mesh-wide identity of the service: (namespace, name)."""
        return (self.namespace, self.name)


# ---------------------------------------------------------------- validation


def validate_site(site: Site) -> None:
    """Raise RecordError naming the first thing wrong with `site`."""
    check_label("site", site.name)
    check_label("network", site.network)
    if site.kind not in ("vm", "kubernetes"):
        raise RecordError(f"siteKind {site.kind!r} is not vm or kubernetes")
    for i, g in enumerate(site.gateways):
        check_label(f"gateways[{i}].name", g.name)
        _check_host(f"gateways[{i}].address", g.address)
        _check_port(f"gateways[{i}].port", g.port)


def validate_export(export: ServiceExport) -> None:
    """Raise RecordError naming the first thing wrong with `export`."""
    check_label("site", export.site)
    check_label("namespace", export.namespace)
    check_label("service name", export.name)
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
        if p.app_protocol and (len(p.app_protocol) > 316 or not _QUALIFIED.match(p.app_protocol)):
            raise RecordError(f"ports[{i}].appProtocol {p.app_protocol!r} is not a protocol name")
    _validate_service_fields(export)
    validate_endpoints(export.endpoints, seen)


def validate_endpoints(endpoints: tuple[Endpoint, ...], port_names: set[str] | frozenset[str] | None
                       ) -> tuple[frozenset[str], frozenset[str]]:
    """Raise RecordError naming the first thing wrong with `endpoints`; their hostnames and the port names they use.

    `port_names` are the service's (None: an endpoint chunk, checked against its export when assembled).
    """
    hostnames: set[str] = set()
    used: set[str] = set()
    checked_ports: set[tuple[EndpointPort, ...]] = set()
    for i, e in enumerate(endpoints):
        if not e.addresses:
            raise RecordError(f"endpoints[{i}].addresses is empty")
        if len(e.addresses) > _MAX_ADDRESSES:
            raise RecordError(f"endpoints[{i}].addresses has more than {_MAX_ADDRESSES} entries")
        for a in e.addresses:
            if not _IPV4.match(a):  # the common case, without building the field name check_ip would take
                check_ip(f"endpoints[{i}].addresses", a)
        if e.ports not in checked_ports:  # endpoints of one export mostly share one ports tuple
            for ep in e.ports:
                if port_names is not None and ep.name not in port_names:
                    raise RecordError(f"endpoints[{i}].ports names {ep.name!r}, which is not a service port")
                _check_port(f"endpoints[{i}].ports.{ep.name}", ep.port)
                used.add(ep.name)
            checked_ports.add(e.ports)
        if e.hostname is not None:
            check_label(f"endpoints[{i}].hostname", e.hostname)
            if e.hostname in hostnames:
                raise RecordError(f"endpoints[{i}].hostname {e.hostname!r} is used twice")
            hostnames.add(e.hostname)
        if not 0 <= e.weight <= 65535:
            raise RecordError(f"endpoints[{i}].weight {e.weight} is not in 0..65535")
        if e.labels:
            check_labels(f"endpoints[{i}].labels", e.labels)
    return frozenset(hostnames), frozenset(used)


def _validate_service_fields(export: ServiceExport) -> None:
    """The optional fields carried from a Kubernetes Service and ServiceExport."""
    fams = export.ip_families
    if len(fams) > 2 or len(set(fams)) != len(fams) or any(f not in IP_FAMILIES for f in fams):
        raise RecordError(f"ipFamilies {list(fams)!r} is not one or two distinct families of IPv4, IPv6")
    if export.session_affinity is not None and export.session_affinity not in SESSION_AFFINITIES:
        raise RecordError(f"sessionAffinity {export.session_affinity!r} is not None or ClientIP")
    timeout = export.session_affinity_timeout
    if timeout is not None and (export.session_affinity != "ClientIP" or not isinstance(timeout, int)
                                or isinstance(timeout, bool) or not 1 <= timeout <= 86400):
        raise RecordError(f"sessionAffinityTimeout {timeout!r} is not 1..86400 seconds with ClientIP affinity")
    itp = export.internal_traffic_policy
    if itp is not None and itp not in INTERNAL_TRAFFIC_POLICIES:
        raise RecordError(f"internalTrafficPolicy {itp!r} is not Cluster or Local")
    td = export.traffic_distribution
    if td is not None and not (isinstance(td, str) and _POLICY_WORD.match(td)):
        raise RecordError(f"trafficDistribution {td!r} is not a policy name (e.g. PreferClose)")
    carried = (("exportedLabels", export.exported_labels), ("exportedAnnotations", export.exported_annotations))
    for what, pairs in carried:
        if pairs is None:
            continue
        if len(pairs) > MAX_METADATA:
            raise RecordError(f"{what} has more than {MAX_METADATA} entries")
        keys = [k for k, _ in pairs]
        if keys != sorted(set(keys)):
            raise RecordError(f"{what} keys are not unique and sorted")
        for k, v in pairs:
            if not isinstance(k, str) or len(k) > 316 or not _QUALIFIED.match(k):
                raise RecordError(f"{what} key {k!r} is not a label key (prefix/name)")
            if not isinstance(v, str):
                raise RecordError(f"{what}[{k!r}] is not a string")
            if what == "exportedLabels" and not _LABEL_VALUE.match(v):
                raise RecordError(f"exportedLabels[{k!r}] {v!r} is not a label value")
        if what == "exportedAnnotations" and sum(len(k) + len(v) for k, v in pairs) > MAX_ANNOTATION_BYTES:
            raise RecordError(f"exportedAnnotations are larger than {MAX_ANNOTATION_BYTES} bytes")


def is_dns_label(value: str) -> bool:
    """True if `value` is an RFC 1123 DNS label (lower case, as Kubernetes names are)."""
    return bool(_LABEL.match(value))


def check_label(what: str, value: str) -> None:
    """Raise RecordError unless `value` is a DNS label; `what` names the field."""
    if not isinstance(value, str) or not _LABEL.match(value):
        raise RecordError(f"{what} {value!r} is not a DNS label (a-z, 0-9, '-', at most 63 chars)")


def labels_of(mapping: Mapping[str, str]) -> Labels:
    """Labels as the sorted pairs records hold."""
    return tuple(sorted(mapping.items()))


def check_label_key(what: str, key: str) -> None:
    """Raise RecordError unless `key` is a Kubernetes label key: `[prefix/]name`."""
    if not isinstance(key, str):
        raise RecordError(f"{what} key {key!r} is not a string")
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        raise RecordError(f"{what} key {key!r}: prefix {prefix!r} is not a DNS subdomain")
    if not _LABEL_NAME.match(name):
        raise RecordError(
            f"{what} key {key!r}: name must be 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', "
            "starting and ending with a letter or digit"
        )


def check_label_value(what: str, value: str) -> None:
    """Raise RecordError unless `value` is a Kubernetes label value (may be empty)."""
    if not isinstance(value, str) or not _LABEL_VALUE.match(value):
        raise RecordError(
            f"{what} value {value!r} must be at most 63 characters of a-z, A-Z, 0-9, '-', '_', '.', "
            "starting and ending with a letter or digit"
        )


def check_labels(what: str, labels: Labels) -> None:
    """Raise RecordError unless `labels` are sorted, unique, valid Kubernetes labels, at most 16."""
    if len(labels) > MAX_ENDPOINT_LABELS:
        raise RecordError(f"{what} has {len(labels)} labels; at most {MAX_ENDPOINT_LABELS} are carried")
    keys = [k for k, _ in labels]
    if keys != sorted(set(keys)):
        raise RecordError(f"{what} keys must be unique and sorted")
    for k, v in labels:
        check_label_key(what, k)
        check_label_value(f"{what}[{k}]", v)


def _check_port(what: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise RecordError(f"{what} {value!r} is not in 1..65535")


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")
"""A dotted-quad IPv4 address as `ipaddress` accepts it (no leading zeros): the common case, matched in C."""


def check_ip(what: str, value: str) -> None:
    """Raise RecordError unless `value` is an IP address without a zone (`%eth0`: any text); `what` names the field."""
    if isinstance(value, str) and _IPV4.match(value):
        return
    try:
        ipaddress.ip_address(value)
        if "%" in value:
            raise ValueError(value)
    except ValueError:
        raise RecordError(f"{what} {value!r} is not an IP address") from None


def _check_host(what: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
        if "%" not in value:
            return
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_LABEL.match(lbl) for lbl in labels):
        raise RecordError(f"{what} {value!r} is neither an IP address nor a DNS name")

