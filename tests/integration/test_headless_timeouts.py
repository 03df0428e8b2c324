"""A traffic policy's timeouts on the listeners of remote headless endpoints, through real tunnels: each
gateway within `connectPerTry`, all within `connect`, `idle`, `maxConnectionDuration`; and no failover to
another site (the client asked for that one endpoint)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from federation.core.records import Gateway
from federation.core.view import MeshView
from gateway.headless import HostKey, HostListeners
from tests.integration.policylab import Lab, NamedServer, lab, who
from tests.integration.test_traffic_enforced import EU1
from tests.util import eventually

HOST: HostKey = ("shop", "web", "tcp", "east", "127-0-0-1")
"""East's one endpoint by its name (it has no hostname: its address, dashed)."""


@contextlib.asynccontextmanager
async def endpoint_listener(it: Lab) -> AsyncIterator[tuple[str, int]]:
    """A listener of east's endpoint as the headless listeners bind it, routed by their code."""
    assert it.egress is not None
    listeners = HostListeners(it.egress, it.egress.listening)  # the table is not read: bound by hand here
    server = await asyncio.get_running_loop().create_server(listeners._factory(HOST), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A port that accepts TCP and then says nothing (a hung host: the TLS handshake never ends)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.transport.abort()
        server.close()
        await server.wait_closed()


def with_gateways(it: Lab, site: str, gateways: tuple[Gateway, ...]) -> None:
    mesh = it.view_value.get()
    sites = {**mesh.sites, site: dataclasses.replace(mesh.sites[site], gateways=gateways)}
    it.view_value.set(MeshView(sites=sites, exports=mesh.exports))


@pytest.mark.timeout(60)
async def test_each_gateway_gets_connect_per_try_and_the_client_connect_in_all(tmp_path: Path) -> None:
    """A hung first gateway costs `connectPerTry`, not the gateway's handshake timeout; with every gateway
    hung the client is reset after `connect`, and never sent to edge, which serves the same service."""
    async with lab(tmp_path) as it, black_hole() as hole:
        east = await it.add("east", [NamedServer("east")], EU1)
        await it.add("edge", [NamedServer("edge")], EU1)
        await it.start_egress(EU1, handshake_timeout=10.0)
        real = Gateway("gw", "127.0.0.1", east.gateway_port)
        with_gateways(it, "east", (Gateway("hung", "127.0.0.1", hole), real))
        it.set_policy("timeouts: {connect: 2s, connectPerTry: 300ms}")
        async with endpoint_listener(it) as addr:
            start = time.monotonic()
            assert await who(addr) == "east"
            assert time.monotonic() - start < 2.0  # the 10 s handshake timeout was not waited for
            assert it.attempts("gateway", "timeout") == 1
            with_gateways(it, "east", tuple(Gateway(f"hung-{i}", "127.0.0.1", hole) for i in range(4)))
            it.set_policy("timeouts: {connect: 500ms, connectPerTry: 400ms}")
            start = time.monotonic()
            assert await who(addr) == ""  # reset: no other site's endpoint will do
            took = time.monotonic() - start
            assert 0.45 <= took < 1.3, took  # not 4 x 400 ms: the total ends it


@pytest.mark.timeout(60)
async def test_idle_and_max_connection_duration_end_an_endpoint_connection(tmp_path: Path) -> None:
    async with lab(tmp_path) as it:
        await it.add("east", [NamedServer("east")], EU1)
        await it.start_egress(EU1)
        async with endpoint_listener(it) as addr:
            it.set_policy("timeouts: {idle: 300ms}")
            reader, writer = await asyncio.open_connection(*addr)
            assert await reader.readline() == b"east\n"
            start = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed for idling, not the gateway's hour
            assert time.monotonic() - start >= 0.25
            writer.close()

            it.set_policy("timeouts: {maxConnectionDuration: 1s}")
            reader, writer = await asyncio.open_connection(*addr)
            assert await reader.readline() == b"east\n"
            start, echoed = time.monotonic(), 0
            with contextlib.suppress(ConnectionError):
                while time.monotonic() - start < 5:  # busy all along: only the duration can end it
                    writer.write(b"ping\n")
                    if await asyncio.wait_for(reader.readline(), 5) != b"ping\n":
                        break
                    echoed += 1
                    await asyncio.sleep(0.05)
            took = time.monotonic() - start
            assert 0.95 <= took < 3.0, took
            assert echoed >= 10
            assert it.action("max_duration") == 1
            writer.close()
            await eventually(lambda: it.sites["east"].servers[0].open == 0, what="east's connections to end")
