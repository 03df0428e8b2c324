"""Settings of the federated DNS server (the agent config's `dns:` section)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dns.name

from federation.core.errors import ConfigError
from federation.core.settings import parse_section


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """How and where the agent answers federated DNS names."""

    enabled: bool = True
    """Every site needs the names; turning DNS off is for sites that run their own resolver plugin."""
    udp: tuple[str, ...] = ("127.0.0.1:53",)
    """Loopback only until the operator chooses: a resolver open to the network is an amplifier."""
    tcp: tuple[str, ...] = ("127.0.0.1:53",)
    """TCP next to UDP, because answers over 512 bytes fall back to TCP (RFC 7766)."""
    zone: str = "clusterset.local"
    """The zone the Kubernetes MCS specification (KEP-1645) names."""
    ttl: int = 5
    """Short, as in the MCS spec: endpoints move, and clients must see it within seconds."""
    upstreams: tuple[str, ...] = ()
    """Empty means the nameservers of /etc/resolv.conf, so the agent can be a VM's only resolver."""
    forwarding: bool = True
    """On, so pointing a host at the agent keeps every other name working."""
    forward_timeout: float = 2.0
    """Below the usual 5 s client timeout, so a dead upstream gives SERVFAIL before the client gives up."""
    site_pinning: bool = False
    """Off: KEP-1645 says `<site>.<svc>.<ns>.svc.<zone>` must not exist; on, they answer reachable sites only."""
    nameserver_addresses: tuple[str, ...] = ()
    """The glue of the zone's NS record; empty: the listen addresses minus wildcards (behind a Service, its IP)."""
    vip_ranges: tuple[str, ...] = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")
    """Class E space and a ULA (RFC 4193) prefix that no site network routes; one IPv4 and one IPv6 range."""
    vip_grace: float = 600.0
    """Ten minutes: a site that restarts or briefly unexports keeps its clients' cached VIP."""
    workers: int = 1
    """UDP sockets sharing the port with SO_REUSEPORT; one event loop gains little from more."""
    max_udp_payload: int = 1232
    """The DNS Flag Day 2020 EDNS buffer size: avoids IP fragmentation on every common path."""


def parse_dns_settings(data: Mapping[str, Any], where: str) -> DnsSettings:
    """Validate the `dns:` section; raise ConfigError(f"{where}.{field}: reason")."""
    return parse_section(DnsSettings, data, where, _field)


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


def _field(key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        return value
    if key in ("ttl", "workers", "max_udp_payload"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: must be an integer")
        lo, hi = {"ttl": (0, 86400), "workers": (1, 64), "max_udp_payload": (512, 4096)}[key]
        if not lo <= value <= hi:
            raise ConfigError(f"{where}: {value} is not in {lo}..{hi}")
        return value
    if key in ("forward_timeout", "vip_grace"):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}: must be a positive number of seconds")
        return float(value)
    if key == "zone":
        if not isinstance(value, str) or not value.strip("."):
            raise ConfigError(f"{where}: must be a non-empty DNS name")
        try:
            dns.name.from_text(value)
        except Exception as exc:
            raise ConfigError(f"{where}: {value!r} is not a DNS name ({exc})") from None
        return value.strip(".").lower()
    items = _strings(value, where)
    if key in ("udp", "tcp", "upstreams"):
        for item in items:
            try:
                split_hostport(item)
            except ValueError as exc:
                raise ConfigError(f"{where}: {item!r} is not IP[:port] ({exc})") from None
        if key != "upstreams" and not items:
            raise ConfigError(f"{where}: needs at least one address (set enabled: false to turn DNS off)")
        return items
    if key == "vip_ranges":
        families = set()
        for item in items:
            try:
                net = ipaddress.ip_network(item)
            except ValueError as exc:
                raise ConfigError(f"{where}: {item!r} is not a network ({exc})") from None
            if net.num_addresses < 4:
                raise ConfigError(f"{where}: {item!r} is too small")
            if net.version in families:
                raise ConfigError(f"{where}: more than one IPv{net.version} range")
            families.add(net.version)
        return items
    raise ConfigError(f"{where}: unknown field")  # pragma: no cover


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of strings")
    return tuple(value)
