"""`meshfed resolve` against a running DNS server on loopback."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from federation.cli.main import main
from federation.dns.server import DnsServer
from federation.dns.settings import DnsSettings
from tests.dnshelp import export, site, view


async def test_resolve_prints_answers_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    addrs = [f"10.9.0.{i}" for i in range(1, 61)]
    server = DnsServer(DnsSettings(udp=("127.0.0.1:0",), tcp=("127.0.0.1:0",), forwarding=False),
                       local_site="east")
    await server.start()
    try:
        server.update(view([site("east")], [export("east", "shop", "web", ["10.0.0.1"]),
                                            export("east", "shop", "big", addrs, headless=True)]),
                      vips={("shop", "web"): ("240.240.0.7",)})
        addr = f"127.0.0.1:{server.udp_addresses[0][1]}"

        async def resolve(*args: str) -> tuple[int, str]:
            code = await asyncio.to_thread(main, ["resolve", *args, "--server", addr])
            return code, capsys.readouterr().out

        code, out = await resolve("web.shop.svc.clusterset.local")
        assert code == 0
        assert "NOERROR (qr aa rd)" in out
        assert "240.240.0.7" in out
        code, out = await resolve("240.240.0.7")
        assert code == 0
        assert "web.shop.svc.clusterset.local." in out
        code, out = await resolve("_http._tcp.web.shop.svc.clusterset.local", "--type", "SRV")
        assert "0 0 80 web.shop.svc.clusterset.local." in out
        code, out = await resolve("nope.shop.svc.clusterset.local")
        assert code == 1
        assert "NXDOMAIN" in out
        code, out = await resolve("big.shop.svc.clusterset.local", "--tcp")
        assert code == 0
        assert "60 answers" in out
        code, out = await resolve("x", "--type", "BOGUS")
        assert code == 2
        # NODATA: the name exists, but not with this type. No records, so no success (help: "1 for no answer").
        code, out = await resolve("web.shop.svc.clusterset.local", "--type", "TXT")
        assert code == 1
        assert "NOERROR" in out
        assert "NODATA: web.shop.svc.clusterset.local. exists but has no TXT records" in out
        code, out = await resolve("web.shop.svc.clusterset.local", "--type", "ANY")
        assert code == 0
    finally:
        await server.close()


async def test_the_exit_status_a_shell_sees() -> None:
    """`meshfed resolve` as a process: its --help states the codes, and each one is what a script gets."""
    server = DnsServer(DnsSettings(udp=("127.0.0.1:0",), tcp=("127.0.0.1:0",), forwarding=False),
                       local_site="east")
    vips = {("shop", "web"): ("240.240.0.7",)}
    await server.start()
    try:
        addr = f"127.0.0.1:{server.udp_addresses[0][1]}"

        async def run(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "federation", "resolve", *args, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode is not None
            return proc.returncode, out.decode()

        code, helptext = await run("--help")
        assert code == 0
        for line in ("0  answered with records of the asked type", "1  no such records: NXDOMAIN, NODATA",
                     "2  bad arguments", "9  no reply from the server"):
            assert line in helptext
        code, out = await run("web.shop.svc.clusterset.local", "--server", addr)
        assert code == 1
        assert "SERVFAIL" in out  # before the first registry sync
        server.update(view([site("east")], [export("east", "shop", "web", ["10.0.0.1"])]), vips=vips)
        assert (await run("web.shop.svc.clusterset.local", "--server", addr))[0] == 0
        assert (await run("web.shop.svc.clusterset.local", "--type", "AAAA", "--server", addr))[0] == 1
        assert (await run("nope.shop.svc.clusterset.local", "--server", addr))[0] == 1
        assert (await run("web.shop.svc.clusterset.local", "--server", "127.0.0.1:x"))[0] == 2
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
            silent.bind(("127.0.0.1", 0))
            code, out = await run("web.shop.svc.clusterset.local", "--timeout", "0.3", "--server",
                                  f"127.0.0.1:{silent.getsockname()[1]}")
        assert code == 9
        assert out.startswith(";; no reply from 127.0.0.1:")
    finally:
        await server.close()
