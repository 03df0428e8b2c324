"""Access policy where streams are admitted: the east-west gateway (every stream, from the verified peer
certificate) and the egress (this site's own clients, the only check a direct same-network route gets).

A denied stream gets `forbidden` with the rule, one log line per source, service and rule, a counter; a
policy that newly denies closes the established streams it forbids within a second (unless the mesh says
to let them finish); a revoked site's tunnels close and its handshakes are refused; nothing else stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from federation.core.policy import access
from federation.core.policy.access import AccessState, Action, MeshAccess
from federation.core.records import Gateway
from federation.runtime.values import Value
from gateway.egress import Egress
from gateway.framing import ABORT_FRAME
from gateway.preamble import Request, Status
from gateway.settings import GatewaySettings
from tests.pkihelp import export, view
from tests.tunnelhelp import EchoServer, RawTunnel, TwoSites, two_sites
from tests.util import eventually


def policy(service: str, *rules: dict[str, Any]) -> access.AccessPolicy:
    ns, name = service.split("/")
    return access.from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy",
                                 "metadata": {"namespace": ns, "name": name}, "spec": {"rules": list(rules)}})


def only(*policies: access.AccessPolicy, close: bool = True, revoked: frozenset[str] = frozenset()) -> AccessState:
    return AccessState({(p.namespace, p.name): p for p in policies}, MeshAccess(Action.ALLOW, close), revoked)


NO_WEST = {"name": "no-west", "action": "Deny", "from": {"sites": ["west"]}}


async def streaming(t: RawTunnel, service: str = "echo") -> RawTunnel:
    assert (await t.request(Request("ns", service, "tcp"))).status is Status.OK
    t.send(b"running")
    assert await t.receive_frame() == b"running"
    return t


async def with_other_service(s: TwoSites) -> None:
    """A second echo service east exports, governed by no policy (what must not be disturbed)."""
    other = EchoServer()
    port = await other.start()
    s.exports.append(export("east", "ns", "other", 8, endpoint_ports=(port,)))
    s.publish()
    s._other = other  # type: ignore[attr-defined]


def denied(gateway: Any, rule: str) -> float:
    return float(gateway.authorizer.denied.labels(rule)._value.get())


async def test_a_stream_denied_by_policy_gets_forbidden_with_the_rule_and_one_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        await with_other_service(s)
        assert s.gateway is not None
        bystander = await streaming(await RawTunnel.open(s.gw_port, s.west.client), "other")
        s.access.set(only(policy("ns/echo", NO_WEST)))
        caplog.set_level(logging.WARNING, logger="gateway.authorization")
        tunnel = await RawTunnel.open(s.gw_port, s.west.client)
        for _ in range(3):  # the same peer asking again: refused each time, logged once
            resp = await tunnel.request(Request("ns", "echo", "tcp"))
            assert resp.status is Status.FORBIDDEN
            assert resp.reason == "denied by access policy: denied by rule no-west of ns/echo"
        assert (await tunnel.request(Request("ns", "other", "tcp"))).status is Status.OK  # the tunnel is kept
        assert denied(s.gateway, "ns/echo:no-west") == 3
        lines = [r.getMessage() for r in caplog.records if "denied a stream" in r.getMessage()]
        assert lines == ["gateway denied a stream from site west (spiffe://mesh.example/site/west/gateway/gw) to "
                         "ns/echo: denied by rule no-west of ns/echo (rule ns/echo:no-west)"]
        bystander.send(b" and on")
        assert await bystander.receive_frame() == b" and on"
        for t in (tunnel, bystander):
            await t.close()
        await s._other.close()  # type: ignore[attr-defined]


async def test_allow_rules_lock_a_service_down_to_the_sites_they_name(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        s.access.set(only(policy("ns/echo", {"name": "east-only", "action": "Allow", "from": {"sites": ["east"]}})))
        t = await RawTunnel.open(s.gw_port, s.west.client)
        resp = await t.request(Request("ns", "echo", "tcp"))
        assert (resp.status, resp.reason) == (Status.FORBIDDEN,
                                              "denied by access policy: no Allow rule of ns/echo matches site west")
        s.access.set(only(policy("ns/echo", {"name": "west-too", "action": "Allow", "from": {"sites": ["west"]}})))
        assert (await t.request(Request("ns", "echo", "tcp"))).status is Status.OK
        await t.close()


async def test_a_policy_that_flips_to_deny_closes_the_streams_it_forbids_within_a_second(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        await with_other_service(s)
        assert s.gateway is not None
        doomed = [await streaming(await RawTunnel.open(s.gw_port, s.west.client)) for _ in range(2)]
        bystander = await streaming(await RawTunnel.open(s.gw_port, s.west.client), "other")
        caplog.set_level(logging.WARNING, logger="gateway.authorization")
        flipped = time.monotonic()
        s.access.set(only(policy("ns/echo", NO_WEST)))
        for t in doomed:
            assert await t.until_closed(timeout=1.0) == ABORT_FRAME
        assert time.monotonic() - flipped < 1.0
        assert s.gateway.authorizer.closed.labels("ns/echo:no-west")._value.get() == 2
        lines = [r.getMessage() for r in caplog.records if "closing" in r.getMessage()]
        assert lines == ["gateway closing 2 established stream(s) from site west to ns/echo: now denied by rule "
                         "no-west of ns/echo (rule ns/echo:no-west)"]
        bystander.send(b"still here")
        assert await bystander.receive_frame() == b"still here"
        for t in (*doomed, bystander):
            await t.close()
        await s._other.close()  # type: ignore[attr-defined]


async def test_with_close_on_deny_off_established_streams_finish(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        running = await streaming(await RawTunnel.open(s.gw_port, s.west.client))
        s.access.set(only(policy("ns/echo", NO_WEST), close=False))
        await asyncio.sleep(0.3)
        running.send(b"keeps going")
        assert await running.receive_frame() == b"keeps going"
        fresh = await RawTunnel.open(s.gw_port, s.west.client)
        assert (await fresh.request(Request("ns", "echo", "tcp"))).status is Status.FORBIDDEN
        for t in (running, fresh):
            await t.close()


async def test_a_revoked_sites_tunnels_close_and_its_handshakes_are_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        assert s.gateway is not None
        running = await streaming(await RawTunnel.open(s.gw_port, s.west.client))
        idle = await RawTunnel.open(s.gw_port, s.west.client)
        await eventually(lambda: len(s.gateway.tunnels) == 2, what="both tunnels authenticated")  # type: ignore[union-attr]
        caplog.set_level(logging.WARNING, logger="gateway")
        revoked = time.monotonic()
        s.access.set(only(revoked=frozenset({"west"})))
        assert await running.until_closed(timeout=1.0) == ABORT_FRAME
        assert await idle.closed_by_peer()
        assert time.monotonic() - revoked < 1.0
        assert s.gateway.metrics.ended.labels("revoked")._value.get() == 2
        again = await RawTunnel.open(s.gw_port, s.west.client)
        resp = await again.response()
        assert resp.status is Status.FORBIDDEN
        assert resp.reason.endswith("site west is revoked by the operator")
        assert sum("is revoked by the operator: closing its 2 tunnel(s)" in r.getMessage()
                   for r in caplog.records) == 1
        for t in (running, idle, again):
            await t.close()


# ---------------------------------------------------------------- the egress: direct same-network routes


@contextlib.asynccontextmanager
async def direct_route(tmp_path: Path) -> AsyncIterator[tuple[Egress, Value[AccessState], EchoServer]]:
    """Site west's egress and a service of site north, on west's own network: routed directly."""
    async with two_sites(tmp_path) as s:
        echo = EchoServer()
        port = await echo.start()
        sites = [s.mesh.site("east", gateways=(Gateway("gw", "127.0.0.1", s.gw_port),)),
                 s.mesh.site("west", network="lan"), s.mesh.site("north", network="lan")]
        mesh = Value(view(sites, [export("north", "ns", "local", 9, endpoint_ports=(port,))]), name="mesh")
        state: Value[AccessState] = Value(AccessState(), name="access")
        eg = Egress("west", mesh, s.west.client, s.west.bundle, GatewaySettings(pool_size=0),
                    registry=CollectorRegistry(), access=state)
        await eg.start()
        tasks = [asyncio.create_task(eg.run(), name="egress"), asyncio.create_task(eg.enforce(), name="enforce")]
        try:
            yield eg, state, echo
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await eg.close()
            await echo.close()


async def test_the_egress_denies_its_own_clients_a_direct_route_the_policy_forbids(tmp_path: Path) -> None:
    async with direct_route(tmp_path) as (eg, state, echo):
        addr = eg.listeners()[("ns", "local", "tcp")]
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"hello")
        assert await reader.read(5) == b"hello"  # allowed: the mesh default
        state.set(only(policy("ns/local", {"name": "lan-only", "action": "Allow", "from": {"networks": ["dmz"]}})))
        # The running stream is closed within a second; a new client is reset before any route.
        async with asyncio.timeout(1.0):
            assert await reader.read() == b""
        writer.close()
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
        writer.close()
        assert eg.authorizer.denied.labels("ns/local:no-allow-match")._value.get() == 1
        assert eg.metrics.connections.labels("denied")._value.get() == 1
        assert echo.connections == 1  # the denied client never reached the endpoint
        await eventually(lambda: eg.active.count == 0, what="no stream left")


async def test_a_certificate_of_another_trust_domain_is_refused_though_it_chains_to_our_root(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A site CA can put any URI in a leaf (URI name constraints cannot say /site/<name>): one naming another
    trust domain verifies to the mesh root in the handshake and is refused right after, with the reason."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from federation.pki.issuing import Issued
    from gateway.tls import client_context
    from tests.pkihelp import write_issued

    async with two_sites(tmp_path) as s:
        real = s.mesh.leaf("west")
        builder = (x509.CertificateBuilder().subject_name(real.cert.subject).issuer_name(real.cert.issuer)
                   .public_key(real.key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(real.cert.not_valid_before_utc).not_valid_after(real.cert.not_valid_after_utc))
        for ext in real.cert.extensions:
            value = ext.value
            if isinstance(value, x509.SubjectAlternativeName):
                value = x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier("spiffe://other.example/site/west/gateway/gw")])
            builder = builder.add_extension(value, critical=ext.critical)
        forged = Issued(builder.sign(s.mesh.site_ca("west").key, hashes.SHA256()), real.key, real.chain)
        chain, key = write_issued(tmp_path / "foreign", forged)
        caplog.set_level(logging.WARNING, logger="gateway")
        t = await RawTunnel.open(s.gw_port, client_context(chain, key, s.west.bundle_file))
        resp = await t.response()
        assert resp.status is Status.FORBIDDEN
        assert "is outside trust domain mesh.example" in resp.reason
        assert sum("outside trust domain" in r.getMessage() for r in caplog.records) == 1
        await t.close()
