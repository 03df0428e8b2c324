"""Egress + east-west gateway on loopback: client -> egress listener -> mTLS tunnel -> gateway -> echo server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from federation.core.policy.model import DEFAULT_RULES
from federation.core.records import Gateway, Locality
from federation.runtime.values import Value, wait_until
from gateway.eastwest import EastWestGateway
from gateway.egress import Egress
from gateway.settings import GatewaySettings
from gateway.tls import CertificateStore
from tests.pkihelp import export, view
from tests.tunnelhelp import TwoSites, two_sites

KEY = ("ns", "echo", "tcp")


@contextlib.asynccontextmanager
async def egress_of_west(s: TwoSites, **settings: object) -> AsyncIterator[Egress]:
    eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle,
                GatewaySettings(**{"pool_size": 2, **settings}),  # type: ignore[arg-type]
                registry=CollectorRegistry())
    await eg.start()
    following = asyncio.create_task(eg.run(), name="egress-run")
    try:
        yield eg
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await eg.close()


async def roundtrip(addr: tuple[str, int], payload: bytes) -> bytes:
    """Send `payload`, half-close, read everything back."""
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(payload)
        writer.write_eof()
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_client_reaches_a_service_of_another_network(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s) as eg:
        addr = eg.listeners()[KEY]
        assert addr[0] == "127.0.0.1"
        payload = bytes(range(256)) * 8192  # 2 MiB
        assert await roundtrip(addr, payload) == payload


async def test_tunnels_are_pooled_and_reused(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s) as eg:
        addr = eg.listeners()[KEY]
        for i in range(10):
            assert await roundtrip(addr, b"ping %d" % i) == b"ping %d" % i
        pool = next(iter(eg.pools.values()))
        assert pool.handshakes <= 4
        assert eg.metrics.reused._value.get() >= 8
        assert s.echo.connections == 10


async def test_parallel_clients(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s) as eg:
        addr = eg.listeners()[KEY]
        payloads = [bytes([i]) * (50_000 + i) for i in range(20)]
        got = await asyncio.gather(*(roundtrip(addr, p) for p in payloads))
        assert got == payloads


async def test_next_gateway_is_tried_on_refused_connect_and_on_a_non_ok_status(tmp_path: Path) -> None:
    """Site north is nearest but its gateway refuses connects, site south's answers `refused`: east serves."""
    async with two_sites(tmp_path) as s:
        north_port = await _closed_port()
        south_store = CertificateStore(s.mesh.site_ca("south"), "gw", tmp_path / "south")
        here = Locality("eu", "eu-1")

        def mesh_view():  # type: ignore[no-untyped-def]
            base = s.view()
            sites = dict(base.sites)
            sites["west"] = s.mesh.site("west", network="net-west", locality=here)
            sites["north"] = s.mesh.site("north", locality=here, gateways=(Gateway("gw", "127.0.0.1", north_port),))
            sites["south"] = s.mesh.site("south", locality=Locality("eu", "eu-2"),
                                         gateways=(Gateway("gw", "127.0.0.1", south.address[1]),))
            exports = [*base.exports.values(), export("north", "ns", "echo", 7),
                       export("south", "ns", "echo", 7, endpoint_ports=(1,))]
            return view(list(sites.values()), exports)

        south_view = Value(view([]))
        south = EastWestGateway("south", south_view, south_store.server, south_store.bundle, s.settings)
        await south.start()
        south_view.set(mesh_view())
        eg = Egress("west", south_view, s.west.client, s.west.bundle, GatewaySettings(pool_size=0))
        await eg.start()
        try:
            assert await roundtrip(eg.listeners()[KEY], b"hello") == b"hello"
            attempts = {tuple(m.labels.values()): m.value for m in eg.metrics.attempts.collect()[0].samples
                        if m.name.endswith("_total")}
            assert attempts[("gateway", "failed")] >= 1
            assert attempts[("gateway", "refused")] == 1
            assert attempts[("gateway", "ok")] == 1
        finally:
            await eg.close()
            await south.close()
            south_store.close()


async def test_listeners_follow_the_registry(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s) as eg:
        assert set(eg.listeners()) == {KEY}
        first = eg.listeners()[KEY]
        s.exports.append(export("east", "ns", "other", 80, endpoint_ports=(1,)))
        s.publish()
        async with asyncio.timeout(10):
            await wait_until(eg.listening, lambda now: set(now) == {KEY, ("ns", "other", "tcp")})
        assert set(eg.listeners()) == {KEY, ("ns", "other", "tcp")}
        assert eg.listeners()[KEY] == first  # untouched by an unrelated change
        s.exports.clear()
        s.publish()
        async with asyncio.timeout(10):
            await wait_until(eg.listening, lambda now: not now)
        assert eg.listeners() == {}
        reader_writer = asyncio.open_connection(*first)
        try:
            _, w = await reader_writer
        except ConnectionRefusedError:
            pass
        else:
            w.close()
            raise AssertionError("listener still open")


async def test_same_network_goes_direct_without_a_gateway(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        echo_port = s.exports[0].endpoints[0].ports[0].port

        def mesh_view():  # type: ignore[no-untyped-def]
            base = s.view()
            near = s.mesh.site("near", network="net-west")
            return view([*base.sites.values(), near], [export("near", "ns", "local", 9, endpoint_ports=(echo_port,))])

        eg = Egress("west", Value(mesh_view()), s.west.client, s.west.bundle, GatewaySettings())
        await eg.start()
        try:
            assert await roundtrip(eg.listeners()[("ns", "local", "tcp")], b"direct") == b"direct"
            assert eg.pools == {}
        finally:
            await eg.close()


async def test_certificate_rotation_during_a_long_transfer(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s, pool_size=0) as eg:
        addr = eg.listeners()[KEY]
        reader, writer = await asyncio.open_connection(*addr)
        block = bytes(range(256)) * 256  # 64 KiB
        blocks = 256  # 16 MiB total
        sent = hashlib.sha256()
        received = hashlib.sha256()
        got = 0

        async def read_all() -> None:
            nonlocal got
            while data := await reader.read(256 * 1024):
                received.update(data)
                got += len(data)

        reading = asyncio.create_task(read_all(), name="test-reader")
        for i in range(blocks):
            writer.write(block)
            sent.update(block)
            await writer.drain()
            if i == blocks // 2:
                old = s.east.issued.cert.serial_number, s.west.issued.cert.serial_number
                s.east.renew()
                s.west.renew()
                new = s.east.issued.cert.serial_number, s.west.issued.cert.serial_number
                assert new[0] != old[0]
                assert new[1] != old[1]
                # A new connection handshakes with the renewed certificates meanwhile (in full: west's cached
                # TLS session would carry the old ones), while the transfer goes on over the old ones.
                assert await roundtrip(addr, b"new") == b"new"
                [(fresh, _)] = next(iter(eg.pools.values()))._idle
                tls = fresh.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
                assert not tls.session_reused
                assert serial(tls.getpeercert(binary_form=True)) == new[0]  # what east's gateway presented
                assert s.gateway is not None
                seen_by_east = sorted(serial(t.transport.get_extra_info("ssl_object").getpeercert(binary_form=True))
                                      for t in s.gateway.tunnels)  # type: ignore[union-attr]
                assert seen_by_east == sorted([old[1], new[1]])  # the transfer's tunnel and the new one
        writer.write_eof()
        await reading
        writer.close()
        assert got == len(block) * blocks
        assert received.digest() == sent.digest()


def serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_the_first_client_finds_a_warm_pool(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s, pool_size=2) as eg:
        pool = next(iter(eg.pools.values()))
        async with asyncio.timeout(10):
            while pool.idle < 2:
                await asyncio.sleep(0.01)
        assert await roundtrip(eg.listeners()[KEY], b"warm") == b"warm"
        assert eg.metrics.reused._value.get() == 1
        assert pool.handshakes == 2


async def test_a_gateway_of_the_wrong_site_is_not_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The registry says east's gateway is at an address where west's own gateway answers: refused."""
    async with two_sites(tmp_path) as s:
        impostor = EastWestGateway("west", Value(s.view()), s.west.server, s.west.bundle, s.settings)
        await impostor.start()
        real_port = s.gw_port
        s.gw_port = impostor.address[1]
        s.publish()
        eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=0))
        await eg.start()
        try:
            reader, writer = await asyncio.open_connection(*eg.listeners()[KEY])
            writer.write(b"secret")
            with pytest.raises(ConnectionResetError):  # the egress resets a client it has no route for
                await reader.read()
            writer.close()
            assert eg.metrics.connections.labels("no_route")._value.get() == 1
            # Refused for being west's gateway, not for any connect failure; and said so (once: the log is
            # rate-limited). The default rules retry a failed gateway, so each of their attempts is refused.
            attempts = DEFAULT_RULES.retries.attempts
            assert eg.metrics.refusals.labels("wrong-site")._value.get() == attempts
            assert impostor.metrics.handshakes.labels("ok")._value.get() == attempts  # TLS itself went through
            lines = [r.getMessage() for r in caplog.records if r.name == "gateway.egress" and r.levelname == "WARNING"
                     and r.getMessage().startswith("refused")]
            assert lines == [f"refused the gateway at 127.0.0.1:{impostor.address[1]} for site east: peer "
                             "spiffe://mesh.example/site/west/gateway/gw is not a gateway of site east"]
        finally:
            s.gw_port = real_port
            s.publish()
            await eg.close()
            await impostor.close()


async def test_close_with_grace_lets_a_stream_finish(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=0))
        await eg.start()
        reader, writer = await asyncio.open_connection(*eg.listeners()[KEY])
        writer.write(b"first")
        assert await reader.readexactly(5) == b"first"
        assert eg.active.count == 1

        async def finish_later() -> None:
            writer.write(b" last")
            writer.write_eof()
            assert await reader.read() == b" last"
            writer.close()

        closing = asyncio.create_task(eg.close(grace=10), name="test-egress-close")
        await asyncio.sleep(0)
        await finish_later()
        await closing
        assert eg.active.count == 0


async def test_later_handshakes_resume_the_tls_session(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s, pool_size=0) as eg:
        addr = eg.listeners()[KEY]
        reader1, writer1 = await asyncio.open_connection(*addr)  # holds its tunnel: the next needs a new one
        writer1.write(b"a")
        assert await reader1.readexactly(1) == b"a"
        assert await roundtrip(addr, b"b") == b"b"
        pool = next(iter(eg.pools.values()))
        tunnel = await pool.open()
        try:
            assert tunnel.transport is not None
            assert tunnel.transport.get_extra_info("ssl_object").session_reused
        finally:
            tunnel.close()
        writer1.write_eof()
        assert await reader1.read() == b""
        writer1.close()


async def test_tunnels_past_their_max_age_are_not_reused(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s, pool_size=0, tunnel_max_age=1e-9) as eg:
        addr = eg.listeners()[KEY]
        for i in range(3):
            assert await roundtrip(addr, b"%d" % i) == b"%d" % i
        pool = next(iter(eg.pools.values()))
        assert pool.handshakes == 3
        assert pool.idle == 0
