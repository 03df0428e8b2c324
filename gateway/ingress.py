"""Global ingress: listeners for clients outside the mesh, each mapped to a mesh service, at any site.

A listener maps either every client to one service port (`service`), or, for TLS, each client to the service
its ClientHello names (`routes`, SNI passthrough: the TLS session stays end to end between the client and the
service, meshfed reads only the server name; gateway/sni.py). The client is then handed to the egress, which
routes it as one of the site's own clients: the same routes, locality, failover and traffic policy, and the
access policies of the hosting site. Configured in the agent config's `ingress:` list of the site that hosts it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from federation.core.settings import Invalid, setting
from federation.core.view import MeshView
from federation.runtime.values import Readable
from gateway.capture import SocketListener, reset
from gateway.destinations import ListenerKey
from gateway.refusals import Throttle
from gateway.relay import PlainLeg
from gateway.sni import MAX_RECORD, NeedMore, NotHello, server_name

log = logging.getLogger(__name__)
_throttle = Throttle()

Admit = Callable[[PlainLeg, ListenerKey], None]
"""The egress's `admit`: route a new client of a service port."""


def _hostport(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535 or not host.strip("[]"):
        return f"{value!r} is not host:port (e.g. 0.0.0.0:8443)"
    return None


def _service(value: str) -> str | None:
    ns, sep, name = value.partition("/")
    return None if sep and ns and name and "/" not in name else f"{value!r} is not namespace/name"


@dataclass(frozen=True, slots=True)
class SniRoute:
    """One server name (or a `*.example.com` pattern) and the service its TLS clients reach."""

    name: str = setting("", nonempty=True)
    """A host name the clients put in their ClientHello (SNI), or a glob such as `*.shop.example.com`."""
    service: str = setting("", check=_service)
    """`namespace/name` of the mesh service."""
    port: str = ""
    """The service port's name or number; empty: the service's only port."""


@dataclass(frozen=True, slots=True)
class IngressSettings:
    """One ingress listener (an entry of the agent config's `ingress:` list)."""

    listen: str = setting("", check=_hostport)
    """Where clients from outside the mesh connect, e.g. `0.0.0.0:8443`."""
    service: str = ""
    """`namespace/name`: every client of this listener reaches that service (plain TCP, any protocol)."""
    port: str = ""
    """With `service`: the service port's name or number; empty: the service's only port."""
    routes: tuple[SniRoute, ...] = ()
    """Instead of `service`: TLS passthrough, each client to the service its server name (SNI) names."""
    hello_timeout: float = setting(5.0, positive=True)
    """With `routes`: a client that has not sent its ClientHello by then is reset (a slowloris holds nothing)."""

    def validate(self) -> None:
        """Checks between fields."""
        if bool(self.service) == bool(self.routes):
            raise Invalid("service", "set either service (one service for every client) or routes (by SNI)")
        if self.service and _service(self.service):
            raise Invalid("service", str(_service(self.service)))


class IngressMetrics:
    """Clients of ingress listeners, by listener and result."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.clients = Counter(
            "meshfed_ingress_clients", "Clients of ingress listeners by result (routed, unknown_name, bad_hello, "
            "hello_timeout, no_service)", ["listener", "result"], registry=registry,
        )  # fmt: skip


class IngressListener(SocketListener):
    """One `IngressSettings` listener: `start()` binds it; each client is handed to `admit` or reset."""

    def __init__(self, settings: IngressSettings, mesh: Readable[MeshView], admit: Admit,
                 metrics: IngressMetrics) -> None:
        self.settings = settings
        self._mesh = mesh
        self._admit = admit
        self._metrics = metrics
        super().__init__()

    async def start(self) -> None:
        """Bind and start accepting."""
        host, _, port = self.settings.listen.rpartition(":")
        await self._serve(host.strip("[]"), int(port), lambda: _IngressLeg(self))
        log.info("ingress listener on %s:%d (%s)", *self.address,
                 self.settings.service or f"{len(self.settings.routes)} TLS server name route(s)")

    # -- one client

    def route(self, leg: PlainLeg, service: str, port: str) -> None:
        """Hand `leg` to the egress as a client of `service`'s `port`, or reset it if the mesh has no such port."""
        key = self.key(service, port)
        if key is None:
            self.refuse(leg, "no_service", f"{service} has no port {port!r}" if port else
                         f"{service} is not in the mesh or has several ports (set port)")
            return
        self._metrics.clients.labels(self.settings.listen, "routed").inc()
        self._admit(leg, key)

    def key(self, service: str, port: str) -> ListenerKey | None:
        """The listener key of `service`'s `port` (a name, a number, or empty for its only port) in the view."""
        ns, _, name = service.partition("/")
        svc = self._mesh.get().service(ns, name)
        if svc is None:
            return None
        for p in svc.ports:
            if port in (p.name, str(p.port)) or (not port and len(svc.ports) == 1):
                return ns, name, p.name
        return None

    def hello(self, leg: _IngressLeg, data: bytes) -> None:
        """Bytes of a TLS client before it is routed: route it by its server name once the hello is complete."""
        try:
            name = server_name(data)
        except NeedMore:
            if len(data) >= MAX_RECORD:
                self.refuse(leg, "bad_hello", "the ClientHello is longer than one TLS record")
            return
        except NotHello as exc:
            self.refuse(leg, "bad_hello", str(exc))
            return
        leg.routed()
        for r in self.settings.routes:
            if name is not None and fnmatch.fnmatchcase(name, r.name.lower()):
                self.route(leg, r.service, r.port)
                return
        self.refuse(leg, "unknown_name", f"server name {name!r} matches no route" if name else
                     "the ClientHello names no server (SNI)")

    def timed_out(self, leg: _IngressLeg) -> None:
        """The hello timeout of `leg` ran out."""
        leg.routed()
        self.refuse(leg, "hello_timeout", f"no ClientHello within {self.settings.hello_timeout:g}s")

    def refuse(self, leg: PlainLeg, result: str, why: str) -> None:
        """Reset `leg`, count it under `result`, and say `why` (one line per listener and result a while)."""
        self._metrics.clients.labels(self.settings.listen, result).inc()
        peer = leg.transport.get_extra_info("peername") if leg.transport is not None else None
        _throttle.log(log, logging.WARNING, ("ingress", self.settings.listen, result),
                      "ingress %s: client %s reset: %s", self.settings.listen, peer[0] if peer else "?", why)
        reset(leg)


class _IngressLeg(PlainLeg):
    """A client of an ingress listener; with SNI routes it reads the ClientHello before it is routed."""

    outside = True
    """From outside the mesh: its source address names no workload, even one a pod here has too."""

    def __init__(self, listener: IngressListener) -> None:
        super().__init__()
        self.listener = listener
        self._peeking = bool(listener.settings.routes)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # reading paused until routed
        s = self.listener.settings
        if not self._peeking:
            self.listener.route(self, s.service, s.port)
            return
        self._timer = asyncio.get_running_loop().call_later(s.hello_timeout, self.listener.timed_out, self)
        self.transport.resume_reading()  # type: ignore[union-attr]

    def routed(self) -> None:
        """The hello is read: stop reading until the route attaches a stream (it takes `early`)."""
        self._peeking = False
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if not self._peeking:
            super().data_received(data)
            return
        self.early += data
        self.listener.hello(self, bytes(self.early))

    def eof_received(self) -> bool:
        if self._peeking:  # gone before its hello was complete
            self.routed()
            self.listener.refuse(self, "bad_hello", "the client closed before its ClientHello was complete")
            return False
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)
