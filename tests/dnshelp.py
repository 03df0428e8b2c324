"""Shared helpers for the DNS tests: mesh views, queries and a small upstream server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from federation.core.records import (
    Endpoint,
    EndpointPort,
    Locality,
    Protocol,
    ServiceExport,
    ServicePort,
    ServiceType,
    Site,
)
from federation.core.view import MeshView

ZONE = "clusterset.local"


def site(name: str, region: str = "eu", zone: str = "a", kind: str = "vm") -> Site:
    """A site record on its own network."""
    return Site(name=name, network=f"net-{name}", locality=Locality(region, zone), kind=kind)


def export(
    site_name: str,
    ns: str,
    name: str,
    addresses: Iterable[str] = (),
    *,
    headless: bool = False,
    ports: Sequence[ServicePort] = (ServicePort("http", 80),),
    hostnames: Sequence[str | None] | None = None,
    ready: bool = True,
    exported_at: float = 1.0,
) -> ServiceExport:
    """One site's export with one endpoint per address."""
    addrs = list(addresses)
    names = list(hostnames) if hostnames is not None else [None] * len(addrs)
    eps = tuple(
        Endpoint(addresses=(a,), ports=(EndpointPort(ports[0].name, 8080),) if ports else (),
                 ready=ready, hostname=h)
        for a, h in zip(addrs, names, strict=True)
    )
    return ServiceExport(
        site=site_name, namespace=ns, name=name, ports=tuple(ports),
        type=ServiceType.HEADLESS if headless else ServiceType.CLUSTER_SET_IP,
        endpoints=eps, exported_at=exported_at,
    )


def view(sites: Iterable[Site], exports: Iterable[ServiceExport], revision: int = 1) -> MeshView:
    """A MeshView built directly from records."""
    return MeshView(
        sites={s.name: s for s in sites},
        exports={(e.site, e.namespace, e.name): e for e in exports},
        revision=revision,
    )


def big_view(n: int, seed: int = 1) -> tuple[MeshView, dict[tuple[str, str], tuple[str, ...]]]:
    """`n` services across three sites, a third headless, with VIPs for the ClusterSetIP ones."""
    rng = random.Random(seed)
    sites = [site("east", "us", "a"), site("west", "us", "b"), site("far", "ap", "a")]
    exports = []
    vips: dict[tuple[str, str], tuple[str, ...]] = {}
    for i in range(n):
        ns, name = f"ns{i % 17}", f"svc{i}"
        headless = i % 3 == 0
        for s in rng.sample(sites, rng.randint(1, 3)):
            addrs = [f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
                     for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.3:
                addrs.append(f"fd00::{rng.randint(1, 65535):x}")
            ports = [ServicePort("http", 80), ServicePort("dns", 53, Protocol.UDP)][: rng.randint(1, 2)]
            exports.append(export(s.name, ns, name, sorted(set(addrs)), headless=headless, ports=ports))
        if not headless:
            vips[(ns, name)] = (f"240.240.{i // 250}.{i % 250 + 1}", f"fd6d:6573:6866:6564::{i + 1:x}")
    return view(sites, exports), vips


def query(name: str, rdtype: str = "A", *, edns: int = -1, payload: int = 1232, rd: bool = True) -> bytes:
    """A query's wire form."""
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


def rcode(wire: bytes) -> int:
    """The rcode of a response."""
    return dns.message.from_wire(wire).rcode()


def addresses(wire: bytes) -> list[str]:
    """The A/AAAA addresses in a response's answer section, in order."""
    msg = dns.message.from_wire(wire)
    return [rd.to_text() for rrset in msg.answer
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rd in rrset]


class Upstream(asyncio.DatagramProtocol):
    """A tiny upstream resolver on 127.0.0.1: answers every A query with 192.0.2.1, or stays silent."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.seen: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass on 3.11

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = dns.message.from_wire(data)
        self.seen.append(q.question[0].name.to_text())
        if self.silent or self.transport is None:
            return
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1"))
        self.transport.sendto(r.to_wire(), addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


async def start_upstream(silent: bool = False) -> Upstream:
    """An `Upstream` bound to 127.0.0.1 port 0; close its `.transport` when done."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: Upstream(silent), local_addr=("127.0.0.1", 0))
    return proto


