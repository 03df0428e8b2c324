"""The egress: a local listener per imported service port, relaying each client to the best reachable route.

Every client is routed by the enforcer (`gateway.enforcing`) under its service's TrafficPolicy, or the
default rules when the service has none: endpoints on our own network directly, else a gateway of another
site through a pooled mTLS tunnel; a refused, failed or hung connect is retried (and hedged) on another
route before any application byte is sent. `run()` keeps the listeners matching the mesh view
and the placement (where each listener binds); `unreachable` says which sites' gateways failed lately.

In capture mode (`capture=` a bind address: a VM agent that installed netfilter redirect rules) one
listener takes every ClusterSetIP service at its VIPs (gateway.capture) and per-port listeners remain
only for the others; a captured client whose original destination names no service port is reset.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import immutables
from prometheus_client import CollectorRegistry

from federation.core.errors import RemoteProtocolError
from federation.core.policy.access import AccessState, Peer
from federation.core.view import MeshView
from federation.pki.verifying import PeerRejected
from federation.runtime.values import Readable, Value, follow
from gateway.accesslog import AccessLog
from gateway.authorization import Authorizer, site_peer
from gateway.balancing import Bind, Close, Direct, ListenerKey, Open, Placement, Route, plan, routes
from gateway.capture import CaptureListener, reset
from gateway.destinations import CapturedServices, Destination, captured_type
from gateway.enforcing import Enforcer, Policies, noted
from gateway.identities import NO_WORKLOADS, client_workload
from gateway.listening import ListenerPlan
from gateway.partition import PartitionGate
from gateway.pool import PoolKey, TunnelPool, pool_of
from gateway.preamble import Status
from gateway.reachability import Reachability
from gateway.refusals import EgressMetrics, Throttle
from gateway.relay import ActiveStreams, PlainLeg
from gateway.settings import GatewaySettings, live
from gateway.shedding import Shedder, reset_transport
from gateway.splice import Splice
from gateway.subsets import SubsetSupport
from gateway.tls import Bundle, ResumingContext, current
from gateway.tracking import TrackedRelays

log = logging.getLogger(__name__)
_throttle = Throttle()


class Egress:
    """Egress listeners of one site: `start()` binds them, `run()` keeps them following the mesh view and
    the placement, `stop_accepting()` and `close(grace)` end them."""

    def __init__(self, site: str, mesh: Readable[MeshView], client_context: ResumingContext,
                 bundle: Bundle, settings: GatewaySettings | Readable[GatewaySettings] | None = None,
                 registry: CollectorRegistry | None = None, placement: Readable[Placement] | None = None,
                 local_services: bool = False, capture: Bind | None = None,
                 access: Readable[AccessState] | None = None, policies: Readable[Policies] | None = None,
                 accesslog: AccessLog | None = None, headless_captured: bool = False) -> None:
        """`headless_captured`: capture also takes headless endpoints' addresses (gateway.headless): no listener."""
        self.site = site
        self.accesslog = accesslog or AccessLog()
        self.mesh = mesh
        self.context = client_context
        self.trust = bundle
        self._settings = live(settings)
        self.shedder = Shedder(self._settings.get)
        """Resets new clients beyond `max_connections` or `accept_rate` (counted as result="shed")."""
        registry = registry or CollectorRegistry()
        self.metrics = EgressMetrics(registry)
        self.authorizer = Authorizer(access, "egress", registry)  # this site's own clients, direct routes included
        self.enforcer = Enforcer(site, self.metrics, self._direct, self._tunnel, policies, registry)
        self.workloads = NO_WORKLOADS  # the site's source sets it (federation.core.workloads): who is behind a client
        self.subsets = SubsetSupport()  # a split's labels in the stream request; old gateways get none
        self.placement: Readable[Placement] = placement or Value(
            Placement(fallback=(self.settings.egress_address, self.settings.egress_port)), name="placement")
        self.reach = Reachability()
        self.partition = PartitionGate(policies, registry, mesh)
        self.enforcer.sites_down, self.enforcer.sites_refused = self.reach.sites_down, self.partition.stale_sites
        self.enforcer.relayed = self.accesslog.egress
        self.reach.gateway_alive = self.enforcer.gateway_alive
        self.unreachable = self.reach.unreachable
        """Sites whose gateway could not be reached lately (DNS leaves them out while others serve)."""
        self.listening: Value[Mapping[ListenerKey, tuple[str, int]]] = Value(
            immutables.Map(), name="listeners", same=operator.is_)
        """(namespace, service, port name) -> the (host, port) its listener is bound to."""
        self.local_services = local_services
        """Also listen for services only this site exports (a VM's own services at their VIP)."""
        self.capture_bind = capture
        """Where the capture listener binds (capture mode); None: a listener per service port."""
        self._headless_captured = capture is not None and headless_captured
        self.capture: CaptureListener | None = None
        self.claims: list[Callable[[PlainLeg, Destination], bool]] = []
        """Offered a captured client whose destination is no VIP first (headless endpoints' addresses)."""
        self._captured = CapturedServices(site, local_services)
        self.metrics.mode.labels("capture").set(1 if capture is not None else 0)
        self.metrics.mode.labels("listeners").set(0 if capture is not None else 1)
        self._servers: dict[ListenerKey, asyncio.Server] = {}
        self.pools: dict[PoolKey, TunnelPool] = {}  # the prober reads them (tunnels open and pooled)
        self._tasks: set[asyncio.Task[None]] = set()
        self._plan = ListenerPlan(site, local_services, self._is_captured)
        self.active = ActiveStreams()
        self.relays = TrackedRelays(self.active)

    @property
    def settings(self) -> GatewaySettings:
        """The settings as they are now (a reload may replace them)."""
        return self._settings.get()

    # -- lifecycle

    @property
    def mode(self) -> str:
        """"capture" (one listener for every VIP) or "listeners" (one per service port)."""
        return "capture" if self.capture_bind is not None else "listeners"

    async def start(self) -> None:
        """Open the capture listener (capture mode) and the listeners the current view and placement want."""
        if self.capture_bind is not None and self.capture is None:
            self.capture = CaptureListener(self._captured.index, self.admit, self._unknown)
            await self.capture.start(*self.capture_bind)
            log.info("egress capture listener on [%s]:%d", *self.capture.address)
        await self._apply()

    async def run(self) -> None:
        """Keep the listeners matching the mesh view and the placement, until cancelled."""
        async for _ in follow(self.mesh, self.placement):
            await self._apply()

    def listeners(self, keys: Iterable[ListenerKey] | None = None) -> dict[ListenerKey, tuple[str, int]]:
        """(namespace, service, port name) -> the (host, port) its listener is bound to (for `keys`: those only)."""
        out = {}
        for key in self._servers if keys is None else keys:
            server = self._servers.get(key)
            if server is not None and server.sockets:  # none once stop_accepting() closed it
                host, port = server.sockets[0].getsockname()[:2]
                out[key] = (host, port)
        return out

    def stop_accepting(self) -> None:
        """Close every listener; relayed streams go on (a stopping agent drains them)."""
        for server in self._servers.values():
            server.close()
        if self.capture is not None:
            self.capture.close()

    async def close(self, grace: float = 0.0) -> None:
        """Close listeners; let streams finish for up to `grace` seconds; then close pools and streams."""
        self.stop_accepting()
        self.reach.close()
        await self.active.wait_idle(grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for relay in self.relays.relays():
            relay.finish(clean=False)
        for pool in self.pools.values():
            pool.close()
        for server in self._servers.values():
            await server.wait_closed()
        if self.capture is not None:
            await self.capture.wait_closed()
        self._servers.clear()
        self.metrics.listeners.set(0)

    # -- reconciling listeners

    async def _apply(self) -> None:
        """Bring the listeners to what the view and the placement want; after a registry change, only the
        listeners of the services it touched are looked at."""
        view, placement = self.mesh.get(), self.placement.get()
        if not view.complete:
            return
        step = self._plan.step(view, placement, self._servers.keys())
        check, wanted = step.check, step.wanted
        captured = self._captured.update(view, placement.vips, step.touched) if self.capture is not None else []
        bound = self.listeners(check)
        loop = asyncio.get_running_loop()
        listening = self.listening.get()
        mutation = listening.mutate() if isinstance(listening, immutables.Map) else immutables.Map(listening).mutate()
        for op in plan(wanted, bound):
            if isinstance(op, Close):
                self._servers.pop(op.key).close()
                if op.key in mutation:
                    del mutation[op.key]
                log.info("egress listener for %s/%s:%s closed", *op.key)
            elif isinstance(op, Open):
                try:
                    server = await loop.create_server(self._factory(op.key), op.bind[0], op.bind[1], backlog=1024)
                except OSError as exc:
                    log.error("egress listener for %s/%s:%s on %s:%d failed: %s", *op.key, *op.bind, exc)
                    continue
                self._servers[op.key] = server
                mutation[op.key] = self.listeners((op.key,))[op.key]
                log.info("egress listener for %s/%s:%s on %s:%d", *op.key, *mutation[op.key])
        self.metrics.listeners.set(len(self._servers) + (self.capture is not None))
        self.metrics.captured.set(len(self._captured))
        if len(mutation) != len(listening) or any(mutation.get(k) != listening.get(k) for k in check):
            self.listening.set(mutation.finish())  # a new map only when a listener changed: followers diff it
        if step.sites_changed:
            for pool_key in [k for k in self.pools if k[0] not in view.sites]:
                self.pools.pop(pool_key).close()
        self._warm(view, [*(k for k in check if k in self._servers), *captured])

    def _is_captured(self, view: MeshView, key: ListenerKey) -> bool:
        """True if the capture listener serves `key`'s service (capture mode: ClusterSetIP, and headless when
        its endpoints' addresses are captured too)."""
        if self.capture_bind is None:
            return False
        svc = view.service(key[0], key[1])
        return svc is not None and (captured_type(svc) or self._headless_captured)

    def _warm(self, view: MeshView, listeners: Iterable[ListenerKey]) -> None:
        """Pre-open tunnels to the first gateway each listener would use, so no client waits for them."""
        for key in listeners:
            for route in routes(view, self.site, *key):
                if not isinstance(route, Direct):
                    self._pool(route.site, route.gateway).warm()
                break

    # -- routing one client

    def _factory(self, key: ListenerKey) -> Callable[[], _ClientLeg]:
        return lambda: _ClientLeg(self, key)

    def admit(self, client: PlainLeg, key: ListenerKey) -> None:
        """Route a new client of `key`, or reset it at once beyond `max_connections` or `accept_rate`."""
        why = self.shedder.refuse(self.active.count + len(self._tasks), time.monotonic())
        if why is not None:
            self.metrics.connections.labels("shed").inc()
            self.shedder.say(log, "egress", why, self.active.count)
            reset_transport(client.transport)
            return
        self.spawn(self.route(client, key), name="egress-route-{}/{}:{}".format(*key))

    def _unknown(self, client: PlainLeg, dest: Destination | None) -> None:
        """A captured client whose destination is no service port: reset it, as one with no route."""
        if dest is not None and any(claim(client, dest) for claim in self.claims):
            return
        self.metrics.connections.labels("unknown_destination").inc()
        where = f"{dest[0]}:{dest[1]}" if dest is not None else "an unknown destination (not redirected)"
        _throttle.log(log, logging.WARNING, ("unknown-destination", dest),
                      "captured connection to %s is no imported service port: reset", where)
        reset(client)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run `coro` as a named task that `close()` cancels."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def route(self, client: PlainLeg, key: ListenerKey) -> None:
        """Connect `client` as its service's rules say (its TrafficPolicy's or the defaults), or reset it."""
        view, source = self.mesh.get(), self._peer(client_workload(self.workloads, client))
        if self.partition.refuses(client, key):  # the registry is away and the service's policy says stop
            return
        if self.authorizer.check(key[:2], source).allowed:  # counted and logged when denied
            await self.enforcer.route(client, key, view, self.enforcer.rules(view, key), source.workload)
            return
        self.metrics.connections.labels("denied").inc()
        reset_transport(client.transport)  # a reset, so the client cannot take an empty answer for the service's

    async def enforce(self) -> None:
        """Close the streams of this site's clients that a changed access policy now denies, until cancelled."""
        await self.authorizer.enforce(self.relays.streams, self._peer)

    def _peer(self, workload: str | None = None) -> Peer:
        return site_peer(self.mesh.get(), self.site, current(self.trust).trust_domain, self.settings.name, workload)

    async def _direct(self, client: PlainLeg, route: Direct, key: ListenerKey, note: list[str] | None = None,
                      idle: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        t = route.target
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, leg = await loop.create_connection(PlainLeg, t.address, t.port)
        except (OSError, TimeoutError) as exc:
            self.metrics.attempts.labels("direct", "refused").inc()
            noted(note, "refused")
            _throttle.log(log, logging.INFO, ("direct", t), "direct connect to %s:%d failed: %s",
                          t.address, t.port, exc)
            return False
        self.metrics.attempts.labels("direct", "ok").inc()
        held: list[Any] = []
        splice = Splice(client, leg, idle or self.settings.idle_timeout, lambda _clean: self.relays.untrack(held),
                        high_water=self.settings.high_water)
        self.relays.track(splice, held, key, client_workload(self.workloads, client))
        return True

    async def _tunnel(self, client: PlainLeg, route: Route, key: ListenerKey, note: list[str] | None = None,
                      idle: float | None = None, hostname: str | None = None) -> bool:
        assert not isinstance(route, Direct)
        pool = self._pool(route.site, route.gateway)
        req = self.subsets.request(key, route, time.monotonic(), hostname,  # hostname: one endpoint (headless)
                                   client_workload(self.workloads, client))
        for _ in range(2 + bool(req.subset or req.workload)):  # a pooled tunnel may have died idle: one more
            tunnel = None
            try:
                async with asyncio.timeout(self.settings.handshake_timeout + self.settings.connect_timeout):
                    tunnel, reused = await pool.take()
                    resp = await tunnel.request(req)
            except asyncio.CancelledError:
                if tunnel is not None:
                    tunnel.close()
                    pool.give_back(tunnel)
                raise
            except (OSError, TimeoutError, RemoteProtocolError, ssl.SSLError, PeerRejected) as exc:
                if tunnel is not None:
                    tunnel.close()
                    pool.give_back(tunnel)
                self.metrics.attempts.labels("gateway", "failed").inc()
                noted(note, "gateway")
                self.reach.failed(route.site)
                if isinstance(exc, PeerRejected):  # not a gateway of that site: say so, and try another route
                    self.metrics.refusals.labels(exc.cause).inc()
                    _throttle.log(log, logging.WARNING, ("refused", pool.key, exc.cause),
                                  "refused the gateway at %s:%d for site %s: %s", *pool.key[1:], route.site, exc)
                    return False
                _throttle.log(log, logging.INFO, ("tunnel", pool.key), "tunnel to %s gateway %s:%d failed: %s",
                              route.site, *pool.key[1:], exc)
                continue
            self.reach.succeeded(route.site)
            if reused:
                self.metrics.reused.inc()
            pool.remember_session(tunnel)
            if resp.status is not Status.OK:
                self.metrics.attempts.labels("gateway", resp.status.name.lower()).inc()
                noted(note, resp.status.name.lower())
                _throttle.log(log, logging.INFO, ("status", route.site, key, resp.status),
                              "gateway of %s answered %s for %s/%s:%s: %s", route.site, resp.status.name, *key,
                         resp.reason)
                pool.give_back(tunnel)
                if (legacy := self.subsets.retry(req, resp, route, time.monotonic())) is None:
                    return False
                req = legacy  # an old gateway refused the subset: the same request without it
                continue
            if tunnel.closed:  # lost right after its status (its transport is gone): a fresh tunnel, once
                continue
            if client.attached:  # a hedged try on another route took the client first (gateway.racing)
                noted(note, "late")
                tunnel.close()
                pool.give_back(tunnel)
                return False
            self.metrics.attempts.labels("gateway", "ok").inc()
            held: list[Any] = []

            def done(_clean: bool, tunnel: Any = tunnel, held: list[Any] = held) -> None:
                self.relays.untrack(held)
                pool.give_back(tunnel)
            self.relays.track(tunnel.attach(client, idle or self.settings.idle_timeout, done, self.settings.high_water),
                              held, key, client_workload(self.workloads, client))
            return True
        return False

    def _pool(self, site: str, gateway: Any) -> TunnelPool:
        return pool_of(self.pools, site, gateway, self.context, self.trust, self.mesh, self.settings, self.spawn,
                       self.active)


class _ClientLeg(PlainLeg):
    """An accepted client: reading stays paused until a route accepted it."""

    def __init__(self, egress: Egress, key: ListenerKey) -> None:
        super().__init__()
        self.egress = egress
        self.key = key

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.egress.admit(self, self.key)
