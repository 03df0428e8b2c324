"""Settings of the federated DNS server (the agent config's `dns:` section)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.name

from federation.core.errors import ConfigError
from federation.core.settings import Invalid, setting


def _hostport(item: str) -> str | None:
    try:
        split_hostport(item)
    except ValueError as exc:
        return f"{item!r} is not IP[:port] ({exc})"
    return None


def _address(item: str) -> str | None:
    try:
        ipaddress.ip_address(item)
    except ValueError:
        return f"{item!r} is not an IP address"
    return None


def _network(item: str) -> str | None:
    try:
        net = ipaddress.ip_network(item)
    except ValueError as exc:
        return f"{item!r} is not a network ({exc})"
    return f"{item!r} is too small" if net.num_addresses < 4 else None


def _zone(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip("."):
        raise ConfigError(f"{where}: must be a non-empty DNS name")
    try:
        dns.name.from_text(value)
    except Exception as exc:
        raise ConfigError(f"{where}: {value!r} is not a DNS name ({exc})") from None
    return value.strip(".").lower()


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """How and where the agent answers federated DNS names."""

    enabled: bool = True
    """Every site needs the names; turning DNS off is for sites that run their own resolver plugin."""
    udp: tuple[str, ...] = setting(("127.0.0.1:53",), check=_hostport)
    """Loopback only until the operator chooses: a resolver open to the network is an amplifier."""
    tcp: tuple[str, ...] = setting(("127.0.0.1:53",), check=_hostport)
    """TCP next to UDP, because answers over 512 bytes fall back to TCP (RFC 7766)."""
    zone: str = setting("clusterset.local", parse=_zone)
    """The zone the Kubernetes MCS specification (KEP-1645) names."""
    ttl: int = setting(5, lo=0, hi=86400)
    """Short, as in the MCS spec: endpoints move, and clients must see it within seconds."""
    upstreams: tuple[str, ...] = setting((), check=_hostport)
    """Empty means the nameservers of /etc/resolv.conf, so the agent can be a VM's only resolver."""
    forwarding: bool = True
    """On, so pointing a host at the agent keeps every other name working."""
    forward_timeout: float = setting(2.0, positive=True)
    """Below the usual 5 s client timeout, so a dead upstream gives SERVFAIL before the client gives up."""
    site_pinning: bool = False
    """Off: KEP-1645 says `<site>.<svc>.<ns>.svc.<zone>` must not exist; on, they answer reachable sites only."""
    nameserver_addresses: tuple[str, ...] = setting((), check=_address)
    """The glue of the zone's NS record; empty: the listen addresses minus wildcards (behind a Service, its IP)."""
    vip_ranges: tuple[str, ...] = setting(("240.240.0.0/16", "fd6d:6573:6866:6564::/64"), check=_network)
    """Class E space and a ULA (RFC 4193) prefix that no site network routes; one IPv4 and one IPv6 range."""
    vip_grace: float = setting(600.0, positive=True)
    """Ten minutes: a site that restarts or briefly unexports keeps its clients' cached VIP."""
    answer_unserved_vips: bool = False
    """Off: a VM site whose VIPs are off (`vm.vip_interface: ""`) answers no ClusterSetIP address, since nothing
    there serves it; on only for a resolver whose clients reach the VIPs elsewhere (and for tests)."""
    workers: int = setting(1, lo=1, hi=64)
    """UDP sockets sharing the port with SO_REUSEPORT; one event loop gains little from more."""
    max_udp_payload: int = setting(1232, lo=512, hi=4096)
    """The DNS Flag Day 2020 EDNS buffer size: avoids IP fragmentation on every common path."""

    def validate(self) -> None:
        """Checks between fields."""
        for name in ("udp", "tcp"):
            if not getattr(self, name):
                raise Invalid(name, "needs at least one address (set enabled: false to turn DNS off)")
        families: set[int] = set()
        for item in self.vip_ranges:
            version = ipaddress.ip_network(item).version
            if version in families:
                raise Invalid("vip_ranges", f"more than one IPv{version} range")
            families.add(version)


def split_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """'1.2.3.4:53', '[::1]:53', '::1' or '1.2.3.4' as (host, port); raise ValueError."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r} has no closing ]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not in 0..65535")
    return host, port
