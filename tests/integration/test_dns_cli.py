"""`meshfed resolve` against a running DNS server on loopback."""

from __future__ import annotations

import asyncio

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
    finally:
        await server.close()
