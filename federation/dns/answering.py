"""The pure DNS answering core: query bytes in, response bytes out, from a `Zone`.

Nothing here does IO or logs. `Answerer.handle(wire, zone, udp=...)` answers one query with
dnspython, or says it should go upstream (`Forward`), or that it must be dropped (`None`). It is
the reference the wire-level fast path (fastpath.py) must match byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype

from federation.dns.nodes import AAAA, IN, NS, SRV, A, Labels, Node, Zone, labels_of

_ANSWER_FLAGS = dns.flags.RD | dns.flags.CD
"""Query flags a response copies (RFC 1035 RD; RFC 4035 3.2.2 CD)."""
_ZONE_TRANSFERS = (dns.rdatatype.AXFR, dns.rdatatype.IXFR)


@dataclass(frozen=True, slots=True)
class Forward:
    """Not ours: send `wire` (already parsed as `query`) to an upstream resolver."""

    query: dns.message.Message
    wire: bytes


class Answerer:
    """Answers queries from a `Zone` with dnspython; the reference the fast path must match byte for byte."""

    def __init__(self, origin: dns.name.Name, *, forwarding: bool = True, max_udp: int = 1232) -> None:
        self.origin = origin
        self.forwarding = forwarding
        # A server that forwards other names is a recursive resolver to its clients: say so (RA),
        # or dig and some stubs warn that recursion is not available.
        self._ra = dns.flags.RA if forwarding else 0
        self.max_udp = max_udp

    def handle(self, wire: bytes, zone: Zone | None, *, udp: bool) -> bytes | Forward | None:
        """The response to `wire`, a `Forward`, or None to drop it (short header, or not a query)."""
        if len(wire) < 12 or wire[2] & 0x80:
            return None
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None
        except dns.message.UnknownTSIGKey:
            # A TSIG-signed query: this server holds no keys, so the key is unknown to it. RFC 8945 5.2: NOTAUTH
            # (unsigned, as it cannot sign), not FORMERR, so the client knows it is the key and not its bytes.
            if (wire[2] >> 3) & 0xF != dns.opcode.QUERY:
                return header_only(wire, dns.rcode.NOTIMP)
            return header_only(wire, dns.rcode.NOTAUTH)
        except Exception:  # any decode failure of remote bytes: FORMERR (RFC 1035 4.1.1) ...
            # ... unless the header asks for an opcode we do not implement: NOTIMP whatever follows,
            # e.g. a TSIG-signed UPDATE (nsupdate -k), which dnspython cannot parse without the key.
            if (wire[2] >> 3) & 0xF != dns.opcode.QUERY:
                return header_only(wire, dns.rcode.NOTIMP)
            return header_only(wire, dns.rcode.FORMERR)
        resp = dns.message.Message(id=query.id)
        resp.flags = dns.flags.QR | (query.flags & _ANSWER_FLAGS) | self._ra
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
    if rdtype in (SRV, NS):
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

