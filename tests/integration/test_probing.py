"""The prober against a real east-west gateway (real TLS from our own CA, loopback): what each answer means.

A probe is answered with the gateway's clock and opens no stream; a stream probe reaches an endpoint; the
wrong site's gateway is refused by identity; a gateway from before probes (it answers `bad request` and
closes, as the old codec did for an unknown message type) counts as alive, without a clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from federation.core.records import Gateway
from federation.runtime.values import Value
from gateway.preamble import Preamble, Request, Response, Role, Status
from gateway.probing import Prober
from gateway.settings import GatewaySettings
from tests.tunnelhelp import TwoSites, two_sites


def prober(sites: TwoSites) -> Prober:
    settings = Value(GatewaySettings(handshake_timeout=2.0, connect_timeout=2.0), name="gateway settings")
    return Prober("west", sites.mesh_value, sites.west.client, sites.west.trust, settings)


def streams(sites: TwoSites) -> float:
    assert sites.gateway is not None
    return sum(s.value for m in sites.gateway.metrics.streams.collect() for s in m.samples
               if s.name.endswith("_total"))


async def test_a_probe_gets_the_gateways_clock_and_opens_no_stream(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as sites:
        p = prober(sites)
        gw = Gateway("gw", "127.0.0.1", sites.gw_port)
        result = await p.probe("east", gw)
        assert result.ok, result
        assert result.handshake is not None
        assert result.rtt is not None
        assert result.skew is not None
        assert abs(result.skew) < 1.0
        assert streams(sites) == 0  # a probe is not a stream request
        assert sites.echo.connections == 0

        ok = await p.stream("east", gw, Request("ns", "echo", "tcp"))
        assert ok.ok, ok
        await asyncio.sleep(0.1)
        assert sites.echo.connections == 1  # the stream reached the endpoint
        missing = await p.stream("east", gw, Request("ns", "nothing", "tcp"))
        assert not missing.ok
        assert missing.stage == "answer"
        assert missing.reason.startswith("the gateway answered NO_SUCH_SERVICE: ")
        assert missing.reason.endswith("ns/nothing is not exported by east")

        wrong = await p.probe("west", gw)  # east's gateway, expected to be west's
        assert not wrong.ok
        assert wrong.stage == "identity"
        assert wrong.reason.startswith("identity: ")


async def test_a_gateway_from_before_probes_is_alive_without_a_clock(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as sites:
        async def old_gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(64)  # whatever it is: the old codec refused an unknown message type
            writer.write(Preamble(Role.SERVER).send(Response(Status.BAD_REQUEST, "bad request")))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(old_gateway, "127.0.0.1", 0, ssl=sites.east.server)
        try:
            port = server.sockets[0].getsockname()[1]
            result = await prober(sites).probe("east", Gateway("gw", "127.0.0.1", port))
            assert result.ok, result
            assert result.skew is None
            assert result.reason == "answers, but not probes (an older agent): no clock skew"
        finally:
            server.close()
            await server.wait_closed()


async def test_nothing_listening_is_a_connect_failure(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as sites:
        result = await prober(sites).probe("east", Gateway("gw", "127.0.0.1", 9))  # discard: nothing listens
        assert not result.ok
        assert (result.stage, result.reason) == ("connect", "connection refused (no gateway listening there)")
