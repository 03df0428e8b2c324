"""Which workload is behind a source address of this site: its `ns/sa`. Pure index.

A Kubernetes site fills it from the pods it watches (the pod with that IP and its service account:
`federation.sources.kubernetes.workloads`), a VM site from its config (`vm.workload_identity` for the VM's
own clients, `vm.workload_identities` for LAN clients by network). An address no one claims, or that
several pods share (host network), names no workload: unknown, which never widens access. The egress puts
the workload in the stream's preamble; the receiving gateway takes it in the scope of this site only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WORKLOAD = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/"
                      r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z",
                      re.ASCII)
"""`ns/sa`: a namespace (DNS label) and a service account name (a DNS subdomain, as Kubernetes has it)."""
MAX_WORKLOAD = 255
"""What the preamble carries (one length byte); a longer `ns/sa` is not named (unknown)."""


def is_workload(value: str) -> bool:
    """Whether `value` is an `ns/sa` the preamble can carry."""
    return len(value) <= MAX_WORKLOAD and WORKLOAD.match(value) is not None


@dataclass(frozen=True, slots=True)
class Workloads:
    """Source address -> the workload (`ns/sa`) behind it, as this site knows it."""

    addresses: Mapping[str, str] = field(default_factory=dict)
    """Exact addresses (a pod's IPs), in their canonical text form."""
    networks: tuple[tuple[Network, str], ...] = ()
    """Address ranges (a VM's config), the longest prefix first."""

    def lookup(self, address: str) -> str | None:
        """The workload behind `address`, or None where this site does not know it."""
        hit = self.addresses.get(address)
        if hit is not None or not (self.networks or "%" in address or address.startswith("::ffff:")):
            return hit
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # a dual-stack listener
            ip = ip.ipv4_mapped
        hit = self.addresses.get(str(ip))
        if hit is not None:
            return hit
        for network, workload in self.networks:
            if ip.version == network.version and ip in network:
                return workload
        return None


def by_network(networks: Mapping[str, str]) -> tuple[tuple[Network, str], ...]:
    """(network, workload) pairs from `{"10.0.0.0/8": "ns/sa"}`, the longest prefix first."""
    pairs = [(ipaddress.ip_network(n, strict=False), w) for n, w in networks.items()]
    return tuple(sorted(pairs, key=lambda p: (-p[0].prefixlen, p[0].version, str(p[0]))))
