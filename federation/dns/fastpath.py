"""A wire-level fast path for the common questions: A, AAAA, SRV and PTR names that have data.

Pure: bytes in, bytes (or None: "ask the dnspython path") out. Response bodies are encoded once per
registry change, with the same name compression dnspython's renderer applies, and spliced behind the
client's own header and question; tests/unit/test_dns_fastpath.py checks on random samples that both
paths give byte-identical answers. The table holds only names the registry defines: no query adds to it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from federation.dns.answering import AAAA, IN, PTR, SRV, A, Answerer, Labels, Node, Zone

FAST_TYPES = (A, AAAA, SRV, PTR)
"""The types the fast path answers; everything else takes the dnspython path."""

_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"

Entry = tuple[bytes, bytes, bytes]
"""(AN/NS/AR counts without OPT, the same with OPT counted, the answer/authority/additional bytes)"""


class FastPath:
    """Pre-encoded positive answers, kept current by `update(zone)`."""

    def __init__(self, answerer: Answerer) -> None:
        self._answerer = answerer
        self._max_udp = answerer.max_udp
        self._table: dict[bytes, Entry] = {}
        self._cache: dict[tuple[str, str], tuple[Mapping[Labels, Node], dict[bytes, Entry]]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def update(self, zone: Zone) -> None:
        """Re-encode the services whose nodes changed since the last update; drop the removed ones."""
        table: dict[bytes, Entry] = {}
        cache: dict[tuple[str, str], tuple[Mapping[Labels, Node], dict[bytes, Entry]]] = {}
        for key, part in zone.parts.items():
            hit = self._cache.get(key)
            entries = hit[1] if hit is not None and hit[0] is part else self._encode(zone, part)
            cache[key] = (part, entries)
            table.update(entries)
        self._cache = cache
        self._table = table

    def answer(self, wire: bytes, udp: bool) -> bytes | None:
        """The response to a plain in-table question, or None when the dnspython path must answer."""
        n = len(wire)
        if n < 17 or n > 512 or wire[2] & 0xF8:  # QR set or an opcode other than QUERY
            return None
        counts = wire[4:12]
        if counts == _PLAIN_COUNTS:
            edns = False
        elif counts == _EDNS_COUNTS:
            edns = True
        else:
            return None
        i = 12
        try:
            length = wire[i]
            while length:
                if length > 63:  # a compression pointer or reserved label type
                    return None
                i += length + 1
                length = wire[i]
        except IndexError:
            return None
        end = i + 5
        if end - 12 > 259 or end > n or wire[end - 2:end] != b"\x00\x01":
            return None
        entry = self._table.get(wire[12:end - 4].lower() + wire[end - 4:end - 2])
        if entry is None:
            return None
        limit = 512
        if edns:
            opt = wire[end:]
            # root owner, type OPT, no extended rcode, version 0, no options
            if len(opt) != 11 or opt[0:3] != b"\x00\x00\x29" or opt[5:7] != b"\x00\x00" or opt[9:11] != b"\x00\x00":
                return None
            payload = (opt[3] << 8) | opt[4]
            limit = max(512, min(payload, self._max_udp))
            tail = entry[2] + struct.pack("!BHHBBHH", 0, 41, self._max_udp, 0, 0, (opt[7] & 0x80) << 8, 0)
            head_counts = entry[1]
        elif end != n:
            return None
        else:
            tail = entry[2]
            head_counts = entry[0]
        if udp and end + len(tail) > limit:
            return None
        flags = bytes((0x84 | (wire[2] & 0x01), wire[3] & 0x10))
        return b"".join((wire[0:2], flags, b"\x00\x01", head_counts, wire[12:end], tail))

    def _encode(self, zone: Zone, part: Mapping[Labels, Node]) -> dict[bytes, Entry]:
        entries: dict[bytes, Entry] = {}
        for name, node in part.items():
            for rdtype in node.types():
                if rdtype in FAST_TYPES:
                    key, entry = encode_answer(name, rdtype, node, part, zone.ttl)
                    entries[key] = entry
        return entries


def encode_answer(
    qname: Labels, rdtype: int, node: Node, nodes: Mapping[Labels, Node], ttl: int
) -> tuple[bytes, Entry]:
    """The table key and pre-encoded sections of the positive answer for (qname, rdtype)."""
    enc = _Encoder()
    enc.name(qname, compress=True)
    qlen = len(enc.out) - 12
    enc.out += struct.pack("!HH", rdtype, IN)
    answers = additional = 0
    if rdtype == A:
        answers = enc.addresses(qname, A, node.a, ttl)
    elif rdtype == AAAA:
        answers = enc.addresses(qname, AAAA, node.aaaa, ttl)
    elif rdtype == PTR and node.ptr is not None:
        start = enc.record(qname, PTR, ttl)
        enc.name(node.ptr, compress=True)
        enc.finish(start)
        answers = 1
    elif rdtype == SRV:
        for prio, weight, port, target in node.srv:
            start = enc.record(qname, SRV, ttl)
            enc.out += struct.pack("!HHH", prio, weight, port)
            enc.name(target, compress=False)  # RFC 2782: no compression of the target
            enc.finish(start)
            answers += 1
        for target in node.glue:
            glue = nodes.get(target)
            if glue is not None:
                additional += enc.addresses(target, A, glue.a, ttl)
                additional += enc.addresses(target, AAAA, glue.aaaa, ttl)
    key = bytes(enc.out[12:12 + qlen]) + struct.pack("!H", rdtype)
    body = bytes(enc.out[12 + qlen + 4:])
    return key, (
        struct.pack("!HHH", answers, 0, additional),
        struct.pack("!HHH", answers, 0, additional + 1),
        body,
    )


class _Encoder:
    """Message bytes after a 12-byte header, compressing names exactly as dnspython's renderer does."""

    def __init__(self) -> None:
        self.out = bytearray(12)
        self._compress: dict[Labels, int] = {}

    def name(self, labels: Labels, *, compress: bool) -> None:
        for i in range(len(labels)):
            if compress:
                suffix = labels[i:]
                pos = self._compress.get(suffix)
                if pos is not None:
                    self.out += struct.pack("!H", 0xC000 | pos)
                    return
                if len(self.out) <= 0x3FFF:
                    self._compress[suffix] = len(self.out)
            self.out.append(len(labels[i]))
            self.out += labels[i]
        self.out.append(0)

    def record(self, owner: Labels, rdtype: int, ttl: int) -> int:
        self.name(owner, compress=True)
        self.out += struct.pack("!HHIH", rdtype, IN, ttl, 0)
        return len(self.out)

    def finish(self, start: int) -> None:
        struct.pack_into("!H", self.out, start - 2, len(self.out) - start)

    def addresses(self, owner: Labels, rdtype: int, packed: tuple[bytes, ...], ttl: int) -> int:
        for addr in packed:
            start = self.record(owner, rdtype, ttl)
            self.out += addr
            self.finish(start)
        return len(packed)
