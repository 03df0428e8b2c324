"""No tunnel outlives its peer's certificate or its peer's site in the registry (docs/security.md)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from federation.pki.issuing import issue_gateway
from gateway.framing import ABORT_FRAME
from gateway.preamble import Request, Status
from gateway.tls import client_context
from tests.integration.test_eastwest import REFUSED, _capture_every_level, echo_once  # noqa: F401
from tests.pkihelp import now, write_issued
from tests.tunnelhelp import RawTunnel, two_sites


async def streaming(t: RawTunnel) -> RawTunnel:
    """Start a stream on `t` and see one frame echoed: the stream is running."""
    assert (await t.request(Request("ns", "echo", "tcp"))).status is Status.OK
    t.send(b"running")
    assert await t.receive_frame() == b"running"
    return t


async def aborted(t: RawTunnel) -> float:
    """Wait until the gateway aborts the stream and closes the tunnel; the monotonic time it did."""
    rest = await t.until_closed()
    assert rest == ABORT_FRAME, rest
    return time.monotonic()


async def test_no_tunnel_outlives_its_peers_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two tunnels with a certificate about to expire, one streaming and one idle, and a streaming tunnel
    with a good certificate: at the notAfter the first two close (one log line), the third streams on."""
    async with two_sites(tmp_path) as s:
        short = issue_gateway(s.mesh.site_ca("west"), "gw", now(), dt.timedelta(seconds=3))
        chain, key = write_issued(tmp_path / "short", short)
        ctx = client_context(chain, key, s.west.bundle_file)
        doomed = await streaming(await RawTunnel.open(s.gw_port, ctx))
        idle = await RawTunnel.open(s.gw_port, ctx)
        good = await streaming(await RawTunnel.open(s.gw_port, s.west.client))
        assert s.gateway is not None
        assert s.gateway.active.count == 2
        left = (short.cert.not_valid_after_utc - now()).total_seconds()
        not_after = time.monotonic() + left
        assert left > 0.5  # the test's own setup fits in the certificate's lifetime
        closed = [await aborted(doomed), await closed_at(idle)]
        # At the notAfter (0.05 s for clock reads), not at the next request nor at an idle timeout (90 s).
        assert all(not_after - 0.05 <= c <= not_after + 2.0 for c in closed), (not_after, closed)
        assert s.gateway.active.count == 1
        good.send(b" and on")
        good.end()
        assert await good.receive_until_end() == b" and on"
        await good.close()
        for t in (doomed, idle):
            await t.close()
        ended = s.gateway.metrics.ended.labels("certificate_expired")._value.get()
    assert ended == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.tunnel" and "expired" in r.getMessage()]
    assert lines == [f"closing tunnel(s) from 127.0.0.1: the certificate of spiffe://mesh.example/site/west/gateway/gw"
                     f" expired at {short.cert.not_valid_after_utc}"]


async def closed_at(t: RawTunnel) -> float:
    assert await t.until_closed() == b""
    return time.monotonic()


async def test_a_site_removed_from_the_registry_loses_its_tunnels_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """West's streaming and idle tunnels close when west leaves the registry (one log line); a tunnel of
    site south streams on, and new tunnels from west are refused."""
    async with two_sites(tmp_path) as s:
        s.sites.append("south")
        s.publish()
        chain, key, _ = s.mesh.write_leaf(tmp_path / "south", "south")
        south = await streaming(await RawTunnel.open(s.gw_port, client_context(chain, key, s.west.bundle_file)))
        west_streaming = await streaming(await RawTunnel.open(s.gw_port, s.west.client))
        west_idle = await RawTunnel.open(s.gw_port, s.west.client)
        assert (await west_idle.request(Request("ns", "echo", "tcp"))).status is Status.OK
        assert await echo_once(west_idle, b"used once") == b"used once"  # between streams now
        s.sites.remove("west")
        s.publish()
        await aborted(west_streaming)
        await closed_at(west_idle)
        south.send(b" and on")
        south.end()
        assert await south.receive_until_end() == b" and on"
        assert s.gateway is not None
        assert s.gateway.metrics.ended.labels("site_removed")._value.get() == 2
        again = await RawTunnel.open(s.gw_port, s.west.client)
        assert (await again.response()).status is Status.FORBIDDEN
        for t in (south, west_streaming, west_idle, again):
            await t.close()
    lines = [r.getMessage() for r in caplog.records if r.name == REFUSED and "left the registry" in r.getMessage()]
    assert lines == ["site west left the registry: closing its 2 tunnel(s)"]
