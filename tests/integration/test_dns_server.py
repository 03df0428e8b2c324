"""The DNS server on real loopback sockets, asked by dnspython and by dig, fed by a real etcd."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest
from prometheus_client import CollectorRegistry

from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from federation.core.view import MeshView
from federation.dns.server import DnsServer
from federation.dns.settings import DnsSettings
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, Put
from federation.registry.mirror import Mirror
from federation.runtime.values import Readable, Value
from tests.dnshelp import export, site, start_upstream, view

VIPS = ({("shop", "web"): ("240.240.0.7", "fd6d:6573:6866:6564::7")})
BIG = [f"10.9.{i // 200}.{i % 200 + 1}" for i in range(60)]


def mesh() -> MeshView:
    return view(
        [site("east", "us", "a"), site("west", "us", "b")],
        [
            export("east", "shop", "web", ["10.0.0.1"]),
            export("west", "shop", "db", ["10.1.0.1", "10.1.0.2"], headless=True, hostnames=["db-0", "db-1"]),
            export("east", "shop", "big", BIG, headless=True),
        ],
    )


@asynccontextmanager
async def serving(v: MeshView | None = None, mesh: Readable[MeshView] | None = None,
                  **kw: object) -> AsyncIterator[DnsServer]:
    """A DNS server answering `v` (fed by hand), or following the `mesh` holder (as the agent runs it)."""
    settings = DnsSettings(udp=("127.0.0.1:0",), tcp=("127.0.0.1:0",), **kw)  # type: ignore[arg-type]
    server = DnsServer(settings, local_site="east", mesh=mesh, vips=Value(VIPS))
    await server.start()
    follower = asyncio.create_task(server.run(), name="dns-follow") if mesh is not None else None
    try:
        if v is not None:
            feed(server, v)
        yield server
    finally:
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        await server.close()


def feed(server: DnsServer, v: MeshView) -> None:
    server.update(v, vips=VIPS)


async def ask(server: DnsServer, name: str, rdtype: str = "A", *, tcp: bool = False,
              edns: int = -1) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns)
    if tcp:
        host, port = server.tcp_addresses[0]
        return await dns.asyncquery.tcp(q, host, port=port, timeout=5)
    host, port = server.udp_addresses[0]
    return await dns.asyncquery.udp(q, host, port=port, timeout=5)


def texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    return [rd.to_text() for rrset in getattr(msg, section) for rd in rrset]


async def dig(server: DnsServer, *args: str) -> str:
    host, port = server.udp_addresses[0]
    proc = await asyncio.create_subprocess_exec(
        "dig", f"@{host}", "-p", str(port), "+tries=1", "+time=3", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_every_record_type_with_dnspython_over_udp_and_tcp() -> None:
    async with serving(mesh()) as server:
        assert server.udp_addresses[0][1] == server.tcp_addresses[0][1]  # same port for TC fallback
        await check_with_dnspython(server)


async def check_with_dnspython(server: DnsServer) -> None:
    """Every record type of mesh(), over UDP and TCP."""
    for tcp in (False, True):
        assert texts(await ask(server, "web.shop.svc.clusterset.local", tcp=tcp)) == ["240.240.0.7"]
        assert texts(await ask(server, "web.shop.svc.clusterset.local", "AAAA", tcp=tcp)) == [
            "fd6d:6573:6866:6564::7"]
        assert texts(await ask(server, "db.shop.svc.clusterset.local", tcp=tcp)) == ["10.1.0.1", "10.1.0.2"]
        srv = await ask(server, "_http._tcp.db.shop.svc.clusterset.local", "SRV", tcp=tcp)
        assert texts(srv) == ["0 1 8080 db-0.west.db.shop.svc.clusterset.local.",
                              "0 1 8080 db-1.west.db.shop.svc.clusterset.local."]
        assert texts(await ask(server, "db-1.west.db.shop.svc.clusterset.local", tcp=tcp)) == ["10.1.0.2"]
        pinned = await ask(server, "east.web.shop.svc.clusterset.local", tcp=tcp)
        assert pinned.rcode() == dns.rcode.NXDOMAIN  # site pinning is off by default (KEP-1645)
        bare = await ask(server, "db.shop.svc.clusterset.local", "SRV", tcp=tcp)
        assert texts(bare) == ["0 50 8080 db-0.west.db.shop.svc.clusterset.local.",
                               "0 50 8080 db-1.west.db.shop.svc.clusterset.local."]
        ns = await ask(server, "clusterset.local", "NS", tcp=tcp)
        assert texts(ns) == ["ns.clusterset.local."]
        assert texts(ns, "additional") == ["127.0.0.1"]  # the address the server listens on
        assert texts(await ask(server, "dns-version.clusterset.local", "TXT", tcp=tcp)) == ['"1.0.0"']
        assert texts(await ask(server, "7.0.240.240.in-addr.arpa", "PTR", tcp=tcp)) == [
            "web.shop.svc.clusterset.local."]
        soa = await ask(server, "clusterset.local", "SOA", tcp=tcp)
        assert soa.answer[0][0].minimum == 5
        nx = await ask(server, "nope.shop.svc.clusterset.local", tcp=tcp)
        assert nx.rcode() == dns.rcode.NXDOMAIN
        assert texts(nx, "authority")[0].startswith("ns.clusterset.local. hostmaster.clusterset.local.")
        nodata = await ask(server, "web.shop.svc.clusterset.local", "TXT", tcp=tcp)
        assert nodata.rcode() == dns.rcode.NOERROR
        assert nodata.answer == []


@pytest.mark.parametrize("signed", [False, True])
async def test_dns_update_gets_notimp_over_udp_and_tcp(signed: bool) -> None:
    """A dynamic-update client (RFC 2136) is told the server does not do UPDATE, not that it sent garbage."""
    keyring = dns.tsigkeyring.from_text({"ddns-key.": "c2VjcmV0c2VjcmV0c2VjcmV0"}) if signed else None
    async with serving(mesh()) as server:
        for tcp in (False, True):
            update = dns.update.UpdateMessage("clusterset.local", keyring=keyring)
            update.replace("web.shop.svc", 5, "A", "10.0.0.9")
            host, port = (server.tcp_addresses if tcp else server.udp_addresses)[0]
            wire = await asyncio.to_thread(_exchange, update.to_wire(), host, port, tcp)
            resp = dns.message.from_wire(wire, keyring=False)  # we hold no key, so the answer is unsigned
            assert resp.id == update.id
            assert resp.opcode() == dns.opcode.UPDATE
            assert resp.rcode() == dns.rcode.NOTIMP
        assert texts(await ask(server, "web.shop.svc.clusterset.local")) == ["240.240.0.7"]  # unchanged


def _exchange(wire: bytes, host: str, port: int, tcp: bool) -> bytes:
    """One request and its response, unparsed (RFC 1035 4.2: TCP messages carry a 2-byte length)."""
    if tcp:
        with socket.create_connection((host, port), timeout=5) as sock, sock.makefile("rb") as f:
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            return f.read(int.from_bytes(f.read(2), "big"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(wire, (host, port))
        return sock.recv(65535)


async def test_nsupdate_is_told_notimp() -> None:
    if shutil.which("nsupdate") is None:
        pytest.skip("nsupdate (Debian bind9-dnsutils) is not installed")
    async with serving(mesh()) as server:
        host, port = server.udp_addresses[0]
        proc = await asyncio.create_subprocess_exec(
            "nsupdate", "-t", "5", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        script = (f"server {host} {port}\nzone clusterset.local\n"
                  "update add web.shop.svc.clusterset.local 5 A 10.0.0.9\nsend\n")
        out, _ = await asyncio.wait_for(proc.communicate(script.encode()), 20)
        assert proc.returncode != 0
        assert "NOTIMP" in out.decode(), out.decode()


async def test_truncated_over_udp_then_whole_over_tcp() -> None:
    async with serving(mesh()) as server:
        udp = await ask(server, "big.shop.svc.clusterset.local")
        assert udp.flags & dns.flags.TC
        tcp = await ask(server, "big.shop.svc.clusterset.local", tcp=True)
        assert texts(tcp) == BIG


async def test_servfail_before_the_initial_sync_and_updates_take_effect() -> None:
    async with serving() as server:
        assert (await ask(server, "web.shop.svc.clusterset.local")).rcode() == dns.rcode.SERVFAIL
        feed(server, mesh())
        assert texts(await ask(server, "web.shop.svc.clusterset.local")) == ["240.240.0.7"]
        feed(server, view([site("east")], []))
        assert (await ask(server, "web.shop.svc.clusterset.local")).rcode() == dns.rcode.NXDOMAIN


async def test_refused_outside_the_zone_when_forwarding_is_off() -> None:
    async with serving(mesh(), forwarding=False) as server:
        assert (await ask(server, "example.org")).rcode() == dns.rcode.REFUSED


async def test_forwarding_to_a_local_upstream() -> None:
    upstream = await start_upstream()
    try:
        async with serving(mesh(), upstreams=(f"127.0.0.1:{upstream.port}",)) as server:
            for tcp in (False, True):
                assert texts(await ask(server, "www.example.org", tcp=tcp)) == ["192.0.2.1"]
            assert upstream.seen == ["www.example.org.", "www.example.org."]
            assert texts(await ask(server, "web.shop.svc.clusterset.local")) == ["240.240.0.7"]
    finally:
        assert upstream.transport is not None
        upstream.transport.close()


async def test_a_silent_upstream_gives_servfail_not_a_hang() -> None:
    upstream = await start_upstream(silent=True)
    try:
        async with serving(mesh(), upstreams=(f"127.0.0.1:{upstream.port}",), forward_timeout=0.3) as server:
            for tcp in (False, True):
                assert (await ask(server, "www.example.org", tcp=tcp)).rcode() == dns.rcode.SERVFAIL
            assert upstream.seen == ["www.example.org.", "www.example.org."]
    finally:
        assert upstream.transport is not None
        upstream.transport.close()


async def test_a_forward_in_flight_when_the_server_closes_is_cancelled_not_leaked() -> None:
    upstream = await start_upstream(silent=True)
    loop = asyncio.get_running_loop()
    client, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        # A deadline no test waits out: only the close can end this forward.
        async with serving(mesh(), upstreams=(f"127.0.0.1:{upstream.port}",), forward_timeout=600) as server:
            client.sendto(dns.message.make_query("slow.example.org", "A").to_wire(), server.udp_addresses[0])
            async with asyncio.timeout(5):
                while upstream.seen != ["slow.example.org."]:
                    await asyncio.sleep(0.01)
            [forward] = server._tasks
            assert not forward.done()
        assert forward.cancelled()
        assert server._tasks == set()
    finally:
        client.close()
        assert upstream.transport is not None
        upstream.transport.close()


async def test_several_workers_share_the_port_and_queries_are_counted() -> None:
    registry = CollectorRegistry()
    settings = DnsSettings(udp=("127.0.0.1:0",), tcp=("127.0.0.1:0",), workers=3, forwarding=False)
    async with DnsServer(settings, local_site="east", registry=registry) as server:
        server.update(mesh(), vips=VIPS)
        assert len(server.udp_addresses) == 1
        for _ in range(10):
            assert texts(await ask(server, "web.shop.svc.clusterset.local")) == ["240.240.0.7"]
        await ask(server, "example.org")
        await ask(server, "web.shop.svc.clusterset.local", tcp=True)

        def value(path: str, transport: str = "udp") -> float | None:
            return registry.get_sample_value("meshfed_dns_queries_total", {"transport": transport, "path": path})

        assert value("fast") == 10
        assert value("slow") == 1
        assert value("fast", "tcp") == 1
        assert registry.get_sample_value("meshfed_dns_zone_names") == len(server.zone.nodes if server.zone else ())


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (bind9-dnsutils)")
async def test_every_record_type_with_dig() -> None:
    async with serving(mesh()) as server:
        await check_with_dig(server)


async def check_with_dig(server: DnsServer) -> None:
    """Every record type of mesh(), asked by dig."""
    assert (await dig(server, "+short", "web.shop.svc.clusterset.local")).split() == ["240.240.0.7"]
    assert (await dig(server, "+short", "web.shop.svc.clusterset.local", "AAAA")).split() == [
        "fd6d:6573:6866:6564::7"]
    assert (await dig(server, "+short", "db.shop.svc.clusterset.local")).split() == ["10.1.0.1", "10.1.0.2"]
    assert (await dig(server, "+short", "_http._tcp.web.shop.svc.clusterset.local", "SRV")).split() == [
        "0", "0", "80", "web.shop.svc.clusterset.local."]
    assert (await dig(server, "+short", "db-0.west.db.shop.svc.clusterset.local")).split() == ["10.1.0.1"]
    assert (await dig(server, "+short", "dns-version.clusterset.local", "TXT")).split() == ['"1.0.0"']
    assert (await dig(server, "+short", "-x", "240.240.0.7")).split() == ["web.shop.svc.clusterset.local."]
    assert "status: NXDOMAIN" in await dig(server, "nope.shop.svc.clusterset.local")
    soa = await dig(server, "clusterset.local", "SOA")
    # RA when forwarding: to its clients the server is then a recursive resolver
    assert ("flags: qr aa rd ra;" if server.settings.forwarding else "flags: qr aa rd;") in soa
    assert "hostmaster.clusterset.local." in soa
    any_ = await dig(server, "web.shop.svc.clusterset.local", "ANY")
    assert "ANSWER: 1," in any_


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (bind9-dnsutils)")
async def test_dig_falls_back_to_tcp_for_an_answer_over_512_bytes() -> None:
    async with serving(mesh()) as server:
        out = await dig(server, "+noedns", "big.shop.svc.clusterset.local")
        assert "Truncated, retrying in TCP mode" in out
        assert "ANSWER: 60," in out
        assert all(f"\t{a}\n" in out for a in BIG)


async def test_registry_changes_reach_dns_answers(etcd: EtcdProcess) -> None:
    keys = Keys()
    writer = EtcdClient([etcd.endpoint], timeout=3)
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), keys, probe_interval=0.5, probe_timeout=1.0)
    async with serving(mesh=mirror.mesh, forwarding=False) as server:
        task = asyncio.create_task(mirror.run(), name="mirror")
        try:
            await writer.connect()
            east = site("east", "us", "a")
            await writer.commit([
                Put(keys.site("east"), encode_site(east)),
                Put(keys.service("east", "shop", "db"),
                    encode_export(export("east", "shop", "db", ["10.0.0.1"], headless=True))),
            ])
            await asyncio.wait_for(mirror.synced.wait(), 10)
            await _until(server, "db.shop.svc.clusterset.local", ["10.0.0.1"])
            await writer.commit([Put(keys.service("east", "shop", "db"), encode_export(
                export("east", "shop", "db", ["10.0.0.1", "10.0.0.2"], headless=True)))])
            await _until(server, "db.shop.svc.clusterset.local", ["10.0.0.1", "10.0.0.2"])
            await writer.commit([Put(keys.service("east", "shop", "db"), b"{not json")])
            # an invalid record is skipped, never crashes the server: the name goes away
            await _until(server, "db.shop.svc.clusterset.local", [])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await writer.close()


async def _until(server: DnsServer, name: str, want: list[str], timeout: float = 5.0, tcp: bool = False) -> None:
    """Poll until `name` answers `want`; registry watches normally deliver in milliseconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got: list[str] = []
    while loop.time() < deadline:
        got = texts(await ask(server, name, tcp=tcp))
        if got == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} answered {got}, want {want}")


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (bind9-dnsutils)")
async def test_every_record_type_from_real_registry_records(etcd: EtcdProcess) -> None:
    """The same names, this time from records in a real etcd read by the registry mirror."""
    keys = Keys()
    writer = EtcdClient([etcd.endpoint], timeout=3)
    mirror = Mirror(EtcdClient([etcd.endpoint], timeout=3), keys, probe_interval=0.5, probe_timeout=1.0)
    v = mesh()
    async with serving(mesh=mirror.mesh, forwarding=False) as server:
        task = asyncio.create_task(mirror.run(), name="mirror")
        try:
            await writer.connect()
            await writer.commit(
                [Put(keys.site(s.name), encode_site(s)) for s in v.sites.values()]
                + [Put(keys.service(*k), encode_export(e)) for k, e in v.exports.items()]
            )
            await asyncio.wait_for(mirror.synced.wait(), 10)
            await _until(server, "big.shop.svc.clusterset.local", BIG, tcp=True)
            await check_with_dnspython(server)
            await check_with_dig(server)
            out = await dig(server, "+noedns", "big.shop.svc.clusterset.local")
            assert "Truncated, retrying in TCP mode" in out
            assert "ANSWER: 60," in out
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await writer.close()


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (bind9-dnsutils)")
async def test_dig_with_a_tsig_key_is_told_notauth() -> None:
    """`dig -y` signs its query with a key this server does not hold: NOTAUTH, as RFC 8945 says (it was FORMERR)."""
    async with serving(mesh()) as server:
        out = await dig(server, "-y", "hmac-sha256:k:c2VjcmV0c2VjcmV0c2VjcmV0", "web.shop.svc.clusterset.local")
        assert "status: NOTAUTH" in out
