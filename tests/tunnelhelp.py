"""Test helpers for the data path: an echo server, a two-site mesh with a running gateway, a raw tunnel client."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from federation.core.policy.access import AccessState
from federation.core.records import Gateway, ServiceExport
from federation.core.view import MeshView
from federation.runtime.values import Value
from gateway.eastwest import EastWestGateway
from gateway.framing import END_FRAME, header
from gateway.preamble import NEED_DATA, Preamble, Request, Response, Role
from gateway.settings import GatewaySettings
from gateway.tls import CertificateStore
from tests.pkihelp import Mesh, export, view


class EchoServer:
    """Echoes every byte; on EOF from the client, half-closes back. Records connections."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1") -> int:
        self.server = await asyncio.start_server(self._handle, host, 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class TwoSites:
    """Sites east (serving ns/echo through its gateway) and west (a client), on different networks."""

    tmp: Path
    mesh: Mesh = field(default_factory=Mesh)
    settings: GatewaySettings = field(default_factory=lambda: GatewaySettings(
        listen_address="127.0.0.1", listen_port=0, preamble_timeout=0.5, handshake_timeout=2.0))
    echo: EchoServer = field(default_factory=EchoServer)
    exports: list[ServiceExport] = field(default_factory=list)
    gateway: EastWestGateway | None = None
    access: Value[AccessState] = field(default_factory=lambda: Value(AccessState(), name="access state"))
    """What east's gateway enforces: a test sets policies, the mesh default, revoked sites."""

    def __post_init__(self) -> None:
        self.east = CertificateStore(self.mesh.site_ca("east"), "gw", self.tmp / "east")
        self.west = CertificateStore(self.mesh.site_ca("west"), "gw", self.tmp / "west")
        self.gw_port = 0
        self.sites = ["east", "west"]
        """The sites in the registry (a test removes one to see its tunnels go)."""
        self.mesh_value: Value[MeshView] = Value(self.view(), name="mesh view", same=operator.is_)
        """What east's gateway reads, as the agent's holder: `publish()` after changing sites or exports."""
        self._follower: asyncio.Task[None] | None = None
        self.live: Value[GatewaySettings] = Value(self.settings, name="gateway settings")
        """East's gateway settings as the agent holds them: `live.set(...)` is a reload."""

    def view(self) -> MeshView:
        gw = (Gateway("gw", "127.0.0.1", self.gw_port),)
        return view([self.mesh.site(s, gateways=gw if s == "east" else ()) for s in self.sites], self.exports)

    def publish(self) -> None:
        """Hand the gateway the view of the current sites and exports (as the agent does after registry changes)."""
        self.mesh_value.set(self.view())

    async def start(self) -> None:
        echo_port = await self.echo.start()
        self.exports.append(export("east", "ns", "echo", 7, endpoint_ports=(echo_port,)))
        self.publish()
        self.gateway = EastWestGateway("east", self.mesh_value, self.east.server, self.east.bundle, self.live,
                                       access=self.access)
        await self.gateway.start()
        self.gw_port = self.gateway.address[1]
        self.publish()
        self._follower = asyncio.create_task(self.gateway.run(), name="gateway-tunnels")

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        if self.gateway is not None:
            await self.gateway.close()
        await self.echo.close()
        self.east.close()
        self.west.close()


@contextlib.asynccontextmanager
async def two_sites(tmp: Path) -> AsyncIterator[TwoSites]:
    sites = TwoSites(tmp)
    await sites.start()
    try:
        yield sites
    finally:
        await sites.close()


class RawTunnel:
    """A hand-driven tunnel client: TLS with a given context, preamble and frames written by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext | None, source: str | None = None) -> RawTunnel:
        """Connect to 127.0.0.1:`port` (from the loopback address `source`, if given) and handshake with `ctx`."""
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, local_addr=local)
        return cls(reader, writer)

    async def request(self, req: Request) -> Response:
        self.writer.write(Preamble(Role.CLIENT).send(req))
        return await self.response()

    async def response(self) -> Response:
        p = Preamble(Role.CLIENT)
        while (event := p.next_event()) is NEED_DATA:
            data = await self.reader.read(1024)
            if not data:
                raise ConnectionResetError("closed before a response")
            p.receive_data(data)
        assert isinstance(event, Response)
        return event

    def send(self, data: bytes) -> None:
        self.writer.write(header(len(data)) + data)

    def end(self) -> None:
        self.writer.write(END_FRAME)

    async def receive_until_end(self) -> bytes:
        out = b""
        while True:
            (n,) = struct.unpack("!I", await self.reader.readexactly(4))
            if n == 0:
                return out
            out += await self.reader.readexactly(n)

    async def receive_frame(self) -> bytes:
        """One data frame's payload."""
        (n,) = struct.unpack("!I", await self.reader.readexactly(4))
        assert 0 < n < 0xFFFFFFFF, n
        return await self.reader.readexactly(n)

    async def until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything the peer sends until it closes the connection (within `timeout` seconds)."""
        out = b""
        async with asyncio.timeout(timeout):
            try:
                while data := await self.reader.read(65536):
                    out += data
            except (ConnectionError, ssl.SSLError):
                pass
        return out

    async def closed_by_peer(self) -> bool:
        """True once the peer has closed (EOF or reset) within 5 s."""
        try:
            async with asyncio.timeout(5):
                while await self.reader.read(1024):
                    pass
        except (ConnectionError, ssl.SSLError):
            return True
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
