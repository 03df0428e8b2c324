"""Egress listeners for headless endpoints of other networks: one per (endpoint address here, port).

A client that connects to `<hostname>.<site>.<svc>.<ns>.svc.clusterset.local` (the address this site gave
that endpoint, federation.core.endpoints) reaches a listener that tunnels to that endpoint's own site with
its hostname in the preamble; the far gateway sends it to that one endpoint (gateway.admission), and no
other site is tried: a StatefulSet's pod is not interchangeable with another site's.

`HostPlan` (pure) says which listeners the table wants and where each binds, looking again only at the
services whose entry changed; `HostListeners` (the shell) binds them and routes their clients through the
egress's tunnels, pools, access checks and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import immutables

from federation.core.endpoints import EndpointAddresses, RemoteEndpoint
from federation.core.records import Protocol
from federation.core.view import MeshView, ServiceId
from federation.runtime.values import Readable, Value, follow
from gateway.balancing import Bind, Placement, ViaGateway
from gateway.capture import reset
from gateway.refusals import Throttle
from gateway.relay import PlainLeg

if TYPE_CHECKING:
    from gateway.egress import Egress

log = logging.getLogger(__name__)
_throttle = Throttle()

HostKey = tuple[str, str, str, str, str]
"""(namespace, service, port name, site, hostname): one listener of one remote endpoint."""
MAX_GATEWAYS = 4
"""Gateways of the endpoint's site tried per client before giving up on it."""


class HostPlan:
    """The listeners an endpoint table wants; `step` looks again only at services whose entry changed."""

    def __init__(self) -> None:
        self._last: tuple[EndpointAddresses, MeshView | None, Placement] | None = None
        self._by_service: dict[ServiceId, dict[HostKey, Bind]] = {}

    def step(self, table: EndpointAddresses, view: MeshView, placement: Placement) -> tuple[set[HostKey],
                                                                                             dict[HostKey, Bind]]:
        """(keys to look at, where each wanted one among them binds)."""
        last = self._last
        if last is None or last[2] != placement or last[1] is None:
            services = set(table) | set(self._by_service)
        else:
            before = last[0]
            moved = table.changes_since(before)
            services = set(moved) if moved is not None else {
                k for k in set(table) | set(before) if table.get(k) is not before.get(k)}
            diff = view.changes_since(last[1].generation) if view.history is last[1].history else None
            if diff is None:
                services |= set(table)
            else:
                services |= {k for k in diff.services if k in table or k in self._by_service}
        self._last = (table, view, placement)
        check: set[HostKey] = set()
        for key in services:
            old = self._by_service.pop(key, {})
            new = wanted_of(view, key, table.get(key, ()), placement)
            if new:
                self._by_service[key] = new
            check |= old.keys() | new.keys()
        wanted = {k: b for k in check for b in (self._by_service.get(k[:2], {}).get(k),) if b is not None}
        return check, wanted


def wanted_of(view: MeshView, service: ServiceId, remote: tuple[RemoteEndpoint, ...],
              placement: Placement) -> dict[HostKey, Bind]:
    """The listeners of one service's remote endpoints: at the endpoint's address where this host holds it
    (a VM's interface), else on the placement's fallback (Kubernetes: a derived Service per endpoint)."""
    svc = view.service(*service)
    if svc is None:
        return {}
    out: dict[HostKey, Bind] = {}
    for r in remote:
        for p in svc.ports:
            if p.protocol is Protocol.TCP and svc.serves(r.site, p.name):
                key = (service[0], service[1], p.name, r.site, r.hostname)
                out[key] = (r.address, p.port) if r.address in placement.held and p.port else placement.fallback
    return out


class HostListeners:
    """Binds the listeners of remote headless endpoints and routes their clients through `egress`."""

    def __init__(self, egress: Egress, endpoints: Readable[EndpointAddresses]) -> None:
        self.egress = egress
        self.endpoints = endpoints
        self._plan = HostPlan()
        self._servers: dict[HostKey, asyncio.Server] = {}
        self._unplaced = 0
        self.listening: Value[Mapping[HostKey, tuple[str, int]]] = Value(
            immutables.Map(), name="endpoint listeners", same=operator.is_)
        """(namespace, service, port name, site, hostname) -> the (host, port) its listener is bound to."""

    async def start(self) -> None:
        """Open the listeners the current table wants."""
        await self._apply()

    async def run(self) -> None:
        """Keep the listeners matching the table, the mesh view and the placement, until cancelled."""
        async for _ in follow(self.endpoints, self.egress.mesh, self.egress.placement):
            await self._apply()

    def stop_accepting(self) -> None:
        """Close every listener (relayed streams are the egress's, and drain with it)."""
        for server in self._servers.values():
            server.close()

    async def close(self) -> None:
        """Close the listeners and wait for them."""
        self.stop_accepting()
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()

    async def _apply(self) -> None:
        view, placement = self.egress.mesh.get(), self.egress.placement.get()
        if not view.complete:
            return
        table = self.endpoints.get()
        if table.unplaced != self._unplaced:
            self._unplaced = table.unplaced
            if table.unplaced:
                log.warning("%d headless endpoint(s) of other networks have no address here: the endpoint "
                            "ranges are full (vm.endpoint_ranges / kubernetes.endpoint_ranges); DNS leaves them out",
                            table.unplaced)
        check, wanted = self._plan.step(table, view, placement)
        current = self.listening.get()
        mutation = (current if isinstance(current, immutables.Map) else immutables.Map(current)).mutate()
        loop = asyncio.get_running_loop()
        for key in sorted(check):
            server = self._servers.get(key)
            want = wanted.get(key)
            if server is not None:
                host, port = server.sockets[0].getsockname()[:2]
                if want is not None and want[0] == host and want[1] in (0, port):
                    continue
                self._servers.pop(key).close()
                if key in mutation:
                    del mutation[key]
            if want is None:
                log.info("egress listener for %s/%s:%s of %s endpoint %s closed", *key)
                continue
            try:
                server = await loop.create_server(self._factory(key), want[0], want[1], backlog=1024)
            except OSError as exc:
                log.error("egress listener for %s/%s:%s of %s endpoint %s on %s:%d failed: %s", *key, *want, exc)
                continue
            self._servers[key] = server
            mutation[key] = tuple(server.sockets[0].getsockname()[:2])
            log.info("egress listener for %s/%s:%s of %s endpoint %s on %s:%d", *key, *mutation[key])
        if len(mutation) != len(current) or any(mutation.get(k) != current.get(k) for k in check):
            self.listening.set(mutation.finish())  # a new map only when a listener changed: followers diff it

    def _factory(self, key: HostKey) -> Callable[[], _HostLeg]:
        return lambda: _HostLeg(self, key)

    def admit(self, client: PlainLeg, key: HostKey) -> None:
        """Route a new client, or reset it at once beyond the egress's `max_connections` or `accept_rate`."""
        egress = self.egress
        why = egress.shedder.refuse(egress.active.count + len(egress._tasks), time.monotonic())
        if why is not None:
            egress.metrics.connections.labels("shed").inc()
            egress.shedder.say(log, "egress", why, egress.active.count)
            reset(client)
            return
        egress.spawn(self.route(client, key), name="egress-endpoint-{}/{}:{}@{}/{}".format(*key))

    async def route(self, client: PlainLeg, key: HostKey) -> None:
        """Tunnel `client` to the endpoint of `key` through a gateway of its own site, or reset it."""
        egress = self.egress
        ns, name, port, site, hostname = key
        allowed = egress.authorizer.check((ns, name), egress._peer()).allowed
        record = egress.mesh.get().sites.get(site)
        gateways: tuple[Any, ...] = record.gateways if record is not None and allowed else ()
        for gateway in gateways[:MAX_GATEWAYS]:
            if client.lost:
                egress.metrics.connections.labels("client_gone").inc()
                return
            if await egress._tunnel(client, ViaGateway(site, gateway), (ns, name, port), hostname=hostname):
                egress.metrics.connections.labels("relayed").inc()
                return
        egress.metrics.connections.labels("no_route" if allowed else "denied").inc()
        if allowed:
            _throttle.log(log, logging.WARNING, ("no-route", key),
                          "no gateway of %s accepted a client of %s/%s:%s endpoint %s", site, ns, name, port, hostname)
        reset(client)


class _HostLeg(PlainLeg):
    """An accepted client of one endpoint's listener: reading stays paused until its tunnel accepted it."""

    def __init__(self, listeners: HostListeners, key: HostKey) -> None:
        super().__init__()
        self.listeners = listeners
        self.key = key

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.listeners.admit(self, self.key)
