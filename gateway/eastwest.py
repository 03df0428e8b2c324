"""The east-west gateway: authenticates peer gateways, reads stream requests, relays to this site's endpoints.

Accepts plain TCP and runs the TLS handshake itself (`loop.start_tls`) so that every refused
handshake is seen, logged once with its reason and counted, never silently dropped. No tunnel
outlives its peer's certificate (a timer at its notAfter) or its peer's site in the registry (`run`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Coroutine, Mapping
from typing import Any, cast

from prometheus_client import CollectorRegistry

from federation.core.policy.access import AccessState, Peer
from federation.core.records import Site
from federation.core.view import MeshView
from federation.pki.verifying import TrustBundle
from federation.runtime.values import Readable, follow
from gateway.accesslog import AccessLog
from gateway.authorization import Authorizer
from gateway.balancing import EndpointPicker
from gateway.endpointchecks import EndpointChecks
from gateway.refusals import GatewayMetrics, Refusals, Throttle, handshake_cause, handshake_reason
from gateway.relay import ActiveStreams
from gateway.settings import GatewaySettings, live
from gateway.shedding import Shedder, reset
from gateway.tls import Bundle, current, send_alerts_to
from gateway.tunnel import GatewayTunnel

log = logging.getLogger(__name__)
_throttle = Throttle()



class EastWestGateway:
    """The site's mTLS listener for other networks. `start()`, then `close()`; `address` once started."""

    def __init__(self, site: str, mesh: Readable[MeshView], server_context: ssl.SSLContext,
                 bundle: Bundle, settings: GatewaySettings | Readable[GatewaySettings] | None = None,
                 registry: CollectorRegistry | None = None, access: Readable[AccessState] | None = None,
                 accesslog: AccessLog | None = None) -> None:
        self.site = site
        self.mesh = mesh
        """The registry view: read at every handshake and stream request, followed by `run`."""
        self.context = server_context
        self.trust = bundle
        """The roots peers must chain to (a holder when the registry's trust bundle can change them)."""
        self._settings = live(settings)
        self.shedder = Shedder(self._settings.get)
        """Resets new connections beyond `max_connections` tunnels or `accept_rate` (refusals reason="overload")."""
        registry = registry or CollectorRegistry()
        self.metrics = GatewayMetrics(registry)
        self.authorizer = Authorizer(access, "gateway", registry)
        """Access policy on every stream, from the peer's verified certificate; revoked sites."""
        self.refusals = Refusals(log, self.metrics.refusals)
        self.picker = EndpointPicker()
        self.health = EndpointChecks(site, mesh, self.spawn, lambda: self.settings.connect_timeout, registry)
        """Answers other sites' health queries ("a ready endpoint for X?") from checks of this site's endpoints."""
        self.accesslog = accesslog or AccessLog()
        """One line per stream relayed to an endpoint (off unless `access_log.path` is set)."""
        self.active = ActiveStreams()
        self._server: asyncio.Server | None = None
        self._lsock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.tunnels: set[GatewayTunnel] = set()
        """Authenticated tunnels open now."""
        self.ended = Throttle()
        """Limits the "tunnel closed" log lines (one peer often holds several tunnels)."""

    @property
    def settings(self) -> GatewaySettings:
        """The settings as they are now (a reload may replace them)."""
        return self._settings.get()

    @property
    def bundle(self) -> TrustBundle:
        """The roots in force now."""
        return current(self.trust)

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

    async def stop_accepting(self) -> None:
        """Close the listening socket; tunnels and their streams go on (a stopping agent drains them)."""
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        if self._lsock is not None:
            self._lsock.close()

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting; let streams finish for up to `grace` seconds; then close every tunnel."""
        await self.stop_accepting()
        await self.active.wait_idle(grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for tunnel in list(self.tunnels):
            if tunnel.stream is not None:
                tunnel.stream.finish(clean=False)
            tunnel.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def run(self) -> None:
        """Close the tunnels of every site that leaves the registry or is revoked, as it goes, and the streams
        a changed access policy now denies (unless the mesh says to let them finish), until cancelled."""
        async for _ in follow(self.mesh, self.authorizer.access):
            sites, state = self.mesh.get().sites, self.authorizer.state
            for site in sorted({t.peer_site for t in self.tunnels if not t.closed and (
                    t.peer_site not in sites or t.peer_site in state.revoked)}):
                tunnels = [t for t in self.tunnels if t.peer_site == site and not t.closed]
                revoked = site in state.revoked
                log.warning("site %s %s: closing its %d tunnel(s)", site,
                            "is revoked by the operator" if revoked else "left the registry", len(tunnels))
                for tunnel in tunnels:
                    tunnel.end("revoked" if revoked else "site_removed")
            if state.mesh.close_on_deny:
                self._close_denied(sites)

    def _close_denied(self, sites: Mapping[str, Site]) -> None:
        """End the tunnels whose running stream the access state in force now denies."""
        groups: dict[tuple[str, str, str, tuple[str, str]], list[GatewayTunnel]] = {}
        for t in self.tunnels:
            if t.stream is not None and t.service is not None and t.peer_site in sites and not t.closed:
                groups.setdefault((t.peer_site, t.identity, t.workload or "", t.service), []).append(t)
        for (site, identity, workload, service), tunnels in sorted(groups.items(), key=lambda g: g[0]):
            peer = Peer(site, sites[site].network, identity, workload or None)
            decision = self.authorizer.recheck(service, peer)
            if not decision.allowed:
                self.authorizer.closing(decision, peer, service, len(tunnels))
                for tunnel in tunnels:
                    tunnel.end("denied")

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
            if self._shed(conn, peer):
                conn.close()
                continue
            self.spawn(self._handshake_accepted(conn, peer), name=f"gateway-handshake-{peer}")

    def _shed(self, sock: object, peer: str) -> bool:
        """True (and `sock` set to reset on close) if a new connection is beyond what the gateway takes now."""
        why = self.shedder.refuse(len(self.tunnels) + len(self._tasks), time.monotonic())
        if why is None:
            return False
        self.metrics.refusals.labels("overload").inc()
        self.shedder.say(log, "gateway", why, len(self.tunnels))
        reset(sock)
        return True

    async def _handshake_accepted(self, conn: socket.socket, peer: str) -> None:
        tunnel = GatewayTunnel(self, peer)
        send_alerts_to(conn.send)  # uvloop's transport shares this socket; nothing is queued before the alert
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: tunnel, conn, ssl=self.context, ssl_handshake_timeout=self.settings.handshake_timeout)
        except (OSError, TimeoutError) as exc:
            self.metrics.handshakes.labels("failed").inc()
            self.refusals.refuse("handshake", handshake_cause(exc), peer, handshake_reason(exc))
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
            self.refusals.refuse("handshake", handshake_cause(exc), peer, handshake_reason(exc))
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
        if self.gateway._shed(transport.get_extra_info("socket"), host):
            transport.abort()
            return
        self.gateway.spawn(self.gateway._handshake(transport, host), name=f"gateway-handshake-{host}")

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass
