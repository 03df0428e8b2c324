"""One authenticated tunnel at the east-west gateway: identity check, stream requests, relays, its lifetime.

No tunnel outlives its peer's certificate (a timer at its notAfter); the gateway closes the tunnels of
a site that left the registry (`EastWestGateway.run`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol, cast

from federation.core.errors import RemoteProtocolError
from federation.core.policy.access import Peer
from federation.core.view import MeshView
from federation.pki.verifying import PeerRejected, TrustBundle, verify_peer
from federation.runtime.values import Readable
from gateway.accesslog import AccessLog
from gateway.admission import Admission, admit
from gateway.authorization import Authorizer, vouched
from gateway.balancing import EndpointPicker
from gateway.endpointchecks import EndpointChecks
from gateway.healthquery import HealthQuery
from gateway.preamble import NEED_DATA, Preamble, Probe, ProbeAnswer, Request, Response, Role, Status
from gateway.refusals import GatewayMetrics, Refusals, Throttle
from gateway.relay import ActiveStreams, PlainLeg, Stream, TunnelLeg
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
_throttle = Throttle()

MAX_ATTEMPTS = 3
"""Endpoints tried per stream request before answering `refused`."""
_MAX_EARLY = 64 * 1024


class TunnelHost(Protocol):
    """What a tunnel uses of the gateway that accepted it (`gateway.eastwest.EastWestGateway`)."""

    site: str
    mesh: Readable[MeshView]
    metrics: GatewayMetrics
    refusals: Refusals
    picker: EndpointPicker
    active: ActiveStreams
    tunnels: set[GatewayTunnel]
    ended: Throttle
    authorizer: Authorizer
    accesslog: AccessLog
    health: EndpointChecks

    @property
    def bundle(self) -> TrustBundle: ...

    @property
    def settings(self) -> GatewaySettings: ...
    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None: ...


class GatewayTunnel(TunnelLeg):
    """One authenticated tunnel from a peer gateway: preamble, connect, relay; again after a clean end."""

    def __init__(self, gateway: TunnelHost, peer: str) -> None:
        super().__init__()
        self.gw = gateway
        self.peer = peer
        self.identity = ""
        self.peer_site = ""
        self.peer_expiry: dt.datetime | None = None
        self.service: tuple[str, str] | None = None
        """The service of the stream running (or last run) in this tunnel."""
        self.workload: str | None = None
        """Its client's SPIFFE ID, in the scope of the peer's site (None: the peer named none)."""
        self._early = bytearray()
        self._ready = False
        self._preamble = Preamble(Role.SERVER)
        self._got_bytes = False
        self._timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
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
            identity = verify_peer(der, self.gw.mesh.get(), self.gw.bundle, dt.datetime.now(dt.UTC),
                                   revoked=self.gw.authorizer.state.revoked)
        except PeerRejected as exc:
            self.gw.refusals.refuse("identity", exc.cause, self.peer, str(exc))
            # The chain verified to the mesh root, so the peer is one of ours: tell it why (no TLS
            # alert can follow a finished handshake; the preamble is the channel we have).
            self._answer(Response(Status.FORBIDDEN, f"identity not accepted: {exc}"))
            self.close()
            return
        self.identity = identity.spiffe_id
        self.peer_site = identity.site
        self.peer_expiry = identity.not_after
        if identity.not_after is not None:
            # TLS checks the certificate once, at the handshake: the tunnel ends when the certificate does.
            left = (identity.not_after - dt.datetime.now(dt.UTC)).total_seconds()
            self._expiry = asyncio.get_running_loop().call_later(max(left, 0.0), self.end, "certificate_expired")
        self.gw.tunnels.add(self)
        self.gw.active.tunnel_up()
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
            self._refuse("preamble", exc.cause, str(exc), Status.BAD_REQUEST, close=True)
            return
        if event is NEED_DATA:
            return
        self._cancel_timer()
        trailing = self._preamble.trailing_data
        if isinstance(event, Probe | HealthQuery):  # the peer's probers: answered at once, no stream
            if self.transport is not None and not self.closed:
                self.transport.write(Preamble(Role.SERVER).send(
                    ProbeAnswer(event.nonce, time.time_ns() // 1_000_000, self.gw.site) if isinstance(event, Probe)
                    else self.gw.health.answer(event, self.peer_site, self.gw.authorizer.site_refusal(
                        self.gw.mesh.get(), self.peer_site, self.identity))))
            self._await_request(trailing)
            return
        assert isinstance(event, Request)
        view = self.gw.mesh.get()
        if self.peer_site not in view.sites:
            # The peer's site left the registry since the handshake (`run` is about to close the tunnel).
            self._refuse("identity", "site-removed",
                         f"{self.identity}: site {self.peer_site} is no longer in the registry",
                         Status.FORBIDDEN, close=True)
            return
        # A site vouches for its own workloads only: `ns/sa` is taken in the scope of the verified peer's site.
        workload = vouched(self.identity, self.peer_site, event.workload)
        peer = Peer(self.peer_site, view.sites[self.peer_site].network, self.identity, workload)
        decision = self.gw.authorizer.check((event.namespace, event.service), peer)
        if not decision.allowed:
            # Counted and logged (once a minute per source, service and rule) by the authorizer.
            self.gw.metrics.streams.labels(Status.FORBIDDEN.name.lower()).inc()
            self._answer(Response(Status.FORBIDDEN, f"denied by access policy: {decision.reason}"))
            self._await_request(trailing)
            return
        admission = admit(view, self.gw.site, event)
        if admission.status is not Status.OK:
            self._refuse("stream", admission.cause, f"{self.identity}: {admission.reason}", admission.status,
                         close=False)
            self._await_request(trailing)
            return
        self.service, self.workload = (event.namespace, event.service), workload
        self._connecting = True
        self._pending = bytearray(trailing)
        assert self.transport is not None
        self.transport.pause_reading()
        self.gw.spawn(self._connect(admission), name=f"gateway-connect-{self.peer}")

    async def _connect(self, admission: Admission) -> None:
        loop = asyncio.get_running_loop()
        order = self.gw.picker.order((*admission.key, admission.subset), admission.targets, loop.time())
        for tries, target in enumerate(order[:MAX_ATTEMPTS]):
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
            self._last = Stream(self, leg, self.gw.settings.idle_timeout, self._stream_done, pending=pending,
                                high_water=self.gw.settings.high_water)
            self.gw.accesslog.inbound(self._last, admission.key, self.peer_site, self.peer,
                                      f"{target.address}:{target.port}", tries, self.workload)
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
            return
        self._connecting = False
        ns, svc, port = admission.key
        self._refuse("stream", "all-refused", f"{self.identity}: every endpoint of {ns}/{svc}:{port} refused",
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

    def _refuse(self, kind: str, cause: str, reason: str, status: Status, close: bool) -> None:
        self.gw.metrics.streams.labels(status.name.lower()).inc()
        self.gw.refusals.refuse(kind, cause, self.peer, reason)
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
            self.gw.refusals.refuse("preamble", "timeout", self.peer, reason)
        self.close()

    def end(self, why: str) -> None:
        """Close the tunnel now, aborting its stream if one runs (`why`: certificate_expired, site_removed,
        revoked, denied)."""
        if self.closed:
            return
        self.gw.metrics.ended.labels(why).inc()
        # Logged once per peer and certificate per minute: one peer often holds several tunnels.
        if why == "certificate_expired" and self.gw.ended.allow((why, self.peer, self.identity)):
            log.warning("closing tunnel(s) from %s: the certificate of %s expired at %s", self.peer, self.identity,
                        self.peer_expiry)
        if self.stream is not None:
            self.stream.finish(clean=False)  # the endpoint's connection is aborted, the peer gets ABORT
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._expiry is not None:  # else the timer would hold the tunnel until its notAfter
            self._expiry.cancel()
        if self in self.gw.tunnels:
            self.gw.tunnels.discard(self)
            self.gw.active.tunnel_down()
            self.gw.metrics.tunnels.dec()
        super().connection_lost(exc)

    def close(self) -> None:
        self._cancel_timer()
        if self._expiry is not None:
            self._expiry.cancel()
        super().close()
