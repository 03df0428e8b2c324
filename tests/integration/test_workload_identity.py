"""Workload identities through real tunnels: the egress names the workload behind a client (`ns/sa`) in the
preamble; the east-west gateway takes it only in the scope of the site its verified peer certificate names,
so a site vouches for its own workloads and never for another's; rules by identity deny, allow and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from federation.core.policy import access
from federation.core.policy.access import AccessState, Action, MeshAccess
from federation.core.workloads import Workloads, is_workload
from federation.runtime.values import Value
from gateway.egress import Egress
from gateway.framing import ABORT_FRAME
from gateway.preamble import Preamble, Request, Role, Status
from gateway.settings import GatewaySettings
from tests.tunnelhelp import RawTunnel, TwoSites, two_sites

TD = "spiffe://mesh.example/site"
WEST_WEB, WEST_BATCH, EAST_WEB = f"{TD}/west/ns/shop/sa/web", f"{TD}/west/ns/shop/sa/batch", f"{TD}/east/ns/shop/sa/web"


def only(*rules: dict[str, Any]) -> AccessState:
    doc = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"namespace": "ns", "name": "echo"},
           "spec": {"rules": list(rules)}}
    return AccessState({("ns", "echo"): access.from_document(doc)}, MeshAccess(Action.ALLOW, True))


def allow(*identities: str) -> dict[str, Any]:
    return {"name": "by-identity", "action": "Allow", "from": {"identities": list(identities)}}


NO_BATCH = {"name": "no-batch", "action": "Deny", "from": {"identities": [WEST_BATCH]}}


async def streaming(t: RawTunnel, workload: str | None) -> RawTunnel:
    assert (await t.request(Request("ns", "echo", "tcp", None, workload=workload))).status is Status.OK
    t.send(b"running")
    assert await t.receive_frame() == b"running"
    return t


async def test_a_site_claiming_another_sites_workload_gets_only_its_own_scope(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        s.access.set(only(allow(EAST_WEB)))  # east's web may; west presents west's certificate and says shop/web
        t = await RawTunnel.open(s.gw_port, s.west.client)
        resp = await t.request(Request("ns", "echo", "tcp", None, workload="shop/web"))
        assert (resp.status, resp.reason) == (
            Status.FORBIDDEN, f"denied by access policy: no Allow rule of ns/echo matches site west ({WEST_WEB})")
        s.access.set(only(allow(WEST_WEB)))
        assert (await t.request(Request("ns", "echo", "tcp", None, workload="shop/web"))).status is Status.OK
        t.end()
        assert await t.receive_until_end() == b""
        resp = await t.request(Request("ns", "echo", "tcp"))  # no workload named: unknown, never an Allow
        assert resp.status is Status.FORBIDDEN
        await t.close()


async def test_a_stream_denied_by_an_identity_rule_gets_forbidden_and_the_log_line_names_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        assert s.gateway is not None
        s.access.set(only(NO_BATCH))
        caplog.set_level(logging.WARNING, logger="gateway.authorization")
        t = await RawTunnel.open(s.gw_port, s.west.client)
        for workload in ("shop/batch", "shop/batch", None):  # None: unknown, so it may be batch: denied too
            resp = await t.request(Request("ns", "echo", "tcp", None, workload=workload))
            assert (resp.status, resp.reason) == (Status.FORBIDDEN,
                                                  "denied by access policy: denied by rule no-batch of ns/echo")
        web = await streaming(t, "shop/web")  # the same tunnel, another workload: allowed
        lines = [r.getMessage() for r in caplog.records if "denied a stream" in r.getMessage()]
        assert lines == [f"gateway denied a stream from site west ({WEST_BATCH}) to ns/echo: denied by rule "
                         "no-batch of ns/echo (rule ns/echo:no-batch)"]
        assert s.gateway.authorizer.denied.labels("ns/echo:no-batch")._value.get() == 3
        await web.close()


async def test_a_flip_to_deny_closes_the_open_streams_of_that_identity_within_a_second(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        assert s.gateway is not None
        batch = [await streaming(await RawTunnel.open(s.gw_port, s.west.client), "shop/batch") for _ in range(2)]
        web = await streaming(await RawTunnel.open(s.gw_port, s.west.client), "shop/web")
        caplog.set_level(logging.WARNING, logger="gateway.authorization")
        flipped = time.monotonic()
        s.access.set(only(NO_BATCH))
        for t in batch:
            assert await t.until_closed(timeout=1.0) == ABORT_FRAME
        assert time.monotonic() - flipped < 1.0
        lines = [r.getMessage() for r in caplog.records if "closing" in r.getMessage()]
        assert lines == [f"gateway closing 2 established stream(s) from site west ({WEST_BATCH}) to ns/echo: now "
                         "denied by rule no-batch of ns/echo (rule ns/echo:no-batch)"]
        web.send(b"still here")
        assert await web.receive_frame() == b"still here"
        for t in (*batch, web):
            await t.close()


def _request_with(extension: bytes) -> bytes:
    body = b"\x02ns\x04echo\x00\x03tcp\x00" + extension
    return b"\x01\x01" + struct.pack("!H", len(body)) + body


HOSTILE = [
    b"\x02\x09SHOP/web1",  # upper case
    b"\x02\x09shop/web\n",  # a trailing newline
    b"\x02\x08shop/web" + b"\x02\x09shop/web2",  # the workload twice
    b"\x02\x2espiffe://mesh.example/site/east/ns/shop/sa/web"[:48],  # a whole SPIFFE ID of another site
    b"\x02\x0d../east/x/web",
    b"\x02\x05shop/",
    b"\x02\x08shop\x00web",
    b"\x02\x20" + b"a" * 10,  # shorter than it says
]


async def test_bad_workload_bytes_are_refused_cleanly_and_nothing_else_stops(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        assert s.gateway is not None
        s.access.set(only(allow(WEST_WEB)))
        bystander = await streaming(await RawTunnel.open(s.gw_port, s.west.client), "shop/web")
        caplog.set_level(logging.WARNING, logger="gateway")
        for extension in HOSTILE:
            t = await RawTunnel.open(s.gw_port, s.west.client)
            t.writer.write(_request_with(extension))
            resp = await t.response()
            assert (resp.status, resp.reason) == (Status.BAD_REQUEST, "bad request"), extension
            assert await t.closed_by_peer()
            await t.close()
        assert s.gateway.metrics.refusals.labels("preamble")._value.get() == len(HOSTILE)
        assert sum("preamble" in r.getMessage() and "workload" in r.getMessage() for r in caplog.records) == 1
        bystander.send(b"unharmed")
        assert await bystander.receive_frame() == b"unharmed"
        await bystander.close()


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[TwoSites]:
    """One running gateway for every example of a Hypothesis test (so each example costs one handshake)."""
    async with two_sites(tmp_path) as s:
        s.access.set(only(allow(WEST_WEB)))
        yield s


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(
    st.binary(max_size=255), st.from_regex(r"\A[a-z0-9./\-]{1,40}\Z").map(str.encode),
    st.builds(lambda a, b: f"{a}/{b}".encode(), *[st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?\Z")] * 2)))
async def test_any_workload_bytes_through_a_real_tunnel_are_refused_or_taken_in_the_peers_scope(
        sites: TwoSites, value: bytes) -> None:
    assert sites.gateway is not None
    t = await RawTunnel.open(sites.gw_port, sites.west.client)
    try:
        t.writer.write(_request_with(bytes((2, len(value))) + value))
        resp = await t.response()
        if not is_workload(value.decode("latin-1")):
            assert (resp.status, resp.reason) == (Status.BAD_REQUEST, "bad request")
            assert await t.closed_by_peer()
        elif value == b"shop/web":
            assert resp.status is Status.OK
        else:  # a valid name, in west's scope: not west's web, so no Allow matches
            scoped = f"{TD}/west/ns/{value.decode().replace('/', '/sa/')}"
            assert (resp.status, resp.reason) == (
                Status.FORBIDDEN, f"denied by access policy: no Allow rule of ns/echo matches site west ({scoped})")
    finally:
        await t.close()


# ---------------------------------------------------------------- the egress names its clients' workloads


@contextlib.asynccontextmanager
async def egress_of_west(s: TwoSites, state: Value[AccessState] | None = None) -> AsyncIterator[Egress]:
    eg = Egress("west", s.mesh_value, s.west.client, s.west.bundle, GatewaySettings(pool_size=1),
                registry=CollectorRegistry(), access=state)
    eg.workloads = Value(Workloads({"127.0.0.2": "shop/web", "127.0.0.3": "shop/batch"}), name="workloads")
    await eg.start()
    tasks = [asyncio.create_task(eg.run(), name="egress"), asyncio.create_task(eg.enforce(), name="enforce")]
    try:
        yield eg
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await eg.close()


async def echo_from(addr: tuple[str, int], source: str) -> bytes:
    reader, writer = await asyncio.open_connection(*addr, local_addr=(source, 0))
    try:
        writer.write(b"ping")
        writer.write_eof()
        return await reader.read()
    except ConnectionResetError:
        return b"reset"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_the_egress_names_the_workload_behind_each_client_and_the_gateway_scopes_it(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s, egress_of_west(s) as eg:
        s.access.set(only(allow(WEST_WEB)))
        addr = eg.listeners()[("ns", "echo", "tcp")]
        assert await echo_from(addr, "127.0.0.2") == b"ping"  # shop/web: allowed at east's gateway
        assert await echo_from(addr, "127.0.0.3") == b"reset"  # shop/batch: forbidden, no other route
        assert await echo_from(addr, "127.0.0.4") == b"reset"  # no workload known: never an Allow


async def test_the_egress_denies_by_identity_before_any_route_and_closes_on_a_flip(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        state: Value[AccessState] = Value(AccessState(), name="west's access state")
        async with egress_of_west(s, state) as eg:
            addr = eg.listeners()[("ns", "echo", "tcp")]
            streams = []
            for source in ("127.0.0.2", "127.0.0.3"):
                reader, writer = await asyncio.open_connection(*addr, local_addr=(source, 0))
                writer.write(b"hi")
                assert await reader.readexactly(2) == b"hi"
                streams.append((reader, writer))
            state.set(only(NO_BATCH))
            (_, web), (batch, batch_w) = streams
            async with asyncio.timeout(1.0):  # batch's stream closed within a second
                with contextlib.suppress(ConnectionResetError):
                    assert await batch.read() == b""
            web.write(b"on")
            assert await streams[0][0].readexactly(2) == b"on"
            assert await echo_from(addr, "127.0.0.3") == b"reset"  # a new batch client: reset before any route
            assert eg.authorizer.denied.labels("ns/echo:no-batch")._value.get() == 1
            assert eg.authorizer.closed.labels("ns/echo:no-batch")._value.get() == 1
            for _, w in streams:
                w.close()
                batch_w.close()


def test_a_request_naming_a_workload_is_what_the_egress_sends() -> None:
    """The bytes of HOSTILE's neighbours: a valid workload extension, as the egress encodes it."""
    wire = Preamble(Role.CLIENT).send(Request("ns", "echo", "tcp", None, workload="shop/web"))
    assert wire == _request_with(b"\x02\x08shop/web")


class OldGateway:
    """A gateway from before preamble extensions, as the peer sees it: a request with any byte after the hostname
    gets `bad request` and the tunnel closed (what that decoder did); others get ok and an echo of each frame."""

    def __init__(self) -> None:
        self.requests: list[str | None] = []
        self.server: asyncio.Server | None = None

    async def start(self, context: Any) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from gateway.preamble import NEED_DATA, Response

        try:
            while True:
                p = Preamble(Role.SERVER)
                while (event := p.next_event()) is NEED_DATA:
                    data = await reader.read(4096)
                    if not data:
                        return
                    p.receive_data(data)
                assert isinstance(event, Request)
                self.requests.append(event.workload)
                if event.workload is not None:
                    writer.write(Preamble(Role.SERVER).send(Response(Status.BAD_REQUEST, "bad request")))
                    return
                writer.write(Preamble(Role.SERVER).send(Response(Status.OK)))
                while (n := struct.unpack("!I", await reader.readexactly(4))[0]) != 0:  # echo until END
                    writer.write(struct.pack("!I", n) + await reader.readexactly(n))
                writer.write(struct.pack("!I", 0))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_gateway_older_than_extensions_is_asked_again_without_the_workload(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        old = OldGateway()
        s.gw_port = await old.start(s.east.server)  # east's gateway, as the view names it, is the old one
        s.publish()
        try:
            async with egress_of_west(s) as eg:
                addr = eg.listeners()[("ns", "echo", "tcp")]
                assert await echo_from(addr, "127.0.0.2") == b"ping"  # refused with the workload, then ok without
                assert await echo_from(addr, "127.0.0.2") == b"ping"
                assert old.requests == ["shop/web", None, None]  # remembered: not asked with it again
        finally:
            await old.close()


async def test_a_direct_same_network_route_is_decided_by_identity_at_the_egress(tmp_path: Path) -> None:
    from tests.integration.test_access_control import direct_route, policy
    from tests.integration.test_access_control import only as only_policies

    async with direct_route(tmp_path) as (eg, state, echo):
        eg.workloads = Value(Workloads({"127.0.0.2": "shop/web", "127.0.0.3": "shop/batch"}), name="workloads")
        state.set(only_policies(policy("ns/local", NO_BATCH)))
        addr = eg.listeners()[("ns", "local", "tcp")]
        assert await echo_from(addr, "127.0.0.2") == b"ping"
        assert await echo_from(addr, "127.0.0.3") == b"reset"  # batch: reset before any connect
        assert await echo_from(addr, "127.0.0.4") == b"reset"  # unknown: may be batch, so the Deny matches
        assert echo.connections == 1
        assert eg.authorizer.denied.labels("ns/local:no-batch")._value.get() == 2
