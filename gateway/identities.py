"""Which workload is behind a client of this site's egress: its source address's `ns/sa`. Pure index.

A Kubernetes site fills it from the pods it watches (the pod with that IP and its service account:
`federation.sources.kubernetes.workloads`), a VM site from its config (`vm.workload_identity` for the VM's
own clients, `vm.workload_identities` for LAN clients by network). An address no one claims, or that
several pods share (host network), names no workload: unknown, which never widens access. The egress puts
the workload in the stream's preamble; the receiving gateway takes it in the scope of this site only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.runtime.values import Readable, Value

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


NO_WORKLOADS: Readable[Workloads] = Value(Workloads(), name="no workload identities")


def client_workload(workloads: Readable[Workloads], client: Any) -> str | None:
    """The workload behind an accepted client leg (its transport's peer address), or None."""
    transport = getattr(client, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    return workloads.get().lookup(str(peer[0])) if peer else None
