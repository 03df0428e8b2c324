"""The zone's data: per-name `Node`s, the immutable `Zone`, and their dnspython rendering. Pure.

Both answer paths (answering.py with dnspython, fastpath.py on the wire) read these; zone.py builds them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

DNS_VERSION = "1.0.0"
"""The MCS DNS specification version this server implements (KEP-1645 `dns-version` TXT record)."""

IN = dns.rdataclass.IN
A, AAAA, SRV, PTR, TXT, SOA, NS = (
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.SRV,
    dns.rdatatype.PTR,
    dns.rdatatype.TXT,
    dns.rdatatype.SOA,
    dns.rdatatype.NS,
)
NAMESERVER_LABEL = "ns"
"""The zone's nameserver is `ns.<zone>`: a label no MCS name uses (those are all under `svc.<zone>`)."""

Labels = tuple[bytes, ...]
"""An absolute name as its lower-case labels, the root label left out."""


@dataclass(frozen=True, slots=True)
class Node:
    """Everything owned by one name, as plain data both answer paths encode."""

    a: tuple[bytes, ...] = ()
    """Packed IPv4 addresses, in answer order."""
    aaaa: tuple[bytes, ...] = ()
    """Packed IPv6 addresses, in answer order."""
    srv: tuple[tuple[int, int, int, Labels], ...] = ()
    """(priority, weight, port, target) records."""
    ptr: Labels | None = None
    txt: tuple[bytes, ...] = ()
    soa: bool = False
    ns: tuple[Labels, ...] = ()
    """Nameserver names (the zone apex only)."""
    glue: tuple[Labels, ...] = ()
    """Names whose A/AAAA records go into the additional section of an SRV or NS answer."""

    def types(self) -> tuple[int, ...]:
        """The record types this name has, lowest type number first (RFC 8482 picks the first)."""
        out = [
            t for t, present in (
                (A, self.a), (NS, self.ns), (SOA, self.soa), (PTR, self.ptr is not None), (TXT, self.txt),
                (AAAA, self.aaaa), (SRV, self.srv),
            ) if present
        ]
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Zone:
    """Every name this server answers for: read-only views of the builder's tables, which the next build
    updates in place (a build touches only what changed; answering reads the latest)."""

    origin: dns.name.Name
    ttl: int
    serial: int
    nodes: Mapping[Labels, Node]
    parts: Mapping[tuple[str, str], Mapping[Labels, Node]]
    """Per-service nodes; the same object across builds while the service is unchanged."""
    changed: frozenset[tuple[str, str]] | None = None
    """The services this build looked at (None: every one); the fast path re-encodes only these."""
    moved: frozenset[tuple[str, str]] = frozenset()
    """Services a name two services hold moved to or from: their answers change though their parts did not."""
    owners: Mapping[Labels, tuple[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    """Name -> the service whose part answers for it (names of no service: apex, nameserver, version)."""

    @property
    def origin_labels(self) -> Labels:
        """The zone apex as labels."""
        return labels_of(self.origin)

    def soa(self) -> dns.rrset.RRset:
        """The SOA RRset of the apex; its minimum is the TTL, so negative answers live as long as positive.

        MNAME is the zone's nameserver (RFC 1035 3.3.13), the one NS record; refresh, retry and expire
        are within the ranges zone checkers expect (RFC 1912 2.2), though no secondary ever transfers.
        """
        rdata = rd(
            dns.rdtypes.ANY.SOA.SOA, IN, SOA, name_of((NAMESERVER_LABEL.encode(), *labels_of(self.origin))),
            dns.name.Name([b"hostmaster", *self.origin.labels]), self.serial, 14400, 3600, 604800, self.ttl,
        )
        return rrset_of(self.origin, self.ttl, [rdata])

    def rrset(self, labels: Labels, node: Node, rdtype: int) -> dns.rrset.RRset | None:
        """The RRset of `rdtype` at `labels` as dnspython objects, or None."""
        name = name_of(labels)
        rds: list[dns.rdata.Rdata]
        if rdtype == A:
            rds = [rd(dns.rdtypes.IN.A.A, IN, A, socket.inet_ntop(socket.AF_INET, a)) for a in node.a]
        elif rdtype == AAAA:
            rds = [rd(dns.rdtypes.IN.AAAA.AAAA, IN, AAAA, socket.inet_ntop(socket.AF_INET6, a)) for a in node.aaaa]
        elif rdtype == SRV:
            rds = [rd(dns.rdtypes.IN.SRV.SRV, IN, SRV, p, w, port, name_of(t)) for p, w, port, t in node.srv]
        elif rdtype == PTR:
            rds = [rd(dns.rdtypes.ANY.PTR.PTR, IN, PTR, name_of(node.ptr))] if node.ptr is not None else []
        elif rdtype == TXT:
            rds = [rd(dns.rdtypes.ANY.TXT.TXT, IN, TXT, list(node.txt))] if node.txt else []
        elif rdtype == SOA:
            return self.soa() if node.soa else None
        elif rdtype == NS:
            rds = [rd(dns.rdtypes.ANY.NS.NS, IN, NS, name_of(n)) for n in node.ns]
        else:
            return None
        return rrset_of(name, self.ttl, rds) if rds else None


def labels_of(name: dns.name.Name) -> Labels:
    """`name` as lower-case labels without the root label."""
    return tuple(lbl.lower() for lbl in name.labels if lbl)


def name_of(labels: Labels) -> dns.name.Name:
    """The absolute dnspython name of `labels`."""
    return dns.name.Name([*labels, b""])


def rd(cls: Any, *args: Any) -> dns.rdata.Rdata:
    rdata: dns.rdata.Rdata = cls(*args)
    return rdata


def rrset_of(name: dns.name.Name, ttl: int, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, ttl, list(rdatas))


def pack(addresses: Iterable[str]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """IPv4 and IPv6 addresses packed, duplicates dropped, order kept."""
    v4: dict[bytes, None] = {}
    v6: dict[bytes, None] = {}
    for a in addresses:
        raw = packed(a)
        (v4 if len(raw) == 4 else v6)[raw] = None
    return tuple(v4), tuple(v6)


def packed(address: str) -> bytes:
    """An address in network byte order (inet_pton is C; ipaddress parses in Python)."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except OSError:
        return ipaddress.ip_address(address).packed  # e.g. a scoped IPv6 address


def reverse_labels(packed: bytes) -> Labels:
    """The in-addr.arpa or ip6.arpa name of an address (RFC 1035 3.5, RFC 3596 2.5)."""
    if len(packed) == 4:
        return (*(str(b).encode() for b in reversed(packed)), b"in-addr", b"arpa")
    nibbles = packed.hex()[::-1]
    return (*(c.encode() for c in nibbles), b"ip6", b"arpa")
