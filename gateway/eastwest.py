"""The east-west gateway: authenticates peer gateways, reads stream requests, relays to this site's endpoints.

Accepts plain TCP and runs the TLS handshake itself (`loop.start_tls`) so that every refused
handshake is seen, logged once with its reason and counted, never silently dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry

from federation.core.errors import RemoteProtocolError
from federation.core.view import MeshView
from federation.pki.verifying import PeerRejected, TrustBundle, verify_peer
from gateway.balancing import EndpointPicker, Target, endpoint_targets, find_port
from gateway.preamble import NEED_DATA, Preamble, Request, Response, Role, Status
from gateway.refusals import GatewayMetrics, Refusals, Throttle
from gateway.relay import ActiveStreams, PlainLeg, Stream, TunnelLeg
from gateway.settings import GatewaySettings
from gateway.tls import send_alerts_to

log = logging.getLogger(__name__)
_throttle = Throttle()

MAX_ATTEMPTS = 3
"""Endpoints tried per stream request before answering `refused`."""
_MAX_EARLY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Admission:
    """What a stream request gets: a status, a reason for logs, and the endpoints to try."""

    status: Status
    reason: str
    targets: tuple[Target, ...] = ()
    key: tuple[str, str, str] = ("", "", "")


def admit(view: MeshView, site: str, req: Request) -> Admission:
    """Check `req` against this site's own export of the service. Pure."""
    export = view.exports.get((site, req.namespace, req.service))
    if export is None:
        return Admission(Status.NO_SUCH_SERVICE, f"{req.namespace}/{req.service} is not exported by {site}")
    port = find_port(export.ports, req.port)
    if port is None:
        return Admission(Status.NO_SUCH_SERVICE, f"{req.namespace}/{req.service} has no port {req.port}")
    targets = endpoint_targets(export, port, req.hostname)
    if not targets:
        what = f"endpoint {req.hostname}" if req.hostname else "endpoint"
        return Admission(Status.NO_HEALTHY_ENDPOINT, f"{req.namespace}/{req.service} has no ready {what}")
    return Admission(Status.OK, "", tuple(targets), (req.namespace, req.service, port.name))


class EastWestGateway:
    """The site's mTLS listener for other networks. `start()`, then `close()`; `address` once started."""

    def __init__(self, site: str, view: Callable[[], MeshView], server_context: ssl.SSLContext,
                 bundle: TrustBundle, settings: GatewaySettings | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.site = site
        self.view = view
        self.context = server_context
        self.bundle = bundle
        self.settings = settings or GatewaySettings()
        self.metrics = GatewayMetrics(registry or CollectorRegistry())
        self.refusals = Refusals(log, self.metrics.refusals)
        self.picker = EndpointPicker()
        self.active = ActiveStreams()
        self._server: asyncio.Server | None = None
        self._lsock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tunnels: set[GatewayTunnel] = set()

    async def start(self) -> None:
        """Listen on the configured address (SO_REUSEPORT when several workers share the port)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        if isinstance(loop, asyncio.BaseEventLoop):
            self._server = await loop.create_server(
                lambda: _Incoming(self), s.listen_address, s.listen_port,
                reuse_port=s.workers > 1 or None, backlog=1024,
            )
        else:
            # uvloop starts reading right after connection_made (overriding pause_reading) and runs a
            # task created there only after its next poll, so the ClientHello could be read before
            # start_tls takes the socket. Accept raw sockets instead and hand each, unread, to
            # connect_accepted_socket, which raises a failed handshake to us just the same.
            self._lsock = socket.create_server(
                (s.listen_address, s.listen_port), backlog=1024, reuse_port=s.workers > 1,
                family=socket.AF_INET6 if ":" in s.listen_address else socket.AF_INET,
            )
            self._lsock.setblocking(False)
            self._acceptor = loop.create_task(self._accept(self._lsock), name="gateway-accept")
        log.info("east-west gateway of site %s listening on %s:%d", self.site, *self.address)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        sock = self._server.sockets[0] if self._server is not None else self._lsock
        assert sock is not None, "start() first"
        host, port = sock.getsockname()[:2]
        return host, port

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting; let streams finish for up to `grace` seconds; then close every tunnel."""
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        if self._lsock is not None:
            self._lsock.close()
        await self.active.wait_idle(grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for tunnel in list(self._tunnels):
            if tunnel.stream is not None:
                tunnel.stream.finish(clean=False)
            tunnel.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- used by the protocols

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run `coro` as a named task that `close()` cancels."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(lsock)
            except OSError as exc:  # out of file descriptors, and the like: back off a little
                _throttle.log(log, logging.ERROR, "accept", "gateway accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            peer = str(addr[0])
            self.spawn(self._handshake_accepted(conn, peer), name=f"gateway-handshake-{peer}")

    async def _handshake_accepted(self, conn: socket.socket, peer: str) -> None:
        tunnel = GatewayTunnel(self, peer)
        send_alerts_to(conn.send)  # uvloop's transport shares this socket; nothing is queued before the alert
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: tunnel, conn, ssl=self.context, ssl_handshake_timeout=self.settings.handshake_timeout)
        except (OSError, TimeoutError) as exc:
            self.metrics.handshakes.labels("failed").inc()
            self.refusals.refuse("handshake", peer, _tls_reason(exc))
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise

    async def _handshake(self, transport: asyncio.Transport, peer: str) -> None:
        tunnel = GatewayTunnel(self, peer)
        loop = asyncio.get_running_loop()
        send_alerts_to(transport.write)
        try:
            tls = await loop.start_tls(transport, tunnel, self.context, server_side=True,
                                       ssl_handshake_timeout=self.settings.handshake_timeout)
        except (OSError, TimeoutError) as exc:
            self.metrics.handshakes.labels("failed").inc()
            self.refusals.refuse("handshake", peer, _tls_reason(exc))
            transport.abort()
            return
        except asyncio.CancelledError:
            transport.abort()
            raise
        if tls is None:
            transport.abort()
            return
        self.metrics.handshakes.labels("ok").inc()
        tunnel.begin(tls)


class _Incoming(asyncio.Protocol):
    """A freshly accepted TCP connection: hands it to the handshake task, reading nothing itself."""

    def __init__(self, gateway: EastWestGateway) -> None:
        self.gateway = gateway

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport.pause_reading()
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else "?"
        self.gateway.spawn(self.gateway._handshake(transport, host), name=f"gateway-handshake-{host}")

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass


class GatewayTunnel(TunnelLeg):
    """One authenticated tunnel from a peer gateway: preamble, connect, relay; again after a clean end."""

    def __init__(self, gateway: EastWestGateway, peer: str) -> None:
        super().__init__()
        self.gw = gateway
        self.peer = peer
        self.identity = ""
        self.peer_site = ""
        self.peer_expiry: dt.datetime | None = None
        self._early = bytearray()
        self._ready = False
        self._preamble = Preamble(Role.SERVER)
        self._got_bytes = False
        self._timer: asyncio.TimerHandle | None = None
        self._connecting = False
        self._pending = bytearray()
        self._last: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Only after `connect_accepted_socket` (see `EastWestGateway.start`): the handshake is done."""
        transport = cast(asyncio.Transport, transport)
        self.gw.metrics.handshakes.labels("ok").inc()
        self.begin(transport)

    def begin(self, transport: asyncio.Transport) -> None:
        """The handshake is done: check who the peer is, then wait for a stream request."""
        self.transport = transport
        if self.closed:
            return
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:  # closed while the handshake finished
            self.close()
            return
        der = sslobj.getpeercert(binary_form=True)
        try:
            identity = verify_peer(der, self.gw.view(), self.gw.bundle, dt.datetime.now(dt.UTC))
        except PeerRejected as exc:
            self.gw.refusals.refuse("identity", self.peer, str(exc))
            # The chain verified to the mesh root, so the peer is one of ours: tell it why (no TLS
            # alert can follow a finished handshake; the preamble is the channel we have).
            self._answer(Response(Status.FORBIDDEN, f"identity not accepted: {exc}"))
            self.close()
            return
        self.identity = identity.spiffe_id
        self.peer_site = identity.site
        self.peer_expiry = identity.not_after
        self.gw._tunnels.add(self)
        self.gw.metrics.tunnels.inc()
        self._ready = True
        self._await_request()
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.control_data(early)

    def control_data(self, data: bytes) -> None:
        if not self._ready:
            self._early += data
            if len(self._early) > _MAX_EARLY:
                self.close()
            return
        if self._connecting:
            self._pending += data
            return
        if not self._got_bytes and data:
            self._got_bytes = True
            self._arm(self.gw.settings.preamble_timeout, "preamble did not finish in time")
        self._preamble.receive_data(data)
        try:
            event = self._preamble.next_event()
        except RemoteProtocolError as exc:
            self._refuse("preamble", str(exc), Status.BAD_REQUEST, close=True)
            return
        if event is NEED_DATA:
            return
        assert isinstance(event, Request)
        self._cancel_timer()
        trailing = self._preamble.trailing_data
        view = self.gw.view()
        if self.peer_expiry is not None and dt.datetime.now(dt.UTC) >= self.peer_expiry:
            # TLS checks the certificate once, at the handshake; a tunnel must not outlive it.
            self._refuse("identity", f"{self.identity}: certificate expired since the handshake",
                         Status.FORBIDDEN, close=True)
            return
        if self.peer_site not in view.sites:
            # The peer's site left the registry since the handshake: its tunnels go with it.
            self._refuse("identity", f"{self.identity}: site {self.peer_site} is no longer in the registry",
                         Status.FORBIDDEN, close=True)
            return
        admission = admit(view, self.gw.site, event)
        if admission.status is not Status.OK:
            self._refuse("stream", f"{self.identity}: {admission.reason}", admission.status, close=False)
            self._await_request(trailing)
            return
        self._connecting = True
        self._pending = bytearray(trailing)
        assert self.transport is not None
        self.transport.pause_reading()
        self.gw.spawn(self._connect(admission), name=f"gateway-connect-{self.peer}")

    async def _connect(self, admission: Admission) -> None:
        loop = asyncio.get_running_loop()
        order = self.gw.picker.order(admission.key, admission.targets, loop.time())
        for target in order[:MAX_ATTEMPTS]:
            if self.closed:
                return
            try:
                async with asyncio.timeout(self.gw.settings.connect_timeout):
                    transport, leg = await loop.create_connection(PlainLeg, target.address, target.port)
            except (OSError, TimeoutError) as exc:
                _throttle.log(log, logging.INFO, target, "endpoint %s:%d refused: %s", target.address, target.port, exc)
                self.gw.picker.refused(target, loop.time())
                continue
            if self.closed:
                transport.abort()
                return
            self._connecting = False
            self.gw.metrics.streams.labels(Status.OK.name.lower()).inc()
            self._answer(Response(Status.OK))
            pending, self._pending = bytes(self._pending), bytearray()
            self.gw.active.add()
            self._last = Stream(self, leg, self.gw.settings.idle_timeout, self._stream_done, pending=pending)
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
            return
        self._connecting = False
        ns, svc, port = admission.key
        self._refuse("stream", f"{self.identity}: every endpoint of {ns}/{svc}:{port} refused",
                     Status.REFUSED, close=False)
        pending, self._pending = bytes(self._pending), bytearray()
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self._await_request(pending)

    def _stream_done(self, clean: bool) -> None:
        self.gw.active.done()
        if self._last is not None:
            self.gw.metrics.bytes.labels("in").inc(self._last.bytes_down)
            self.gw.metrics.bytes.labels("out").inc(self._last.bytes_up)
            self._last = None
        if clean and not self.closed:
            self._await_request()

    def _await_request(self, data: bytes = b"") -> None:
        self._preamble = Preamble(Role.SERVER)
        self._got_bytes = False
        self._arm(self.gw.settings.tunnel_idle_timeout, "")
        if data:
            self.control_data(data)

    def _refuse(self, kind: str, reason: str, status: Status, close: bool) -> None:
        self.gw.metrics.streams.labels(status.name.lower()).inc()
        self.gw.refusals.refuse(kind, self.peer, reason)
        self._answer(Response(status, reason if status is not Status.BAD_REQUEST else "bad request"))
        if close:
            self.close()

    def _answer(self, response: Response) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(Preamble(Role.SERVER).send(response))

    def _arm(self, seconds: float, reason: str) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str) -> None:
        self._timer = None
        if self.stream is not None or self._connecting or self.closed:
            return
        if reason:
            self.gw.refusals.refuse("preamble", self.peer, reason)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self in self.gw._tunnels:
            self.gw._tunnels.discard(self)
            self.gw.metrics.tunnels.dec()
        super().connection_lost(exc)

    def close(self) -> None:
        self._cancel_timer()
        super().close()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "TLS handshake did not finish in time"
    return f"TLS handshake failed: {exc!r}"
