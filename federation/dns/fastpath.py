"""A wire-level fast path for the common questions: A, AAAA, SRV and PTR names that have data.

Pure: bytes in, bytes (or None: "ask the dnspython path") out. A response body is encoded the first
time its name is asked after a registry change touched its service, with the same name compression
dnspython's renderer applies, and spliced behind the client's own header and question;
tests/unit/dns/test_fastpath.py checks on random samples that both paths give byte-identical answers.
Encoding on first ask, not on every change, keeps a registry change cheap at any mesh size (a 1,000-site
zone has 200,000 names, most of them never asked) and the table small. Only names the zone defines are
ever added: a flood of random names grows nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

from federation.dns.answering import Answerer
from federation.dns.nodes import AAAA, IN, PTR, SRV, A, Labels, Node, Zone

FAST_TYPES = (A, AAAA, SRV, PTR)
"""The types the fast path answers; everything else takes the dnspython path."""

MEMO_MAX = 65536
"""Most whole UDP responses remembered by query bytes; cleared when full and on every update."""

_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"



class Entry(NamedTuple):
    """One pre-encoded positive answer, in the pieces truncation needs."""

    counts: bytes
    """AN/NS/AR counts of the whole answer without an OPT record."""
    counts_edns: bytes
    """The same with the OPT record counted."""
    body: bytes
    """Answer and additional sections, whole."""
    answers: int
    answer: bytes
    """The answer section alone (one RRset: it fits whole or the response is truncated)."""
    glue: tuple[tuple[int, bytes], ...]
    """Additional RRsets as (record count, bytes), dropped from the end when they do not fit."""


class FastPath:
    """Pre-encoded positive answers, kept current by `update(zone)`."""

    def __init__(self, answerer: Answerer) -> None:
        self._answerer = answerer
        self._max_udp = answerer.max_udp
        self._ra = 0x80 if answerer.forwarding else 0
        self._opt = struct.pack("!BHHBBHH", 0, 41, self._max_udp, 0, 0, 0, 0)
        self._opt_do = struct.pack("!BHHBBHH", 0, 41, self._max_udp, 0, 0, 0x8000, 0)
        self._table: dict[bytes, Entry] = {}
        self._memo: dict[bytes, bytes] = {}
        self._cache: dict[tuple[str, str], set[bytes]] = {}
        """Service -> the table keys encoded from its part (dropped when a change touches the service)."""
        self._zone: Zone | None = None

    def __len__(self) -> int:
        return len(self._table)

    @property
    def memo_size(self) -> int:
        """Responses currently remembered (at most MEMO_MAX)."""
        return len(self._memo)

    def update(self, zone: Zone) -> None:
        """Answer from `zone` from now on: forget the answers of the services it changed (all, if it says all).

        Costs the entries encoded for those services, not the services' size: answers are encoded again
        when next asked.
        """
        self._zone = zone
        if zone.changed is None:
            self._table, self._cache = {}, {}
        else:
            table, cache = self._table, self._cache
            for key in zone.changed | zone.moved:
                for k in cache.pop(key, ()):
                    table.pop(k, None)
        self._memo = {}

    def answer(self, wire: bytes, udp: bool) -> bytes | None:
        """The response to a plain in-table question, or None when the dnspython path must answer."""
        if udp:
            # Most clients repeat the same few questions: everything but the ID maps to the same bytes.
            tail = self._memo.get(wire[2:])
            if tail is not None:
                return wire[:2] + tail
            out = self._answer(wire, True)
            if out is not None:
                if len(self._memo) >= MEMO_MAX:
                    self._memo.clear()  # bounded: only table hits get here, but 0x20 case variants are many
                self._memo[wire[2:]] = out[2:]
            return out
        return self._answer(wire, False)

    def _answer(self, wire: bytes, udp: bool) -> bytes | None:
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
        # The name ends at its first zero byte: a table hit proves the bytes before it are a
        # well-formed label sequence (the table only holds such names), so no label walk is needed.
        end = wire.find(b"\x00", 12) + 5
        if end < 17 or end > n or wire[end - 2:end] != b"\x00\x01":
            return None
        key = wire[12:end - 4].lower() + wire[end - 4:end - 2]
        entry = self._table.get(key)
        if entry is None:
            entry = self._fill(key)
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
            optrr = self._opt_do if opt[7] & 0x80 else self._opt
        elif end != n:
            return None
        else:
            optrr = b""
        flags = 0x84 | (wire[2] & 0x01)
        if not udp or end + len(entry.body) + len(optrr) <= limit:
            counts = entry.counts_edns if edns else entry.counts
            body = entry.body
        else:
            # As dnspython truncates (RFC 2181 9): the answer RRset whole or not at all, with TC;
            # additional RRsets while they fit, without TC.
            room = limit - len(optrr) - end
            if len(entry.answer) > room:
                flags |= 0x02
                counts = struct.pack("!HHH", 0, 0, 1 if edns else 0)
                body = b""
            else:
                parts = [entry.answer]
                used = len(entry.answer)
                additional = 0
                for count, chunk in entry.glue:
                    if used + len(chunk) > room:
                        break
                    parts.append(chunk)
                    used += len(chunk)
                    additional += count
                counts = struct.pack("!HHH", entry.answers, 0, additional + (1 if edns else 0))
                body = b"".join(parts)
        flags2 = self._ra | (wire[3] & 0x10)
        return b"".join((wire[0:2], bytes((flags, flags2)), b"\x00\x01", counts, wire[12:end], body, optrr))

    def _fill(self, key: bytes) -> Entry | None:
        """Encode the answer for table key `key` (wire name + type) if a service's part defines it, else None."""
        zone = self._zone
        rdtype = (key[-2] << 8) | key[-1]
        if zone is None or rdtype not in FAST_TYPES:
            return None
        labels = _labels(key[:-2])
        owner = zone.owners.get(labels) if labels is not None else None
        part = zone.parts.get(owner) if owner is not None else None
        node = zone.nodes.get(labels) if part is not None and labels is not None else None
        if node is None or part is None or owner is None or rdtype not in node.types():
            return None  # not a service's name (apex, nameserver, unknown): the dnspython path answers
        encoded, entry = encode_answer(labels, rdtype, node, part, zone.ttl)  # type: ignore[arg-type]
        if encoded != key:  # pragma: no cover - the table key is the name as asked, lower-cased
            return None
        self._table[key] = entry
        self._cache.setdefault(owner, set()).add(key)
        return entry


def _labels(wire: bytes) -> Labels | None:
    """Length-prefixed labels (ending in the root label) as a tuple without the root; None if malformed."""
    out: list[bytes] = []
    i, n = 0, len(wire)
    while i < n:
        length = wire[i]
        if length == 0:
            return tuple(out) if i == n - 1 else None
        if length > 63:
            return None
        out.append(wire[i + 1:i + 1 + length])
        i += 1 + length
    return None


def encode_answer(
    qname: Labels, rdtype: int, node: Node, nodes: Mapping[Labels, Node], ttl: int
) -> tuple[bytes, Entry]:
    """The table key and pre-encoded sections of the positive answer for (qname, rdtype)."""
    enc = _Encoder()
    enc.name(qname, compress=True)
    qlen = len(enc.out) - 12
    enc.out += struct.pack("!HH", rdtype, IN)
    start = len(enc.out)
    answers = 0
    glue: list[tuple[int, bytes]] = []
    if rdtype == A:
        answers = enc.addresses(qname, A, node.a, ttl)
    elif rdtype == AAAA:
        answers = enc.addresses(qname, AAAA, node.aaaa, ttl)
    elif rdtype == PTR and node.ptr is not None:
        rec = enc.record(qname, PTR, ttl)
        enc.name(node.ptr, compress=True)
        enc.finish(rec)
        answers = 1
    elif rdtype == SRV:
        # Every answer record's owner is the question name, written at offset 12.
        head = b"\xc0\x0c" + struct.pack("!HHI", SRV, IN, ttl)
        out = enc.out
        for prio, weight, port, target in node.srv:
            target_wire = _wire(target)  # RFC 2782: the target is never compressed
            out += head
            out += struct.pack("!HHHH", 6 + len(target_wire), prio, weight, port)
            out += target_wire
            answers += 1
        for target in node.glue:
            glue_node = nodes.get(target)
            if glue_node is None:
                continue
            for t, packed in ((A, glue_node.a), (AAAA, glue_node.aaaa)):
                mark = len(enc.out)
                count = enc.addresses(target, t, packed, ttl)
                if count:
                    glue.append((count, bytes(enc.out[mark:])))
    key = bytes(enc.out[12:12 + qlen]) + struct.pack("!H", rdtype)
    body = bytes(enc.out[start:])
    answer = body[: len(body) - sum(len(chunk) for _, chunk in glue)]
    additional = sum(count for count, _ in glue)
    return key, Entry(
        struct.pack("!HHH", answers, 0, additional),
        struct.pack("!HHH", answers, 0, additional + 1),
        body,
        answers,
        answer,
        tuple(glue),
    )


class _Encoder:
    """Message bytes after a 12-byte header, compressing names exactly as dnspython's renderer does."""

    def __init__(self) -> None:
        self.out = bytearray(12)
        self._compress: dict[Labels, int] = {}

    def name(self, labels: Labels, *, compress: bool) -> None:
        out = self.out
        if compress:
            table = self._compress
            for i, label in enumerate(labels):
                suffix = labels[i:]
                pos = table.get(suffix)
                if pos is not None:
                    out += (0xC000 | pos).to_bytes(2, "big")
                    return
                if len(out) <= 0x3FFF:
                    table[suffix] = len(out)
                out.append(len(label))
                out += label
        else:
            for label in labels:
                out.append(len(label))
                out += label
        out.append(0)

    def record(self, owner: Labels, rdtype: int, ttl: int) -> int:
        self.name(owner, compress=True)
        self.out += struct.pack("!HHIH", rdtype, IN, ttl, 0)
        return len(self.out)

    def finish(self, start: int) -> None:
        struct.pack_into("!H", self.out, start - 2, len(self.out) - start)

    def addresses(self, owner: Labels, rdtype: int, packed: tuple[bytes, ...], ttl: int) -> int:
        if not packed:
            return 0
        out = self.out
        fixed = struct.pack("!HHIH", rdtype, IN, ttl, len(packed[0]))
        self.name(owner, compress=True)
        out += fixed
        out += packed[0]
        pos = self._compress.get(owner)
        pointer = (0xC000 | pos).to_bytes(2, "big") if pos is not None else None
        for addr in packed[1:]:
            if pointer is None:  # the owner sits past 0x3FFF: dnspython writes it again, so do we
                self.name(owner, compress=True)
            else:
                out += pointer
            out += fixed
            out += addr
        return len(packed)


def _wire(labels: Labels) -> bytes:
    return b"".join(len(label).to_bytes(1, "big") + label for label in labels) + b"\x00"
