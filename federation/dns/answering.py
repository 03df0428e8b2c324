"""The pure DNS answering core: MCS names from a mesh snapshot; query bytes in, response bytes out.

Nothing here does IO or logs. `ZoneBuilder.build(view, stale_sites, vips)` turns a `MeshView` into an
immutable `Zone`; `Answerer.handle(wire, zone, udp=...)` answers one query from it with dnspython, or
says the query should go upstream (`Forward`), or that it must be dropped (`None`).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
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

from federation.catalog import FederatedService, MeshView, resolve
from federation.model import Endpoint, ServiceExport, ServiceType, Site

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
_ANSWER_FLAGS = dns.flags.RD | dns.flags.CD
"""Query flags a response copies (RFC 1035 RD; RFC 4035 3.2.2 CD)."""
_ZONE_TRANSFERS = (dns.rdatatype.AXFR, dns.rdatatype.IXFR)


class VipSource(Protocol):
    """Where the A/AAAA answer of a ClusterSetIP service comes from on this site's kind."""

    def addresses(self, namespace: str, name: str) -> tuple[str, ...]:
        """The addresses that route to `namespace/name` from this site (none yet: NODATA)."""
        ...


@dataclass(frozen=True, slots=True)
class StaticVips:
    """A VIP source from a fixed table (tests; the Kubernetes source's ClusterIPs)."""

    table: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def addresses(self, namespace: str, name: str) -> tuple[str, ...]:
        """The table's entry, or nothing."""
        return self.table.get((namespace, name), ())


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


_EMPTY = Node()


@dataclass(frozen=True, slots=True)
class Zone:
    """An immutable snapshot of every name this server answers for."""

    origin: dns.name.Name
    ttl: int
    serial: int
    nodes: Mapping[Labels, Node]
    parts: Mapping[tuple[str, str], Mapping[Labels, Node]]
    """Per-service nodes; the same object across builds while the service is unchanged."""

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


@dataclass(frozen=True, slots=True)
class Forward:
    """Not ours: send `wire` (already parsed as `query`) to an upstream resolver."""

    query: dns.message.Message
    wire: bytes


# ---------------------------------------------------------------- building a zone


class _Part(NamedTuple):
    """One service's share of the zone, and what it was built from."""

    fingerprint: object
    nodes: Mapping[Labels, Node]
    ents: tuple[Labels, ...]


class ZoneBuilder:
    """Builds `Zone`s from mesh views, rebuilding only the services that changed.

    The catalog keeps unchanged records as the same objects from view to view, so a service whose
    exports, site records, staleness and VIPs are all the same objects as last time is not touched:
    one registry change costs one service's rebuild plus a copy of the name table.
    """

    def __init__(self, zone: str, *, local_site: str, ttl: int = 5, site_pinning: bool = True) -> None:
        self.origin = dns.name.from_text(zone).canonicalize()
        self.apex = labels_of(self.origin)
        self.local_site = local_site
        self.ttl = ttl
        self.site_pinning = site_pinning
        self._parts: dict[tuple[str, str], _Part] = {}
        self._nodes: dict[Labels, Node] = {
            self.apex: Node(soa=True),
            (b"dns-version", *self.apex): Node(txt=(DNS_VERSION.encode(),)),
        }
        self._ent_refs: dict[Labels, int] = {}

    def build(self, view: MeshView, stale_sites: frozenset[str], vips: VipSource) -> Zone:
        """The zone for `view`; `stale_sites` are left out wherever another site has ready endpoints."""
        local = view.sites.get(self.local_site)
        groups: dict[tuple[str, str], list[ServiceExport]] = {}
        for export in view.exports.values():
            if export.site in view.sites:
                groups.setdefault(export.service, []).append(export)
        parts: dict[tuple[str, str], _Part] = {}
        for key, group in groups.items():
            exports = tuple(group)
            stale = stale_sites.intersection(e.site for e in exports) if stale_sites else stale_sites
            if stale and not _staleness_matters(exports, stale):
                stale = frozenset()
            addrs = vips.addresses(*key)
            fingerprint = (exports, tuple(view.sites.get(e.site) for e in exports), stale, addrs, local)
            old = self._parts.get(key)
            if old is not None and old.fingerprint == fingerprint:
                parts[key] = old
                continue
            svc = resolve(exports)
            if svc.type is not ServiceType.CLUSTER_SET_IP:
                addrs = ()
            nodes = self._service(svc, view.sites, stale_sites, addrs, local)
            new = _Part(fingerprint, nodes, self._ents(nodes))
            if old is not None:
                self._remove(old)
            self._add(new)
            parts[key] = new
        for key in self._parts.keys() - parts.keys():
            self._remove(self._parts[key])
        self._parts = parts
        return Zone(self.origin, self.ttl, view.revision % 2**32, dict(self._nodes),
                    {key: part.nodes for key, part in parts.items()})

    def _add(self, part: _Part) -> None:
        self._nodes.update(part.nodes)
        for name in part.ents:
            self._ent_refs[name] = self._ent_refs.get(name, 0) + 1
            self._nodes.setdefault(name, _EMPTY)  # an empty non-terminal: NODATA, never NXDOMAIN

    def _remove(self, part: _Part) -> None:
        for name in part.nodes:
            if self._ent_refs.get(name):
                self._nodes[name] = _EMPTY
            else:
                self._nodes.pop(name, None)
        for name in part.ents:
            refs = self._ent_refs[name] - 1
            if refs:
                self._ent_refs[name] = refs
            else:
                del self._ent_refs[name]
                if self._nodes.get(name) is _EMPTY:
                    del self._nodes[name]

    # -- private

    def _name(self, *labels: str) -> Labels:
        return (*(lbl.encode() for lbl in labels), *self.apex)

    def _ents(self, part: Mapping[Labels, Node]) -> tuple[Labels, ...]:
        out: set[Labels] = set()
        depth = len(self.apex)
        for name in part:
            if name[-depth:] != self.apex:
                continue
            for i in range(1, len(name) - depth):
                parent = name[i:]
                if parent not in part:
                    out.add(parent)
        return tuple(out)

    def _service(
        self,
        svc: FederatedService,
        sites: Mapping[str, Site],
        stale: frozenset[str],
        vips: tuple[str, ...],
        local: Site | None,
    ) -> Mapping[Labels, Node]:
        ns, name = svc.namespace, svc.name
        base = self._name(name, ns, "svc")
        nodes: dict[Labels, Node] = {}
        if svc.type is ServiceType.CLUSTER_SET_IP:
            a, aaaa = _pack(vips)
            nodes[base] = Node(a=a, aaaa=aaaa)
            for vip in vips:
                nodes[reverse_labels(_packed(vip))] = Node(ptr=base)
            for port in svc.ports:
                srv_name = (f"_{port.name}".encode(), f"_{port.protocol.value.lower()}".encode(), *base)
                nodes[srv_name] = Node(srv=((0, 0, port.port, base),), glue=(base,))
        else:
            targets: list[tuple[Endpoint, Labels]] = []
            all_addrs: list[str] = []
            for export, ep in self._order(svc.exports, sites, stale, local):
                host = self._name(_hostname(ep), export.site, name, ns, "svc")
                a, aaaa = _pack(ep.addresses)
                nodes[host] = Node(a=a, aaaa=aaaa)
                targets.append((ep, host))
                all_addrs.extend(ep.addresses)
            a, aaaa = _pack(all_addrs)
            nodes[base] = Node(a=a, aaaa=aaaa)
            for port in svc.ports:
                srv_name = (f"_{port.name}".encode(), f"_{port.protocol.value.lower()}".encode(), *base)
                srv = tuple((0, ep.weight, ep.port_for(port), host) for ep, host in targets)
                nodes[srv_name] = Node(srv=srv, glue=tuple(host for _, host in targets))
        if self.site_pinning:
            for export in svc.exports:
                eps = self._order([export], sites, frozenset(), local)
                a, aaaa = _pack([addr for _, ep in eps for addr in ep.addresses])
                nodes[self._name(export.site, name, ns, "svc")] = Node(a=a, aaaa=aaaa)
        return nodes

    def _order(
        self,
        exports: Iterable[ServiceExport],
        sites: Mapping[str, Site],
        stale: frozenset[str],
        local: Site | None,
    ) -> list[tuple[ServiceExport, Endpoint]]:
        """Ready endpoints: the local site's first, then nearest locality; stale sites only as a last resort."""
        ready = [(e, ep) for e in exports for ep in e.endpoints if ep.ready]
        fresh = [(e, ep) for e, ep in ready if e.site not in stale]
        chosen = fresh or ready
        here = local.locality if local is not None else None

        def rank(item: tuple[ServiceExport, Endpoint]) -> tuple[int, int, str]:
            export, ep = item
            if export.site == self.local_site:
                return (0, 0, "")
            site = sites.get(export.site)
            loc = ep.locality if ep.locality.region else (site.locality if site else ep.locality)
            near = 3
            if here is not None and here.region and loc.region == here.region:
                near = 1 if here.zone and loc.zone == here.zone else 2
            return (1, near, export.site)

        return sorted(chosen, key=rank)


def _rd(cls: Any, *args: Any) -> dns.rdata.Rdata:
    rdata: dns.rdata.Rdata = cls(*args)
    return rdata


def _rrset(name: dns.name.Name, ttl: int, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, ttl, list(rdatas))


def _pack(addresses: Iterable[str]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """IPv4 and IPv6 addresses packed, duplicates dropped, order kept."""
    v4: dict[bytes, None] = {}
    v6: dict[bytes, None] = {}
    for a in addresses:
        packed = _packed(a)
        (v4 if len(packed) == 4 else v6)[packed] = None
    return tuple(v4), tuple(v6)


def _staleness_matters(exports: tuple[ServiceExport, ...], stale: frozenset[str]) -> bool:
    """False when leaving stale sites out changes nothing: a VIP answer, or no fresh ready endpoint."""
    if all(e.type is ServiceType.CLUSTER_SET_IP for e in exports):
        return False
    return any(ep.ready for e in exports if e.site not in stale for ep in e.endpoints)


def _packed(address: str) -> bytes:
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


def _hostname(ep: Endpoint) -> str:
    """The endpoint's hostname, else its first address with dashes (as CoreDNS names unnamed endpoints)."""
    if ep.hostname:
        return ep.hostname
    return ep.addresses[0].replace(".", "-").replace(":", "-")


# ---------------------------------------------------------------- answering


class Answerer:
    """Answers queries from a `Zone` with dnspython; the reference the fast path must match byte for byte."""

    def __init__(self, origin: dns.name.Name, *, forwarding: bool = True, max_udp: int = 1232) -> None:
        self.origin = origin
        self.forwarding = forwarding
        self.max_udp = max_udp

    def handle(self, wire: bytes, zone: Zone | None, *, udp: bool) -> bytes | Forward | None:
        """The response to `wire`, a `Forward`, or None to drop it (short header, or not a query)."""
        if len(wire) < 12 or wire[2] & 0x80:
            return None
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None
        except Exception:  # any decode failure of remote bytes: FORMERR (RFC 1035 4.1.1)
            return header_only(wire, dns.rcode.FORMERR)
        resp = dns.message.Message(id=query.id)
        resp.flags = dns.flags.QR | (query.flags & _ANSWER_FLAGS)
        resp.set_opcode(query.opcode())
        if query.edns >= 0:
            resp.use_edns(0, query.ednsflags & dns.flags.DO, self.max_udp)
        if query.opcode() != dns.opcode.QUERY:
            resp.set_rcode(dns.rcode.NOTIMP)
            return self._render(resp, query, udp)
        if query.edns > 0:
            resp.set_rcode(dns.rcode.BADVERS)  # RFC 6891 6.1.3
            return self._render(resp, query, udp)
        if len(query.question) != 1 or query.answer or query.authority:
            resp.set_rcode(dns.rcode.FORMERR)
            return self._render(resp, query, udp)
        q = query.question[0]
        resp.question = [q]
        in_zone = q.name.is_subdomain(self.origin)
        key = labels_of(q.name)
        node = zone.nodes.get(key) if zone is not None else None
        if not in_zone and node is None:
            if q.rdtype not in _ZONE_TRANSFERS and self.forwarding:
                return Forward(query, wire)
            resp.set_rcode(dns.rcode.REFUSED)
            return self._render(resp, query, udp)
        if zone is None:
            resp.set_rcode(dns.rcode.SERVFAIL)  # nothing authoritative before the initial sync
            return self._render(resp, query, udp)
        if q.rdclass != IN or q.rdtype in _ZONE_TRANSFERS:
            resp.set_rcode(dns.rcode.REFUSED)
            return self._render(resp, query, udp)
        resp.flags |= dns.flags.AA
        fill(resp, zone, key, q.rdtype, node)
        return self._render(resp, query, udp)

    def servfail(self, wire: bytes) -> bytes | None:
        """A SERVFAIL for `wire` after an internal error, echoing its question when it parses."""
        if len(wire) < 12:
            return None
        try:
            query = dns.message.from_wire(wire)
            resp = dns.message.make_response(query, our_payload=self.max_udp)
            resp.set_rcode(dns.rcode.SERVFAIL)
            return resp.to_wire(max_size=512)
        except Exception:
            return header_only(wire, dns.rcode.SERVFAIL)

    def udp_limit(self, query: dns.message.Message) -> int:
        """How big a UDP response may be: 512, or the client's EDNS size capped by ours (RFC 6891 6.2.5)."""
        if query.edns < 0:
            return 512
        return max(512, min(query.payload, self.max_udp))

    def _render(self, resp: dns.message.Message, query: dns.message.Message, udp: bool) -> bytes:
        limit = self.udp_limit(query) if udp else 65535
        # Truncation inside the answer sets TC so the client retries over TCP; dropped glue does not.
        return resp.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)  # order is the answer


def fill(resp: dns.message.Message, zone: Zone, qname: Labels, rdtype: int, node: Node | None) -> None:
    """Put the authoritative answer for (qname, rdtype) into `resp`: data, NODATA or NXDOMAIN."""
    if node is None:
        resp.set_rcode(dns.rcode.NXDOMAIN)
        resp.authority.append(zone.soa())  # RFC 2308 3: the SOA makes the negative answer cacheable
        return
    if rdtype == dns.rdatatype.ANY:
        # RFC 8482 4.2: answer ANY with one RRset of the name rather than all of them.
        types = node.types()
        rdtype = types[0] if types else 0
    rrset = zone.rrset(qname, node, rdtype) if rdtype else None
    if rrset is None:
        if qname[-len(zone.origin_labels):] == zone.origin_labels:
            resp.authority.append(zone.soa())
        return
    resp.answer.append(rrset)
    if rdtype == SRV:
        for target in node.glue:
            glue = zone.nodes.get(target)
            if glue is None:
                continue
            for t in (A, AAAA):
                rr = zone.rrset(target, glue, t)
                if rr is not None:
                    resp.additional.append(rr)


def header_only(wire: bytes, rcode: int) -> bytes:
    """A response of just a header echoing the id, opcode and RD of `wire` (at least 12 bytes)."""
    (qid, flags) = struct.unpack_from("!HH", wire)
    out_flags = dns.flags.QR | (flags & (0x7800 | dns.flags.RD)) | (rcode & 0xF)
    return struct.pack("!HHHHHH", qid, out_flags, 0, 0, 0, 0)

