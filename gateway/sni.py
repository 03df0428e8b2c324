"""The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), read without terminating TLS. Pure.

Global ingress passes TLS through to the service untouched (its certificate, its keys): it only peeks at the
first TLS record to learn which service the client wants, as an SNI router does (Envoy's tls_inspector,
haproxy's `req.ssl_sni`). Only the first handshake record is read: a ClientHello split over several records
is refused (every common client sends it in one; a bounded peek keeps a hostile client from holding memory).
"""

from __future__ import annotations

from federation.core.errors import RemoteProtocolError

MAX_RECORD = 16384 + 5
"""A TLS record's largest plaintext (2^14) and its header: a hello longer than one record is refused."""


class NeedMore(Exception):
    """The bytes so far are a valid beginning of a ClientHello; read more."""


class NotHello(RemoteProtocolError):
    """The bytes are no TLS ClientHello (or one this reader refuses); the message says why."""


def server_name(data: bytes) -> str | None:
    """The host name a ClientHello asks for, lowercased, or None when it names none; NeedMore or NotHello."""
    if len(data) < 5:
        raise NeedMore
    if data[0] != 0x16:  # handshake
        raise NotHello("not a TLS handshake record (is the client speaking TLS?)")
    if data[1] != 3:
        raise NotHello(f"TLS record version {data[1]}.{data[2]} is not 3.x")
    length = int.from_bytes(data[3:5], "big")
    if length > MAX_RECORD - 5 or length < 4:
        raise NotHello(f"TLS record length {length} is out of range")
    if len(data) < 5 + length:
        raise NeedMore
    body = _Reader(data[5:5 + length])
    if body.u8() != 1:
        raise NotHello("the first handshake message is not a ClientHello")
    hello = _Reader(body.take(body.u24(), "ClientHello"))
    hello.take(2 + 32, "version and random")
    hello.vector(1, "session id")
    hello.vector(2, "cipher suites")
    hello.vector(1, "compression methods")
    if hello.done():
        return None  # no extensions at all
    extensions = _Reader(hello.vector(2, "extensions"))
    while not extensions.done():
        kind = extensions.u16()
        payload = extensions.vector(2, "an extension")
        if kind == 0:  # server_name
            return _host_name(_Reader(payload))
    return None


def _host_name(ext: _Reader) -> str | None:
    names = _Reader(ext.vector(2, "server name list"))
    while not names.done():
        kind = names.u8()
        name = names.vector(2, "server name")
        if kind == 0:  # host_name
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                raise NotHello("the server name is not ASCII") from None
            if not text or len(text) > 253 or not all(c.isalnum() or c in "-._" for c in text):
                raise NotHello(f"the server name {text[:64]!r} is not a host name")
            return text.lower().rstrip(".")
    return None


class _Reader:
    """Reads big-endian fields off a byte string; NotHello when one runs past its end."""

    __slots__ = ("_at", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def done(self) -> bool:
        return self._at >= len(self._data)

    def take(self, n: int, what: str) -> bytes:
        if self._at + n > len(self._data):
            raise NotHello(f"{what} runs past the end of the hello")
        out = self._data[self._at:self._at + n]
        self._at += n
        return out

    def u8(self) -> int:
        return self.take(1, "a field")[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2, "a field"), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3, "a length"), "big")

    def vector(self, width: int, what: str) -> bytes:
        return self.take(int.from_bytes(self.take(width, f"the length of {what}"), "big"), what)
