"""Field codecs the tunnel preamble's messages share (gateway.preamble, gateway.healthquery). Pure.

Network byte order; a short field is a u8 length and its bytes. Decoding raises RemoteProtocolError (the
peer misbehaved), encoding LocalProtocolError (our bug).
"""

from __future__ import annotations

import re
import struct
from typing import Final

from federation.core.errors import LocalProtocolError, RemoteProtocolError

LABEL: Final = re.compile(rb"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""A DNS label: namespaces, service names, sites, hostnames."""


def u64(n: int) -> int:
    """`n`, checked to fit 64 bits unsigned."""
    if not 0 <= n < 1 << 64:
        raise LocalProtocolError(f"{n} does not fit 64 bits")
    return n


def short(b: bytes) -> bytes:
    """`b` as a short field (u8 length + bytes)."""
    if len(b) > 255:
        raise LocalProtocolError("preamble field longer than 255 bytes")
    return bytes((len(b),)) + b


class Reader:
    """Reads the fields of one message body in order."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def left(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def take(self, what: str, n: int) -> bytes:
        """The next `n` bytes (`what` names them in the error when the body ends first)."""
        if self.left() < n:
            raise RemoteProtocolError(f"preamble ends inside {what}", cause="truncated")
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return chunk

    def u8(self, what: str) -> int:
        """One unsigned byte."""
        return self.take(what, 1)[0]

    def u16(self, what: str) -> int:
        """One unsigned 16-bit number."""
        value: int = struct.unpack("!H", self.take(what, 2))[0]
        return value

    def field(self, what: str) -> bytes:
        """One short field."""
        return self.take(what, self.u8(what))

    def label(self, what: str, pattern: re.Pattern[bytes], empty_ok: bool = False) -> str:
        """One short field that must match `pattern` (or be empty, with `empty_ok`)."""
        raw = self.field(what)
        if empty_ok and not raw:
            return ""
        if not pattern.match(raw):
            raise RemoteProtocolError(f"preamble {what} {raw[:64]!r} is not a valid name", cause="bad-name")
        return raw.decode("ascii")
