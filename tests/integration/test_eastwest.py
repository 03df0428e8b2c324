"""The east-west gateway on loopback with real TLS: streams, tunnel reuse, and every hostile input refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import ssl
from pathlib import Path

import pytest

from federation.pki.issuing import issue_gateway
from gateway.preamble import Request, Status
from gateway.tls import client_context
from tests.pkihelp import Mesh, export, forge_leaf, now, write_issued
from tests.tunnelhelp import RawTunnel, TwoSites, two_sites

REFUSED = "gateway.eastwest"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Refusal lines of the gateway; each must be a WARNING (the capture takes every level, so one at INFO
    or DEBUG would be seen and fail here)."""
    records = [r for r in caplog.records if r.name == REFUSED and r.getMessage().startswith("refused")]
    assert [r.levelname for r in records] == ["WARNING"] * len(records), [(r.levelname, r.getMessage()) for r in records]
    return [r.getMessage() for r in records]


@pytest.fixture(autouse=True)
def _capture_every_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")


async def echo_once(t: RawTunnel, payload: bytes) -> bytes:
    t.send(payload)
    t.end()
    return await t.receive_until_end()


async def test_streams_relay_both_ways_and_the_tunnel_is_reused(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        t = await RawTunnel.open(s.gw_port, s.west.client)
        for i in range(3):
            assert (await t.request(Request("ns", "echo", "tcp"))).status is Status.OK
            assert await echo_once(t, b"hello %d" % i * 1000) == b"hello %d" % i * 1000
        assert s.echo.connections == 3
        await t.close()


async def test_unknown_service_is_refused_and_the_tunnel_stays_usable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with two_sites(tmp_path) as s:
        t = await RawTunnel.open(s.gw_port, s.west.client)
        resp = await t.request(Request("ns", "nope", "tcp"))
        assert resp.status is Status.NO_SUCH_SERVICE
        assert "not exported by east" in resp.reason
        assert (await t.request(Request("ns", "echo", 7))).status is Status.OK
        assert await echo_once(t, b"x") == b"x"
        await t.close()
    assert len(refusals(caplog)) == 1


async def test_a_refusing_endpoint_is_answered_refused(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        s.exports[0] = export("east", "ns", "echo", 7, endpoint_ports=(1,))
        s.publish()
        t = await RawTunnel.open(s.gw_port, s.west.client)
        assert (await t.request(Request("ns", "echo", "tcp"))).status is Status.REFUSED
        await t.close()


async def _hostile(s: TwoSites, caplog: pytest.LogCaptureFixture, attack: object, reason: str) -> None:
    """Run `attack` while a good tunnel streams; the attack is refused once, the good stream untouched."""
    good = await RawTunnel.open(s.gw_port, s.west.client)
    assert (await good.request(Request("ns", "echo", "tcp"))).status is Status.OK
    good.send(b"before")
    await attack()  # type: ignore[operator]
    good.send(b" after")
    good.end()
    assert await good.receive_until_end() == b"before after"
    await good.close()
    lines = refusals(caplog)
    assert len(lines) == 1, lines
    assert reason in lines[0]


async def test_plaintext_instead_of_a_client_hello(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        async def attack() -> None:
            t = await RawTunnel.open(s.gw_port, None)
            t.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await t.closed_by_peer()
            await t.close()
        await _hostile(s, caplog, attack, "TLS handshake failed")


async def _tls_attack(s: TwoSites, ctx: ssl.SSLContext, seen: list[str] | None = None,
                      source: str | None = None) -> None:
    """Connect with `ctx` (from loopback address `source`) and append to `seen` what the client was told:
    the TLS alert's reason, or "EOF"."""
    seen = seen if seen is not None else []
    try:
        t = await RawTunnel.open(s.gw_port, ctx, source)
    except ssl.SSLError as exc:  # an alert during the client's own handshake (e.g. protocol_version)
        seen.append(str(exc.reason))
        return
    except ConnectionError:
        seen.append("EOF")
        return
    # TLS 1.3: the client finishes first, so the server's verdict arrives as an alert on the next read.
    t.writer.write(b"\x01")
    try:
        async with asyncio.timeout(5):
            while await t.reader.read(1024):
                pass
        seen.append("EOF")
    except ssl.SSLError as exc:
        seen.append(str(exc.reason))
    except ConnectionError:
        seen.append("EOF")
    await t.close()


async def _alert_for(s: TwoSites, caplog: pytest.LogCaptureFixture, ctx: ssl.SSLContext, reason: str) -> str:
    seen: list[str] = []
    await _hostile(s, caplog, lambda: _tls_attack(s, ctx, seen), reason)
    return seen[0]


async def test_client_without_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=str(s.west.bundle_file))
        alert = await _alert_for(s, caplog, ctx, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        assert alert == "TLSV13_ALERT_CERTIFICATE_REQUIRED"  # RFC 8446 4.4.2.4


async def test_certificate_from_another_ca(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        other = Mesh()
        chain, key, _ = other.write_leaf(tmp_path / "other", "west")
        ctx = client_context(chain, key, s.west.bundle_file)
        alert = await _alert_for(s, caplog, ctx, "certificate not accepted: unable to get local issuer")
        assert alert == "TLSV1_ALERT_UNKNOWN_CA"


async def test_expired_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        old = issue_gateway(s.mesh.site_ca("west"), "gw", now() - dt.timedelta(days=2), dt.timedelta(hours=1))
        chain, key = write_issued(tmp_path / "expired", old)
        ctx = client_context(chain, key, s.west.bundle_file)
        alert = await _alert_for(s, caplog, ctx, "certificate has expired")
        assert alert == "SSLV3_ALERT_CERTIFICATE_EXPIRED"


async def test_certificate_not_yet_valid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        early = issue_gateway(s.mesh.site_ca("west"), "gw", now() + dt.timedelta(days=2), dt.timedelta(hours=1))
        chain, key = write_issued(tmp_path / "early", early)
        ctx = client_context(chain, key, s.west.bundle_file)
        alert = await _alert_for(s, caplog, ctx, "certificate is not yet valid")
        assert alert == "SSLV3_ALERT_BAD_CERTIFICATE"


async def test_a_tls12_client_is_told_the_protocol_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with two_sites(tmp_path) as s:
        ctx = client_context(s.west.chain_file, s.west.key_file, s.west.bundle_file)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        alert = await _alert_for(s, caplog, ctx, "UNSUPPORTED_PROTOCOL")
        assert alert == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest.mark.parametrize(("who", "alert"), [
    ("no certificate", "alert certificate required:"),
    ("another mesh's certificate", "alert unknown ca:"),
])
async def test_openssl_s_client_sees_the_alert(tmp_path: Path, who: str, alert: str) -> None:
    """What an operator sees probing the gateway by hand with `openssl s_client`."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    async with two_sites(tmp_path) as s:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{s.gw_port}", "-tls1_3", "-CAfile",
                str(s.west.bundle_file)]
        if who != "no certificate":
            chain, key, _ = Mesh().write_leaf(tmp_path / "other", "west")
            argv += ["-cert", str(chain), "-cert_chain", str(chain), "-key", str(key)]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(10):  # stdin stays open: only the server's verdict ends s_client
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 1
        assert alert in err.decode(), err.decode()


async def test_site_a_claiming_to_be_site_b(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """West's CA signs a leaf claiming east: the handshake verifies to the root, the identity check refuses."""
    async with two_sites(tmp_path) as s:
        chain, key = write_issued(tmp_path / "forged", forge_leaf(s.mesh, signer="west", claimed="east"))
        ctx = client_context(chain, key, s.west.bundle_file)

        async def attack() -> None:
            t = await RawTunnel.open(s.gw_port, ctx)
            resp = await t.response()
            assert resp.status is Status.FORBIDDEN
            # The handshake verified to the mesh root, so no TLS alert fits: the preamble says why.
            assert resp.reason.startswith("identity not accepted: peer spiffe://mesh.example/site/east/")
            assert "does not verify through the CA that site east registered" in resp.reason
            assert await t.closed_by_peer()
            await t.close()
        await _hostile(s, caplog, attack, "does not verify through the CA that site east registered")


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x01\x01\xff\xff", "over the limit"),
    (b"\x01\x01\x00\x03\x02NS", "not a valid name"),
    (b"\x02garbage", "version"),
])
async def test_bad_preambles(tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes, reason: str) -> None:
    async with two_sites(tmp_path) as s:
        async def attack() -> None:
            t = await RawTunnel.open(s.gw_port, s.west.client)
            t.writer.write(data)
            assert (await t.response()).status is Status.BAD_REQUEST
            assert await t.closed_by_peer()
            await t.close()
        await _hostile(s, caplog, attack, reason)


async def test_preamble_that_never_finishes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        async def attack() -> None:
            t = await RawTunnel.open(s.gw_port, s.west.client)
            t.writer.write(b"\x01\x01\x00\x20\x02ns")
            assert await t.closed_by_peer()
            await t.close()
        await _hostile(s, caplog, attack, "preamble did not finish in time")


async def test_service_not_exported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        async def attack() -> None:
            t = await RawTunnel.open(s.gw_port, s.west.client)
            assert (await t.request(Request("kube-system", "secrets", 443))).status is Status.NO_SUCH_SERVICE
            await t.close()
        await _hostile(s, caplog, attack, "kube-system/secrets is not exported by east")


async def test_renewal_changes_new_handshakes_only(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        first = await RawTunnel.open(s.gw_port, s.west.client)
        assert (await first.request(Request("ns", "echo", "tcp"))).status is Status.OK
        first.send(b"one")
        old_serial = s.east.issued.cert.serial_number
        s.east.renew()
        s.west.renew()
        assert s.east.issued.cert.serial_number != old_serial
        second = await RawTunnel.open(s.gw_port, s.west.client)
        peer = second.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        from cryptography import x509

        assert x509.load_der_x509_certificate(peer).serial_number == s.east.issued.cert.serial_number
        assert (await second.request(Request("ns", "echo", "tcp"))).status is Status.OK
        assert await echo_once(second, b"two") == b"two"
        first.send(b" still")
        first.end()
        assert await first.receive_until_end() == b"one still"
        await first.close()
        await second.close()
    assert s.east.renewals == 1


def test_seconds_to_renewal_is_half_the_lifetime(tmp_path: Path) -> None:
    from gateway.tls import CertificateStore

    t0 = now()
    clock = [t0]
    store = CertificateStore(Mesh().site_ca("east"), "gw", tmp_path, dt.timedelta(hours=24), lambda: clock[0])
    # Leaves are backdated a little; renewal is at the midpoint of the validity window.
    assert 12 * 3600 - 600 < store.seconds_to_renewal() <= 12 * 3600
    clock[0] = t0 + dt.timedelta(hours=13)
    assert store.seconds_to_renewal() == 0
    import stat

    assert stat.S_IMODE(store.key_file.stat().st_mode) == 0o600
    store.close()


async def test_site_not_in_the_registry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with two_sites(tmp_path) as s:
        chain, key, _ = s.mesh.write_leaf(tmp_path / "north", "north")
        ctx = client_context(chain, key, s.west.bundle_file)

        async def attack() -> None:
            t = await RawTunnel.open(s.gw_port, ctx)
            resp = await t.response()
            assert resp.status is Status.FORBIDDEN
            assert resp.reason.endswith("claims site north, which is not in the registry")
            assert await t.closed_by_peer()
            await t.close()
        await _hostile(s, caplog, attack, "claims site north, which is not in the registry")


async def test_workers_share_the_port_with_so_reuseport(tmp_path: Path) -> None:
    import dataclasses

    from gateway.eastwest import EastWestGateway

    async with two_sites(tmp_path) as s:
        assert s.gateway is not None
        first = EastWestGateway("east", s.mesh_value, s.east.server, s.east.bundle,
                                dataclasses.replace(s.settings, workers=2))
        await first.start()
        port = first.address[1]
        second = EastWestGateway("east", s.mesh_value, s.east.server, s.east.bundle,
                                 dataclasses.replace(s.settings, workers=2, listen_port=port))
        await second.start()
        try:
            s.gw_port = port
            for _ in range(4):
                t = await RawTunnel.open(port, s.west.client)
                assert (await t.request(Request("ns", "echo", "tcp"))).status is Status.OK
                assert await echo_once(t, b"w") == b"w"
                await t.close()
        finally:
            await first.close()
            await second.close()


async def test_the_store_renews_by_itself(tmp_path: Path) -> None:
    import asyncio

    from gateway.tls import CertificateStore

    store = CertificateStore(Mesh().site_ca("east"), "gw", tmp_path, dt.timedelta(seconds=1))
    task = asyncio.create_task(store.run(min_interval=0.05), name="test-renewer")
    try:
        async with asyncio.timeout(10):
            while store.renewals < 2:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.close()


async def test_an_endpoint_that_refused_is_skipped_while_others_serve(tmp_path: Path) -> None:
    async with two_sites(tmp_path) as s:
        echo_port = s.exports[0].endpoints[0].ports[0].port
        s.exports[0] = export("east", "ns", "echo", 7, endpoint_ports=(1, echo_port))
        s.publish()
        t = await RawTunnel.open(s.gw_port, s.west.client)
        for i in range(4):
            assert (await t.request(Request("ns", "echo", "tcp"))).status is Status.OK
            assert await echo_once(t, b"%d" % i) == b"%d" % i
        await t.close()
        assert s.echo.connections == 4


async def test_idle_streams_and_idle_tunnels_are_closed(tmp_path: Path) -> None:
    import dataclasses

    async with two_sites(tmp_path) as s:
        assert s.gateway is not None
        s.live.set(dataclasses.replace(s.settings, idle_timeout=0.2, tunnel_idle_timeout=0.3))  # a reload
        quiet_stream = await RawTunnel.open(s.gw_port, s.west.client)
        assert (await quiet_stream.request(Request("ns", "echo", "tcp"))).status is Status.OK
        quiet_tunnel = await RawTunnel.open(s.gw_port, s.west.client)
        assert await quiet_stream.closed_by_peer()
        assert await quiet_tunnel.closed_by_peer()
        await quiet_stream.close()
        await quiet_tunnel.close()


async def test_stream_bytes_sent_with_the_request_are_relayed_after_the_connect(tmp_path: Path) -> None:
    from gateway.framing import END_FRAME, header
    from gateway.preamble import Preamble, Role

    async with two_sites(tmp_path) as s:
        t = await RawTunnel.open(s.gw_port, s.west.client)
        t.writer.write(Preamble(Role.CLIENT).send(Request("ns", "echo", "tcp")) + header(5) + b"early" + END_FRAME)
        assert (await t.response()).status is Status.OK
        assert await t.receive_until_end() == b"early"
        await t.close()


async def test_this_module_runs_on_the_stdlib_loop() -> None:
    """The uvloop folder re-runs some of these tests there; here they must exercise start_tls."""
    import asyncio

    assert isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)


def _no_certificate(s: TwoSites) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(s.west.bundle_file))
    return ctx


async def test_a_mixed_flood_logs_one_line_per_kind_and_host(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Six kinds of attack from one host, three times each and varied by what the peer controls, then one
    kind from five more hosts: exactly one line per kind of reason and host."""
    async with two_sites(tmp_path) as s:
        other = Mesh()
        chain, key, _ = other.write_leaf(tmp_path / "other", "west")
        foreign = client_context(chain, key, s.west.bundle_file)
        chain, key = write_issued(tmp_path / "forged", forge_leaf(s.mesh, signer="west", claimed="east"))
        forged = client_context(chain, key, s.west.bundle_file)

        async def refused_identity(ctx: ssl.SSLContext) -> None:
            t = await RawTunnel.open(s.gw_port, ctx)
            assert (await t.response()).status is Status.FORBIDDEN
            assert await t.closed_by_peer()
            await t.close()

        for i in range(3):
            await _tls_attack(s, _no_certificate(s))
            await _tls_attack(s, foreign)
            chain, key, _ = s.mesh.write_leaf(tmp_path / f"north{i}", f"north{i}")
            await refused_identity(client_context(chain, key, s.west.bundle_file))
            await refused_identity(forged)
            t = await RawTunnel.open(s.gw_port, s.west.client)
            assert (await t.request(Request("kube-system", f"secret-{i}", 443))).status is Status.NO_SUCH_SERVICE
            await t.close()
            t = await RawTunnel.open(s.gw_port, s.west.client)
            t.writer.write(b"\x01\x01\x00\x04\x03NS%d" % i)  # a namespace that is not a DNS label
            assert (await t.response()).status is Status.BAD_REQUEST
            assert await t.closed_by_peer()
            await t.close()
        hosts = [f"127.0.0.{n}" for n in range(2, 7)]
        for _ in range(2):
            for host in hosts:
                await _tls_attack(s, _no_certificate(s), source=host)
        west, east = "spiffe://mesh.example/site/west/gateway/gw", "spiffe://mesh.example/site/east/gateway/gw"
        lines = refusals(caplog)
        unverified = [line for line in lines if "does not verify" in line]
        assert len(unverified) == 1
        assert sorted(lines) == sorted([
            "refused handshake from 127.0.0.1: TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE",
            "refused handshake from 127.0.0.1: certificate not accepted: unable to get local issuer certificate",
            "refused identity from 127.0.0.1: peer spiffe://mesh.example/site/north0/gateway/gw claims site north0,"
            " which is not in the registry",
            unverified[0],
            f"refused stream from 127.0.0.1: {west}: kube-system/secret-0 is not exported by east",
            "refused preamble from 127.0.0.1: preamble namespace b'NS0' is not a valid name",
            *(f"refused handshake from {h}: TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE" for h in hosts),
        ])
        assert unverified[0].startswith(f"refused identity from 127.0.0.1: peer {east} does not verify through the CA")
