"""The egress's capture listener: one socket (IPv4 and IPv6) for every VIP, each client's original destination
recovered from the kernel's connection tracking.

The VM agent's netfilter rules (federation/sources/vm/nftables.py) redirect TCP to the VIP ranges here.
REDIRECT rewrites the destination to this socket's port, and conntrack keeps the original: getsockopt
SO_ORIGINAL_DST (SOL_IP, also for IPv4 clients of a dual-stack socket) or IP6T_SO_ORIGINAL_DST (SOL_IPV6)
gives it back (as Envoy's original_dst listener filter reads it). `DestinationIndex` names the service port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable

from gateway.destinations import Destination, DestinationIndex, ListenerKey
from gateway.relay import PlainLeg

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80
"""linux/netfilter_ipv4.h, at level SOL_IP."""
IP6T_SO_ORIGINAL_DST = 80
"""linux/netfilter_ipv6/ip6_tables.h, at level SOL_IPV6."""
SOL_IPV6 = socket.IPPROTO_IPV6
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28

Route = Callable[[PlainLeg, ListenerKey], None]
"""Called with a client whose destination names a service port (the egress routes it)."""
Unknown = Callable[[PlainLeg, Destination | None], None]
"""Called with a client whose destination names nothing (None: the kernel had no original destination)."""


def parse_sockaddr(raw: bytes) -> Destination | None:
    """A struct sockaddr_in or sockaddr_in6 as the kernel fills it in, as (address, port); None if neither."""
    if len(raw) < 8:
        return None
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        address = ipaddress.IPv6Address(raw[8:24])
        return (address.ipv4_mapped or address), port
    return None


def original_destination(sock: socket.socket) -> Destination | None:
    """Where the client behind accepted socket `sock` was connecting to before the redirect; None if unknown."""
    try:
        local = sock.getsockname()[0]
        if sock.family == socket.AF_INET or str(local).startswith("::ffff:"):
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
        else:
            raw = sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
    except OSError:  # ENOENT: no conntrack entry (not redirected); ENOPROTOOPT: no conntrack at all
        return None
    return parse_sockaddr(raw)


def dual_stack_socket(host: str = "::", port: int = 0) -> socket.socket:
    """A listening TCP socket on `host`; on "::" it takes IPv4 and IPv6 clients (IPv4 only where IPv6 is off)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if host != "::" or exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        host = "0.0.0.0"  # noqa: S104 - redirected clients arrive on any interface
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def reset(leg: PlainLeg) -> None:
    """Abort `leg` with a TCP reset (SO_LINGER 0): the client sees "connection reset", not an empty answer."""
    if leg.transport is None:
        return
    sock = leg.transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    leg.transport.abort()


class SocketListener:
    """One listening socket (dual stack on "::") whose clients are `PlainLeg`s: bind, address, close."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None

    async def _serve(self, host: str, port: int, leg: Callable[[], PlainLeg]) -> None:
        sock = dual_stack_socket(host, port)
        self._server = await asyncio.get_running_loop().create_server(leg, sock=sock)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) bound; ("", 0) before `start()`."""
        if self._server is None or not self._server.sockets:
            return "", 0
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop accepting (clients already accepted go on)."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Wait until the listening socket is closed."""
        if self._server is not None:
            await self._server.wait_closed()


class CaptureListener(SocketListener):
    """The one listener of capture mode: `start()` binds it, each client goes to `route` or `unknown`."""

    def __init__(self, index: DestinationIndex, route: Route, unknown: Unknown) -> None:
        super().__init__()
        self.index = index
        """Read for every new client; the egress keeps it following the mesh and the VIP table."""
        self._route = route
        self._unknown = unknown

    async def start(self, host: str = "::", port: int = 0) -> None:
        """Bind and start accepting."""
        await self._serve(host, port, lambda: _CapturedLeg(self))

    def accepted(self, leg: PlainLeg) -> None:
        """A client arrived: find its service port, or hand it to `unknown`."""
        sock = leg.transport.get_extra_info("socket") if leg.transport is not None else None
        dest = original_destination(sock) if sock is not None else None
        key = self.index.lookup(*dest) if dest is not None else None
        if key is None:
            self._unknown(leg, dest)
        else:
            self._route(leg, key)


class _CapturedLeg(PlainLeg):
    """An accepted client of the capture listener: reading stays paused until a route accepted it."""

    def __init__(self, listener: CaptureListener) -> None:
        super().__init__()
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.listener.accepted(self)
