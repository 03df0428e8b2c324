"""The federated zone as plain data: names, the records each owns, and dnspython views of them. Pure."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
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
A, AAAA, SRV, PTR, TXT, SOA = (
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.SRV,
    dns.rdatatype.PTR,
    dns.rdatatype.TXT,
    dns.rdatatype.SOA,
)

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
    glue: tuple[Labels, ...] = ()
    """Names whose A/AAAA records go into the additional section of an SRV answer."""

    def types(self) -> tuple[int, ...]:
        """The record types this name has, lowest type number first (RFC 8482 picks the first)."""
        out = [
            t for t, present in (
                (A, self.a), (SOA, self.soa), (PTR, self.ptr is not None), (TXT, self.txt),
                (AAAA, self.aaaa), (SRV, self.srv),
            ) if present
        ]
        return tuple(out)


EMPTY = Node()
"""An empty non-terminal: a name with nothing of its own below which others exist (NODATA, never NXDOMAIN)."""


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

    @property
    def origin_labels(self) -> Labels:
        """The zone apex as labels."""
        return labels_of(self.origin)

    def soa(self) -> dns.rrset.RRset:
        """The SOA RRset of the apex; its minimum is the TTL, so negative answers live as long as positive."""
        rdata = _rd(
            dns.rdtypes.ANY.SOA.SOA, IN, SOA, self.origin, dns.name.Name([b"hostmaster", *self.origin.labels]),
            self.serial, 60, 10, 3600, self.ttl,
        )
        return _rrset(self.origin, self.ttl, [rdata])

    def rrset(self, labels: Labels, node: Node, rdtype: int) -> dns.rrset.RRset | None:
        """The RRset of `rdtype` at `labels` as dnspython objects, or None."""
        name = name_of(labels)
        rds: list[dns.rdata.Rdata]
        if rdtype == A:
            rds = [_rd(dns.rdtypes.IN.A.A, IN, A, socket.inet_ntop(socket.AF_INET, a)) for a in node.a]
        elif rdtype == AAAA:
            rds = [_rd(dns.rdtypes.IN.AAAA.AAAA, IN, AAAA, socket.inet_ntop(socket.AF_INET6, a)) for a in node.aaaa]
        elif rdtype == SRV:
            rds = [_rd(dns.rdtypes.IN.SRV.SRV, IN, SRV, p, w, port, name_of(t)) for p, w, port, t in node.srv]
        elif rdtype == PTR:
            rds = [_rd(dns.rdtypes.ANY.PTR.PTR, IN, PTR, name_of(node.ptr))] if node.ptr is not None else []
        elif rdtype == TXT:
            rds = [_rd(dns.rdtypes.ANY.TXT.TXT, IN, TXT, list(node.txt))] if node.txt else []
        elif rdtype == SOA:
            return self.soa() if node.soa else None
        else:
            return None
        return _rrset(name, self.ttl, rds) if rds else None


def labels_of(name: dns.name.Name) -> Labels:
    """`name` as lower-case labels without the root label."""
    return tuple(lbl.lower() for lbl in name.labels if lbl)


def name_of(labels: Labels) -> dns.name.Name:
    """The absolute dnspython name of `labels`."""
    return dns.name.Name([*labels, b""])


# ---------------------------------------------------------------- building a zone


def _rd(cls: Any, *args: Any) -> dns.rdata.Rdata:
    rdata: dns.rdata.Rdata = cls(*args)
    return rdata


def _rrset(name: dns.name.Name, ttl: int, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, ttl, list(rdatas))
