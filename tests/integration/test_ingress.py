"""Global ingress as the agent composes it: a client from outside the mesh connects to an ingress listener at
west and reaches the service at east through west's egress and east's gateway (real TLS tunnels); with SNI
routes the client's own TLS session goes end to end to the service, meshfed reads only the server name."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from federation.agent.dataplane import DataPlane
from federation.agent.settings import AgentSettings, parse_settings
from federation.core.view import MeshView
from federation.pki.issuing import save_site
from federation.runtime.values import Value
from tests.integration.test_dataplane import NoEtcd, running
from tests.pkihelp import Mesh, export, view
from tests.tunnelhelp import EchoServer
from tests.util import eventually


def settings(tmp: Path, site: str, ingress: list[dict[str, object]] | None = None) -> AgentSettings:
    return parse_settings({
        "site": {"name": site, "network": f"net-{site}"},
        "state_dir": str(tmp / f"{site}-state"),
        "gateway": {"listen_address": "127.0.0.1", "listen_port": 0, "ca_dir": str(tmp / site), "pool_size": 0},
        "dns": {"enabled": False},
        "vm": {"vip_interface": ""},
        "ingress": ingress or [],
    }, f"{site}.yaml", {})


class TlsEcho:
    """The service's own TLS server (its certificate, its key): prefixes what it echoes with `tls:`."""

    def __init__(self, mesh: Mesh, tmp: Path) -> None:
        chain, key, self.bundle = mesh.write_leaf(tmp / "service-tls", "east", "web")
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(chain), str(key))
        self.serial = x509.load_pem_x509_certificate(chain.read_bytes()).serial_number
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.write(b"tls:" + await reader.readline())
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ctx)
        return int(self.server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def mesh_with_ingress(tmp: Path, ingress: list[dict[str, object]]) -> AsyncIterator[tuple[DataPlane, TlsEcho]]:
    mesh = Mesh()
    for site in ("east", "west"):
        save_site(tmp / site, mesh.site_ca(site))
    echo, tls = EchoServer(), TlsEcho(mesh, tmp)
    echo_port, tls_port = await echo.start(), await tls.start()
    holder: Value[MeshView] = Value(MeshView.before_sync())
    east = DataPlane(settings(tmp, "east"), holder, CollectorRegistry(), NoEtcd())
    west = DataPlane(settings(tmp, "west", ingress), holder, CollectorRegistry(), NoEtcd())
    exports = [export("east", "ns", "echo", 7, endpoint_ports=(echo_port,)),
               export("east", "shop", "web", 443, endpoint_ports=(tls_port,))]
    try:
        async with running(east), running(west):
            holder.set(view([east.site_record.get(), west.site_record.get()], exports))
            yield west, tls
    finally:
        await echo.close()
        assert tls.server is not None
        tls.server.close()


def counted(plane: DataPlane, result: str) -> float:
    value = plane.metrics.get_sample_value("meshfed_ingress_clients_total",
                                           {"listener": "127.0.0.1:0", "result": result})
    return value or 0.0


async def test_a_tcp_listener_carries_every_client_to_its_service(tmp_path: Path) -> None:
    async with mesh_with_ingress(tmp_path, [{"listen": "127.0.0.1:0", "service": "ns/echo"}]) as (west, _tls):
        [listener] = west.ingress
        reader, writer = await asyncio.open_connection(*listener.address)
        writer.write(b"from outside")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"from outside"  # east's echo, through the tunnel
        writer.close()
        assert counted(west, "routed") == 1


def tls_client(address: tuple[str, int], name: str, bundle: Path, line: bytes) -> tuple[int, bytes]:
    """A real TLS client asking for `name`: (serial of the certificate it was shown, what came back)."""
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.check_hostname = False  # the leaf names a SPIFFE ID, not `name`; the chain is still verified
    with socket.create_connection(address, timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(line)
        out = b""
        while chunk := tls.recv(4096):
            out += chunk
        return x509.load_der_x509_certificate(der).serial_number, out


async def test_sni_routes_pass_tls_through_to_the_service_and_refuse_the_rest(tmp_path: Path) -> None:
    ingress = [{"listen": "127.0.0.1:0", "hello_timeout": 0.5,
                "routes": [{"name": "*.shop.example.com", "service": "shop/web"}]}]
    async with mesh_with_ingress(tmp_path, ingress) as (west, tls):
        [listener] = west.ingress
        serial, out = await asyncio.to_thread(tls_client, listener.address, "web.shop.example.com", tls.bundle,
                                              b"hello\n")
        assert serial == tls.serial  # the service's own certificate: meshfed did not terminate the session
        assert out == b"tls:hello\n"
        assert counted(west, "routed") == 1

        with pytest.raises((ssl.SSLError, ConnectionError)):  # a name no route has: reset before any TLS
            await asyncio.to_thread(tls_client, listener.address, "db.example.org", tls.bundle, b"x\n")
        await eventually(lambda: counted(west, "unknown_name") == 1, what="the unknown name counted")

        reader, writer = await asyncio.open_connection(*listener.address)  # plain HTTP to a TLS port
        writer.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await eventually(lambda: counted(west, "bad_hello") == 1, what="the bad hello counted")

        reader, writer = await asyncio.open_connection(*listener.address)  # says nothing: reset after the timeout
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await eventually(lambda: counted(west, "hello_timeout") == 1, what="the silent client counted")

        # everyone else is still served
        _serial, out = await asyncio.to_thread(tls_client, listener.address, "api.shop.example.com", tls.bundle,
                                               b"again\n")
        assert out == b"tls:again\n"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_openssl_s_client_reaches_the_service_by_its_server_name(tmp_path: Path) -> None:
    ingress = [{"listen": "127.0.0.1:0", "routes": [{"name": "web.shop.example.com", "service": "shop/web"}]}]
    async with mesh_with_ingress(tmp_path, ingress) as (west, tls):
        host, port = west.ingress[0].address
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "web.shop.example.com",
            "-CAfile", str(tls.bundle), "-quiet", "-verify_return_error",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(b"from openssl\n"), 20)
        assert out == b"tls:from openssl\n", err.decode()
