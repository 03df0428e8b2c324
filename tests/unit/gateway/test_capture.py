"""Reading the original destination the kernel hands back (struct sockaddr_in / sockaddr_in6)."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from gateway.capture import parse_sockaddr


def _in(address: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(address) + bytes(8)


def _in6(address: str, port: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, address) + bytes(4))


def test_ipv4_and_ipv6() -> None:
    assert parse_sockaddr(_in("240.240.0.7", 8080)) == (ipaddress.ip_address("240.240.0.7"), 8080)
    assert parse_sockaddr(_in6("fd6d:6573:6866:6564::7", 443)) == (ipaddress.ip_address("fd6d:6573:6866:6564::7"), 443)


def test_a_v4_mapped_address_is_the_ipv4_address() -> None:
    assert parse_sockaddr(_in6("::ffff:240.240.0.7", 80)) == (ipaddress.ip_address("240.240.0.7"), 80)


def test_anything_else_is_none() -> None:
    assert parse_sockaddr(b"") is None
    assert parse_sockaddr(struct.pack("=H", socket.AF_UNIX) + bytes(14)) is None
    assert parse_sockaddr(_in6("fd6d::1", 1)[:20]) is None


@given(st.binary(max_size=64))
def test_never_raises(raw: bytes) -> None:
    parse_sockaddr(raw)
