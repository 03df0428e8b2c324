"""The tunnel preamble: a sans-IO codec (h11's shape) for the request that opens a stream and its status.

Wire format of each message (network byte order):
    version u8 (=1) | type u8 (1 request, 2 response) | body length u16 (<= MAX_BODY) | body
Request body:  ns (u8 len + ascii) | service (u8 len + ascii) | port kind u8 (0 name: u8 len + ascii,
               1 number: u16) | endpoint hostname (u8 len + ascii; 0 = any endpoint)
               | extensions: zero or more of tag u8 | length u8 | value, to the end of the body, each tag once
Extension tags: 1 subset: the label selector `k=v,k2=v2` (keys sorted, at most 16) the endpoint must match;
2 workload: `ns/sa` of the client behind the stream, as the sending site knows it (the gateway takes it in
the scope of the peer's verified site only).
A gateway skips tags it does not know, so a newer egress may add one; a gateway older than extensions
refuses any with `bad request` (trailing bytes), and the egress sends that gateway the request again
without them (gateway.subsets). An egress that sends none is answered as before.
Response body: status u8 | reason (u8 len + utf-8, for logs)
Probe (type 3) body:  nonce u64
Probe answer (type 4) body: nonce u64 | the gateway's wall clock, ms since the epoch u64 | site (u8 len + ascii)
A probe is answered at once and opens no stream (the egress's prober measures the tunnel with it, and
estimates clock skew from the time). A gateway older than probes answers a probe with a `bad request`
response and closes the tunnel: the prober reads that as alive, without a clock.
Health query (5) and answer (6): gateway.healthquery ("a ready endpoint for each of these services?").
No socket, no clock, no logging: the shells feed bytes in and write what `send` returns.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from federation.core.errors import LocalProtocolError, RecordError, RemoteProtocolError
from federation.core.records import MAX_ENDPOINT_LABELS, Labels, check_labels
from federation.core.workloads import is_workload
from gateway import healthquery as hq
from gateway.healthquery import HealthAnswer, HealthQuery
from gateway.wire import Reader as _Reader
from gateway.wire import short as _short
from gateway.wire import u64 as _u64

VERSION: Final = 1
MAX_BODY: Final = 1024
"""Longer than any valid request (4 labels of 63 bytes, a subset and a workload of 255 each: 723); anything
above is refused before buffering it. Gateways before extensions capped it at 512 and refuse a longer one
with `bad request`, as they refuse any extension: the egress asks those again without extensions."""
_HEADER = struct.Struct("!BBH")
_REQUEST, _RESPONSE, _PROBE, _PROBE_ANSWER = 1, 2, 3, 4
_PROBE_BODY = struct.Struct("!Q")
_ANSWER_HEAD = struct.Struct("!QQ")
_LABEL = re.compile(rb"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")  # \Z: `$` would let a trailing newline through
_PORT_NAME = re.compile(rb"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?\Z")
EXT_SUBSET: Final = 1
EXT_WORKLOAD: Final = 2


class Status(enum.IntEnum):
    """Outcome of a stream request, sent before any application byte."""

    OK = 0
    NO_SUCH_SERVICE = 1
    NO_HEALTHY_ENDPOINT = 2
    REFUSED = 3
    FORBIDDEN = 4
    BAD_REQUEST = 5


class Role(enum.Enum):
    """Which side of the preamble this codec speaks."""

    CLIENT = "client"
    """Sends a Request, receives a Response (the egress)."""
    SERVER = "server"
    """Receives a Request, sends a Response (the east-west gateway)."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Request:
    """Open a stream to `namespace/service` on `port` (a port name or number), optionally one endpoint."""

    namespace: str
    service: str
    port: str | int
    hostname: str | None = None
    subset: Labels = ()
    """Only endpoints carrying all these labels (a split target's); empty: any endpoint."""
    workload: str | None = None
    """`ns/sa` of the client (at most 255 bytes): the gateway takes it in the scope of the peer's site only."""


@dataclass(frozen=True, slots=True)
class Response:
    """The gateway's answer to a Request."""

    status: Status
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Probe:
    """Are you there? Answered with a ProbeAnswer carrying the same nonce; opens no stream."""

    nonce: int


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """The gateway's answer to a Probe: the nonce, its wall clock (ms since the epoch) and its site."""

    nonce: int
    time_ms: int
    site: str


Event = Request | Response | Probe | ProbeAnswer | HealthQuery | HealthAnswer


class Preamble:
    """One preamble exchange. Feed bytes with `receive_data`, pull with `next_event`, encode with `send`."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self._buf = bytearray()
        self._event: Event | None = None

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        self._buf += data

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the complete message (they belong to the stream that follows)."""
        return bytes(self._buf) if self._event is not None else b""

    def next_event(self) -> Event | _NeedData:
        """The peer's message once complete, else NEED_DATA; RemoteProtocolError if it is malformed."""
        if self._event is not None:
            return self._event
        if len(self._buf) < 1:
            return NEED_DATA
        if self._buf[0] != VERSION:
            raise RemoteProtocolError(f"preamble version {self._buf[0]} is not {VERSION}", cause="version")
        if len(self._buf) < _HEADER.size:
            return NEED_DATA
        _, kind, length = _HEADER.unpack_from(self._buf)
        want = (_REQUEST, _PROBE, hq.QUERY) if self.role is Role.SERVER else (_RESPONSE, _PROBE_ANSWER, hq.ANSWER)
        if kind not in want:
            raise RemoteProtocolError(f"preamble message type {kind} where {want[0]} belongs", cause="message-type")
        limit = hq.MAX_QUERY_BODY if kind == hq.QUERY else MAX_BODY
        if length > limit:
            raise RemoteProtocolError(f"preamble of {length} bytes is over the limit of {limit}", cause="too-long")
        end = _HEADER.size + length
        if len(self._buf) < end:
            return NEED_DATA
        body = _Reader(bytes(self._buf[_HEADER.size:end]))
        event = _DECODERS[kind](body)
        if body.left():
            raise RemoteProtocolError(f"preamble has {body.left()} bytes after its last field", cause="trailing-bytes")
        del self._buf[:end]
        self._event = event
        return event

    def send(self, event: Event) -> bytes:
        """Encode our message; LocalProtocolError if this role does not send it or it is invalid."""
        if isinstance(event, Request) and self.role is Role.CLIENT:
            return _frame(_REQUEST, _encode_request(event))
        if isinstance(event, Response) and self.role is Role.SERVER:
            reason = event.reason.encode()[:255]
            return _frame(_RESPONSE, bytes((event.status,)) + _short(reason.decode(errors="ignore").encode()))
        if isinstance(event, Probe) and self.role is Role.CLIENT:
            return _frame(_PROBE, _PROBE_BODY.pack(_u64(event.nonce)))
        if isinstance(event, ProbeAnswer) and self.role is Role.SERVER:
            if not _LABEL.match(event.site.encode()):
                raise LocalProtocolError(f"site {event.site!r} is not a DNS label")
            return _frame(_PROBE_ANSWER, _ANSWER_HEAD.pack(_u64(event.nonce), _u64(event.time_ms))
                          + _short(event.site.encode()))
        if isinstance(event, HealthQuery) and self.role is Role.CLIENT:
            return _frame(hq.QUERY, hq.encode_query(event), hq.MAX_QUERY_BODY)
        if isinstance(event, HealthAnswer) and self.role is Role.SERVER:
            return _frame(hq.ANSWER, hq.encode_answer(event))
        raise LocalProtocolError(f"a {self.role.value} does not send {type(event).__name__}")


def _frame(kind: int, body: bytes, limit: int = MAX_BODY) -> bytes:
    if len(body) > limit:
        raise LocalProtocolError(f"preamble body of {len(body)} bytes is over {limit}")
    return _HEADER.pack(VERSION, kind, len(body)) + body


def _encode_request(r: Request) -> bytes:
    for what, value, pattern in (("namespace", r.namespace, _LABEL), ("service", r.service, _LABEL),
                                 ("hostname", r.hostname or "x", _LABEL)):
        if not pattern.match(value.encode()):
            raise LocalProtocolError(f"{what} {value!r} is not a DNS label")
    out = _short(r.namespace.encode()) + _short(r.service.encode())
    if isinstance(r.port, int):
        if not 1 <= r.port <= 65535:
            raise LocalProtocolError(f"port {r.port} is out of range")
        out += b"\x01" + struct.pack("!H", r.port)
    else:
        if not _PORT_NAME.match(r.port.encode()):
            raise LocalProtocolError(f"port name {r.port!r} is not valid")
        out += b"\x00" + _short(r.port.encode())
    out += _short((r.hostname or "").encode())
    if r.subset:
        out += bytes((EXT_SUBSET,)) + _short(encode_subset(r.subset))
    if r.workload is not None:
        if not is_workload(r.workload):
            raise LocalProtocolError(f"workload {r.workload!r} is not namespace/service-account")
        out += bytes((EXT_WORKLOAD,)) + _short(r.workload.encode())
    return out


def encode_subset(subset: Labels) -> bytes:
    """The subset extension's value, `k=v,k2=v2`; LocalProtocolError if the labels are invalid or too long."""
    try:
        check_labels("subset", subset)
    except RecordError as exc:
        raise LocalProtocolError(str(exc)) from None
    raw = ",".join(f"{k}={v}" for k, v in subset).encode()
    if len(raw) > 255:
        raise LocalProtocolError(f"subset of {len(raw)} bytes is over 255")
    return raw


def _decode_subset(raw: bytes) -> Labels:
    try:
        if not raw.isascii():
            raise RecordError(f"subset {raw[:64]!r} is not ascii")
        pairs = tuple(tuple(item.split("=", 1)) for item in raw.decode().split(","))
        if len(pairs) > MAX_ENDPOINT_LABELS or any(len(p) != 2 for p in pairs):
            raise RecordError(f"subset {raw[:64]!r} is not k=v pairs (at most {MAX_ENDPOINT_LABELS})")
        subset: Labels = tuple((k, v) for k, v in pairs)
        check_labels("subset", subset)
    except RecordError as exc:
        raise RemoteProtocolError(f"preamble {exc}", cause="bad-subset") from None
    return subset


def _decode_extensions(body: _Reader) -> dict[int, bytes]:
    """Tag -> value of the extensions after the request's last fixed field (unknown tags are kept, unread)."""
    out: dict[int, bytes] = {}
    while body.left():
        tag = body.u8("extension tag")
        value = body.field("extension")
        if tag in out:
            raise RemoteProtocolError(f"preamble extension {tag} is given twice", cause="bad-extension")
        out[tag] = value
    return out


def _decode_request(body: _Reader) -> Request:
    ns = body.label("namespace", _LABEL)
    service = body.label("service", _LABEL)
    kind = body.u8("port kind")
    port: str | int
    if kind == 0:
        port = body.label("port name", _PORT_NAME)
    elif kind == 1:
        port = body.u16("port")
        if port == 0:
            raise RemoteProtocolError("preamble port 0 is not a port", cause="bad-port")
    else:
        raise RemoteProtocolError(f"preamble port kind {kind} is neither name (0) nor number (1)", cause="bad-port")
    hostname = body.label("hostname", _LABEL, empty_ok=True)
    ext = _decode_extensions(body)
    subset = _decode_subset(ext[EXT_SUBSET]) if EXT_SUBSET in ext else ()
    workload = ext.get(EXT_WORKLOAD)
    if workload is not None and not is_workload(workload.decode("latin-1")):  # any bytes decode; ascii passes
        raise RemoteProtocolError(f"preamble workload {workload[:64]!r} is not namespace/service-account",
                                  cause="bad-workload")
    return Request(ns, service, port, hostname or None, subset, workload.decode("ascii") if workload else None)


def _decode_response(body: _Reader) -> Response:
    code = body.u8("status")
    try:
        status = Status(code)
    except ValueError:
        raise RemoteProtocolError(f"preamble status {code} is unknown", cause="bad-status") from None
    reason = body.field("reason").decode("utf-8", errors="replace")
    return Response(status, reason)


def _decode_probe(body: _Reader) -> Probe:
    (nonce,) = _PROBE_BODY.unpack(body.take("nonce", _PROBE_BODY.size))
    return Probe(nonce)


def _decode_probe_answer(body: _Reader) -> ProbeAnswer:
    nonce, time_ms = _ANSWER_HEAD.unpack(body.take("probe answer", _ANSWER_HEAD.size))
    return ProbeAnswer(nonce, time_ms, body.label("site", _LABEL))


_DECODERS: dict[int, Callable[[_Reader], Event]] = {
    _REQUEST: _decode_request, _RESPONSE: _decode_response, _PROBE: _decode_probe, _PROBE_ANSWER: _decode_probe_answer,
    hq.QUERY: hq.decode_query, hq.ANSWER: hq.decode_answer,
}

