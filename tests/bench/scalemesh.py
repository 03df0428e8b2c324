"""The simulated mesh of the scale benchmark (issue 11), as pure functions of the site count and a seed.

Realistic sameness: each site exports 100 services with 10 endpoints; the services are drawn from
min(5000, 50 x sites) distinct ones (so each is exported by about 2 sites at 10 or 100 sites and by about
20 at 1,000); 50 networks; 5 regions of 3 zones; a fifth of the services headless (StatefulSet-like
endpoints with hostnames), a third with a second port. Every service is exported by at least one site:
site i's first 50 exports are the block (50 i .. 50 i + 49) mod S, the other 50 are drawn at random.
The loader, the observer's checks and the benchmark table all use these functions, so they agree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from federation.core.records import (
    Endpoint,
    EndpointPort,
    Gateway,
    Locality,
    ServiceExport,
    ServicePort,
    ServiceType,
    Site,
)

OBSERVER = "observer"
"""The site of the one real agent."""
OBSERVER_NETWORK = "net-00"
"""The observer shares its network with 1 site in 50: most traffic goes through gateways."""
TUNNEL_SITE = "tunnel"
"""The site whose gateway is a real east-west gateway process (tunnel RTT)."""
TUNNEL_SERVICE = ("bench", "echo")
CHANGE_FIRST_OCTET = 128
"""Addresses written by changes have a second octet of 128 or more; bulk-loaded ones stay below 16."""
EXPORTED_AT = 1_767_225_600.0
"""A fixed export time (2026-01-01), so runs are identical; site i exported i seconds later."""


@dataclass(frozen=True, slots=True)
class Shape:
    """How big the simulated mesh is."""

    sites: int
    services_per_site: int = 100
    endpoints: int = 10
    networks: int = 50
    seed: int = 11

    @property
    def services(self) -> int:
        """Distinct services in the mesh: 50 per site, at most 5,000."""
        return min(5000, 50 * self.sites)


def site_name(i: int) -> str:
    return f"site-{i:04d}"


def site_index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def service_id(k: int) -> tuple[str, str]:
    """(namespace, name) of service k: 100 namespaces ("teams") of 50 services."""
    return f"team{k % 100:02d}", f"svc{k:04d}"


def is_headless(k: int) -> bool:
    return k % 5 == 0


def service_ports(k: int) -> tuple[ServicePort, ...]:
    if k % 3 == 0:
        return (ServicePort("http", 80), ServicePort("grpc", 9090))
    return (ServicePort("http", 80),)


def locality(i: int) -> Locality:
    return Locality(f"region-{(i // 7) % 5}", f"zone-{'abc'[i % 3]}")


def site_services(shape: Shape, i: int) -> list[int]:
    """The services site i exports, in the order of its records (deterministic)."""
    s = shape.services
    block = list(dict.fromkeys((50 * i + j) % s for j in range(min(50, shape.services_per_site))))
    chosen = set(block)
    rng = random.Random(shape.seed * 1_000_003 + i)
    extra: list[int] = []
    while len(block) + len(extra) < min(shape.services_per_site, s):
        k = rng.randrange(s)
        if k not in chosen:
            chosen.add(k)
            extra.append(k)
    return block + extra


def network_of(shape: Shape, i: int) -> str:
    """The network of simulated site `i`."""
    return f"net-{i % shape.networks:02d}"


def same_network_as_observer(shape: Shape, i: int) -> bool:
    """True if site `i` shares the observer's network (its endpoints are answered at their own addresses)."""
    return network_of(shape, i) == OBSERVER_NETWORK


def site_record(shape: Shape, i: int, gateway: Gateway | None, ca_chain: str) -> Site:
    return Site(
        name=site_name(i), network=network_of(shape, i), locality=locality(i),
        kind="vm" if i % 3 == 0 else "kubernetes", gateways=(gateway,) if gateway else (),
        ca_chain=ca_chain, agent_version="0.1.0",
    )  # fmt: skip


def address(index: int) -> str:
    """A bulk-loaded endpoint address (index < 2**20)."""
    return f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}"


def change_address(change: int) -> str:
    """The address written by change number `change` (< 2**19): unique, so every observer can tell it."""
    return f"10.{CHANGE_FIRST_OCTET + (change >> 16)}.{(change >> 8) & 255}.{change & 255}"


def change_of(addr: str) -> int | None:
    """The change number an address was written by, or None for a bulk-loaded one."""
    parts = addr.split(".")
    if len(parts) != 4 or int(parts[1]) < CHANGE_FIRST_OCTET:
        return None
    return ((int(parts[1]) - CHANGE_FIRST_OCTET) << 16) | (int(parts[2]) << 8) | int(parts[3])


def export(shape: Shape, i: int, position: int, k: int) -> ServiceExport:
    """Site i's export of service k, the `position`-th of its records."""
    ns, name = service_id(k)
    headless = is_headless(k)
    ports = service_ports(k)
    loc = locality(i)
    endpoints = tuple(
        Endpoint(
            addresses=(address((i * shape.services_per_site + position) * shape.endpoints + e),),
            ports=tuple(EndpointPort(p.name, p.port + 8000) for p in ports),
            # Headless endpoints are always ready (changes must show in DNS); others: one in 20 is not.
            ready=headless or (i + position + e) % 20 != 0,
            hostname=f"{name}-{e}" if headless else None,
            locality=loc,
        )
        for e in range(shape.endpoints)
    )
    return ServiceExport(
        site=site_name(i), namespace=ns, name=name, ports=ports,
        type=ServiceType.HEADLESS if headless else ServiceType.CLUSTER_SET_IP,
        endpoints=endpoints, exported_at=EXPORTED_AT + i,
    )  # fmt: skip


def dns_name(ns: str, name: str, zone: str = "clusterset.local") -> str:
    return f"{name}.{ns}.svc.{zone}."


def host_name(host: str, site: str, ns: str, name: str, zone: str = "clusterset.local") -> str:
    """One headless endpoint's MCS name (KEP-1645 `<hostname>.<clusterid>.<svc>.<ns>.svc.<zone>`): one address."""
    return f"{host}.{site}.{name}.{ns}.svc.{zone}."
