"""The health query of the tunnel preamble: "do you have a ready endpoint for each of these services?". Pure.

Two message types beside gateway.preamble's (which frames and dispatches them):
    Health query (type 5) body: nonce u64 | count u16 (1..MAX_SERVICES) | count x (ns, service), each a
                                short ascii field
    Health answer (type 6) body: nonce u64 | count u16 | count x state u8 (`Health`, in the query's order)
Like a probe, a query is answered at once and opens no stream. A gateway older than health queries answers
`bad request` and closes the tunnel (its codec refuses an unknown message type): the asker reads that as
`unknown` for every service, never as down. A state a later gateway adds reads as `unknown` too (so an
older prober reads FORBIDDEN, added with access policies, as `unknown`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from federation.core.errors import LocalProtocolError, RemoteProtocolError
from gateway.wire import LABEL, Reader, short, u64

QUERY, ANSWER = 5, 6
"""The preamble message types."""
MAX_SERVICES: Final = 128
"""Services per query: a site that imports more from one site asks in several queries."""
MAX_QUERY_BODY: Final = 10 + MAX_SERVICES * 128
"""A full query (two labels of up to 63 bytes per service); other messages keep preamble.MAX_BODY."""
_HEAD = struct.Struct("!QH")


class Health(enum.IntEnum):
    """A gateway's answer for one service of a health query."""

    UNKNOWN = 0
    """It cannot say yet (no check of its endpoints has finished), or it does not understand: neither up nor down."""
    READY = 1
    """An endpoint accepted a connection at its last check."""
    NO_READY_ENDPOINT = 2
    """Exported here, but no endpoint is ready, or every ready one refused its last check."""
    NOT_EXPORTED = 3
    """This site does not export the service (any more)."""
    FORBIDDEN = 4
    """The access policy here refuses every stream the asking site could open to it: says nothing of its endpoints."""


_KNOWN = frozenset(int(h) for h in Health)


@dataclass(frozen=True, slots=True)
class HealthQuery:
    """Do you have a ready endpoint for each of `services` ((namespace, name), 1..MAX_SERVICES)?"""

    nonce: int
    services: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    """The gateway's answer to a HealthQuery: one `Health` per service, in the query's order."""

    nonce: int
    states: tuple[Health, ...]


def encode_query(q: HealthQuery) -> bytes:
    """The query's body."""
    if not 1 <= len(q.services) <= MAX_SERVICES:
        raise LocalProtocolError(f"a health query names 1..{MAX_SERVICES} services, not {len(q.services)}")
    out = [_HEAD.pack(u64(q.nonce), len(q.services))]
    for ns, name in q.services:
        if not (LABEL.match(ns.encode()) and LABEL.match(name.encode())):
            raise LocalProtocolError(f"service {ns}/{name} is not two DNS labels")
        out.append(short(ns.encode()) + short(name.encode()))
    return b"".join(out)


def encode_answer(a: HealthAnswer) -> bytes:
    """The answer's body."""
    if len(a.states) > MAX_SERVICES:
        raise LocalProtocolError(f"a health answer for {len(a.states)} services")
    return _HEAD.pack(u64(a.nonce), len(a.states)) + bytes(a.states)


def decode_query(body: Reader) -> HealthQuery:
    """A query from its body."""
    nonce, count = _HEAD.unpack(body.take("health query", _HEAD.size))
    if not 1 <= count <= MAX_SERVICES:
        raise RemoteProtocolError(f"health query for {count} services", cause="bad-count")
    return HealthQuery(nonce, tuple((body.label("namespace", LABEL), body.label("service", LABEL))
                                    for _ in range(count)))


def decode_answer(body: Reader) -> HealthAnswer:
    """An answer from its body."""
    nonce, count = _HEAD.unpack(body.take("health answer", _HEAD.size))
    return HealthAnswer(nonce, tuple(Health(b) if b in _KNOWN else Health.UNKNOWN
                                     for b in body.take("health states", count)))
