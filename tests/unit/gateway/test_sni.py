"""The server name of real TLS ClientHellos (made by Python's ssl, i.e. OpenSSL), and hostile bytes."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sni import NeedMore, NotHello, server_name


def client_hello(name: str | None, minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> bytes:
    """The first flight of a real TLS client asking for `name` (None: an IP address, so no SNI)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store: nothing is verified, only the hello is made
    ctx.minimum_version = minimum
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("minimum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_name_a_real_client_asks_for(minimum: ssl.TLSVersion) -> None:
    assert server_name(client_hello("Web.Shop.example.com", minimum)) == "web.shop.example.com"
    assert server_name(client_hello(None, minimum)) is None  # no SNI at all


def test_a_partial_hello_asks_for_more_and_never_guesses() -> None:
    hello = client_hello("web.example.com")
    for n in range(len(hello)):
        with pytest.raises(NeedMore):
            server_name(hello[:n])
    assert server_name(hello + b"\x17\x03\x03\x00\x01x") == "web.example.com"  # what follows is not read


@pytest.mark.parametrize(("data", "why"), [
    (b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", "not a TLS handshake record"),
    (b"\x16\x02\x00\x00\x10" + b"\x00" * 16, "version 2.0 is not 3.x"),
    (b"\x16\x03\x01\x7f\xff", "length 32767 is out of range"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
    (b"\x16\x03\x01\x00\x08\x01\x00\x00\x30" + b"\x03\x03\x00\x00", "runs past the end"),
])
def test_what_is_not_a_hello_is_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(NotHello, match=why):
        server_name(data)


def test_a_name_that_is_no_host_name_is_refused() -> None:
    hello = bytearray(client_hello("web.example.com"))
    at = bytes(hello).index(b"web.example.com")
    hello[at:at + 3] = b"w\x00b"
    with pytest.raises(NotHello, match="not a host name"):
        server_name(bytes(hello))


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        server_name(data)
    except (NeedMore, NotHello):
        pass


HELLO = client_hello("web.example.com")


@given(st.integers(5, 400), st.binary(min_size=1, max_size=4))
def test_a_corrupted_real_hello_never_crashes(at: int, junk: bytes) -> None:
    hello = bytearray(HELLO)
    at = min(at, len(hello) - 1)
    hello[at:at + len(junk)] = junk
    try:
        server_name(bytes(hello))
    except (NeedMore, NotHello):
        pass
