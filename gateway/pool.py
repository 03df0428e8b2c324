"""The egress end of tunnels: open (with TLS session resumption), verify the peer gateway, pool and reuse."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, cast

from federation.core.errors import RemoteProtocolError
from federation.core.records import Gateway
from federation.core.view import MeshView
from federation.pki.verifying import PeerRejected, verify_peer
from federation.runtime.values import Readable
from gateway.preamble import NEED_DATA, Preamble, Probe, ProbeAnswer, Request, Response, Role
from gateway.refusals import Throttle
from gateway.relay import HIGH_WATER, ActiveStreams, Done, PlainLeg, Stream, TunnelLeg
from gateway.settings import GatewaySettings
from gateway.tls import Bundle, ResumingContext, current

log = logging.getLogger(__name__)
_throttle = Throttle()

PoolKey = tuple[str, str, int]
"""(site, gateway address, gateway port)"""


class EgressTunnel(TunnelLeg):
    """The client end of one tunnel: sends a preamble, waits for its status, then carries one stream."""

    def __init__(self) -> None:
        super().__init__()
        self._preamble: Preamble | None = None
        self._answer: asyncio.Future[Response | ProbeAnswer] | None = None
        self._pending = b""
        self.streams = 0
        self.session_saved = False
        self.opened = 0.0
        self.on_lost: Callable[[], None] | None = None
        """Called once when the connection is gone (the egress counts open tunnels)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        self.opened = asyncio.get_running_loop().time()

    @property
    def usable(self) -> bool:
        """Open, and between streams."""
        return not self.closed and self.stream is None and self._answer is None

    async def request(self, req: Request) -> Response:
        """Send a stream request and wait for the status; OSError or RemoteProtocolError on failure."""
        answer = await self._exchange(req)
        if not isinstance(answer, Response):
            raise RemoteProtocolError("a probe answer where a stream status belongs", cause="message-type")
        return answer

    async def probe(self, nonce: int) -> Response | ProbeAnswer:
        """Send a probe and wait for its answer (a gateway older than probes answers a `bad request`
        Response and closes the tunnel); OSError or RemoteProtocolError on failure."""
        answer = await self._exchange(Probe(nonce))
        if isinstance(answer, ProbeAnswer) and answer.nonce != nonce:
            raise RemoteProtocolError(f"probe answer for nonce {answer.nonce}, not {nonce}", cause="bad-nonce")
        return answer

    async def _exchange(self, message: Request | Probe) -> Response | ProbeAnswer:
        assert self.transport is not None
        self._preamble = Preamble(Role.CLIENT)
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(self._preamble.send(message))
        try:
            return await self._answer
        finally:
            self._answer = None

    def attach(self, client: PlainLeg, idle_timeout: float, on_done: Done, high_water: int = HIGH_WATER) -> Stream:
        """Relay `client` through this tunnel (after an ok status)."""
        pending, self._pending = self._pending, b""
        self.streams += 1
        return Stream(self, client, idle_timeout, on_done, pending=pending, high_water=high_water)

    def control_data(self, data: bytes) -> None:
        if self._answer is None or self._preamble is None or self._answer.done():
            if self._answer is not None and self._answer.done():
                self._pending += data  # stream bytes that followed the ok status
                return
            _throttle.log(log, logging.WARNING, "outside", "tunnel peer sent %d bytes outside a stream; closing it",
                          len(data))
            self.close()
            return
        self._preamble.receive_data(data)
        try:
            event = self._preamble.next_event()
        except RemoteProtocolError as exc:
            self._answer.set_exception(exc)
            self.close()
            return
        if event is NEED_DATA:
            return
        assert isinstance(event, Response | ProbeAnswer)
        self._pending = self._preamble.trailing_data
        self._answer.set_result(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionResetError("tunnel closed before a status"))
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None
        super().connection_lost(exc)


class TunnelPool:
    """Idle tunnels to one peer gateway: taken without a handshake, refilled in the background.

    `size` tunnels are kept open ahead of demand; up to `keep` are kept after a burst, until idle.
    """

    def __init__(self, key: PoolKey, gateway: Gateway, context: ResumingContext, bundle: Bundle,
                 mesh: Readable[MeshView], size: int, idle: float, handshake_timeout: float,
                 spawn: Callable[..., Any], keep: int | None = None, max_age: float = 3600.0,
                 active: ActiveStreams | None = None) -> None:
        self.key = key
        self.gateway = gateway
        self.context = context
        self.trust = bundle
        self.mesh = mesh
        self.size = size
        self.keep = max(size, keep if keep is not None else size)
        self.max_age = max_age
        self.idle_seconds = idle
        self.handshake_timeout = handshake_timeout
        self._spawn = spawn
        self._idle: collections.deque[tuple[EgressTunnel, asyncio.TimerHandle]] = collections.deque()
        self._filling = 0
        self._in_use: set[EgressTunnel] = set()
        self.handshakes = 0
        self.closed = False
        self._active = active

    @property
    def server_name(self) -> str:
        """The SNI/session key for this gateway (names are checked by SPIFFE ID, not by hostname)."""
        return f"{self.gateway.name}.{self.key[0]}.{current(self.trust).trust_domain}"

    async def take(self) -> tuple[EgressTunnel, bool]:
        """A tunnel ready for a request, and whether it came from the pool (no handshake waited for)."""
        while self._idle:
            tunnel, timer = self._idle.popleft()
            timer.cancel()
            if tunnel.usable:
                self._in_use.add(tunnel)
                self._refill()
                return tunnel, True
        tunnel = await self.open()
        self._in_use.add(tunnel)
        self._refill()
        return tunnel, False

    def warm(self) -> None:
        """Open tunnels in the background until `size` are idle."""
        if not self.closed:
            self._refill()

    @property
    def idle(self) -> int:
        """Tunnels open and waiting for a stream."""
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """Tunnels carrying a stream (or waiting for its status)."""
        return len(self._in_use)

    def give_back(self, tunnel: EgressTunnel) -> None:
        """Return a taken tunnel: kept if its stream ended cleanly and the pool has room, else closed."""
        self._in_use.discard(tunnel)
        too_old = asyncio.get_running_loop().time() - tunnel.opened > self.max_age
        if self.closed or too_old or not tunnel.usable or len(self._idle) >= max(self.keep, 1):
            tunnel.close()
            return
        timer = asyncio.get_running_loop().call_later(self.idle_seconds, self._expire, tunnel)
        self._idle.append((tunnel, timer))

    async def open(self) -> EgressTunnel:
        """Handshake a new tunnel and check the server is a gateway of the expected site.

        A resumed session carries the peer's certificate from the handshake it came from: when that one
        no longer verifies (the peer's intermediate or root was replaced since), the session is dropped
        and a full handshake tried once, which sees the peer's leaf of now.
        """
        loop = asyncio.get_running_loop()
        for full in (False, True):
            self.handshakes += 1
            transport, tunnel = await loop.create_connection(
                EgressTunnel, self.gateway.address, self.gateway.port, ssl=self.context,
                server_hostname=self.server_name, ssl_handshake_timeout=self.handshake_timeout,
            )
            sslobj = transport.get_extra_info("ssl_object")
            try:
                if sslobj is None:
                    raise ConnectionResetError("tunnel closed right after its handshake")
                verify_peer(sslobj.getpeercert(binary_form=True), self.mesh.get(), current(self.trust),
                            dt.datetime.now(dt.UTC), expect_site=self.key[0])
            except PeerRejected:
                transport.abort()
                if full or sslobj is None or not sslobj.session_reused:
                    raise
                self.context.forget(self.server_name)
                continue
            except BaseException:
                transport.abort()
                raise
            break
        if self._active is not None and not tunnel.closed:
            self._active.tunnel_up()
            tunnel.on_lost = self._active.tunnel_down
        return tunnel

    def remember_session(self, tunnel: EgressTunnel) -> None:
        """After a status arrived (so TLS 1.3 tickets have been read), keep the session for resumption.

        Only when the context wants a newer one (`ResumingContext.wants`): reading it leaks on CPython 3.11.
        """
        if tunnel.transport is None or tunnel.session_saved:
            return
        sslobj = tunnel.transport.get_extra_info("ssl_object")
        if sslobj is not None and self.context.wants(self.server_name, resumed=sslobj.session_reused):
            tunnel.session_saved = True
            self.context.remember(self.server_name, sslobj.session)

    def close(self) -> None:
        """Close every tunnel, idle or in use (the egress ends streams first)."""
        self.closed = True
        while self._idle:
            tunnel, timer = self._idle.popleft()
            timer.cancel()
            tunnel.close()
        for tunnel in list(self._in_use):
            tunnel.close()

    def _refill(self) -> None:
        # Tunnels in use come back when their stream ends; only top up what they will not cover.
        want = self.size - len(self._idle) - self._filling - len(self._in_use)
        for _ in range(max(0, want)):
            self._filling += 1
            self._spawn(self._fill_one(), name=f"egress-pool-fill-{self.key[0]}")

    async def _fill_one(self) -> None:
        try:
            tunnel = await self.open()
        except (OSError, TimeoutError, PeerRejected) as exc:
            _throttle.log(log, logging.INFO, ("fill", self.key), "could not pre-open a tunnel to %s:%d: %s",
                          self.key[1], self.key[2], exc)
            return
        finally:
            self._filling -= 1
        self.give_back(tunnel)

    def _expire(self, tunnel: EgressTunnel) -> None:
        for i, (t, _) in enumerate(self._idle):
            if t is tunnel:
                del self._idle[i]
                break
        tunnel.close()



def pool_of(pools: dict[PoolKey, TunnelPool], site: str, gateway: Gateway, context: ResumingContext, trust: Bundle,
            mesh: Readable[MeshView], settings: GatewaySettings, spawn: Callable[..., Any],
            active: ActiveStreams) -> TunnelPool:
    """The pool of `pools` for `gateway` of `site`, made (or remade, if the gateway changed) with `settings`."""
    key = (site, gateway.address, gateway.port)
    pool = pools.get(key)
    if pool is None or pool.gateway != gateway:
        if pool is not None:
            pool.close()
        pool = pools[key] = TunnelPool(
            key, gateway, context, trust, mesh, settings.pool_size, settings.pool_idle, settings.handshake_timeout,
            spawn, keep=settings.pool_max, max_age=settings.tunnel_max_age, active=active,
        )
    return pool
