"""Egress listeners for headless endpoints of other networks: one per (endpoint address here, port).

A client that connects to `<hostname>.<site>.<svc>.<ns>.svc.clusterset.local` (the address this site gave
that endpoint, federation.core.endpoints) reaches a listener that tunnels to that endpoint's own site with
its hostname in the preamble; the far gateway sends it to that one endpoint (gateway.admission), and no
other site is tried: a StatefulSet's pod is not interchangeable with another site's.

`HostPlan` (pure) says which listeners the table wants and where each binds, looking again only at the
services whose entry changed; `HostListeners` (the shell) binds them and routes their clients through the
egress's tunnels, pools, access checks and metrics. In capture mode the endpoint ranges are redirected to
the egress's one capture listener like the VIP ranges: an endpoint there gets no socket of its own, only an
entry (its address and port) that the capture listener's clients are looked up in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import immutables
from prometheus_client import Counter

from federation.core.endpoints import EndpointAddresses, RemoteEndpoint
from federation.core.policy.model import Timeouts
from federation.core.records import Protocol
from federation.core.view import MeshView, ServiceId
from federation.runtime.values import Readable, Value, follow
from gateway.balancing import Bind, Placement, ViaGateway
from gateway.capture import reset
from gateway.destinations import Destination
from gateway.identities import client_workload
from gateway.refusals import Throttle
from gateway.relay import PlainLeg
from gateway.shedding import reset_transport

if TYPE_CHECKING:
    from gateway.egress import Egress

log = logging.getLogger(__name__)
_throttle = Throttle()

HostKey = tuple[str, str, str, str, str]
"""(namespace, service, port name, site, hostname): one listener of one remote endpoint."""
MAX_GATEWAYS = 4
"""Gateways of the endpoint's site tried per client before giving up on it."""
MEMO_LIMIT = 1 << 20
"""Addresses remembered as inside or outside the captured ranges, at most (a bound, not a cache policy)."""
CAPTURED = "captured"
"""The host of a Bind that the capture listener serves (the endpoint's address is in a captured range)."""


class HostPlan:
    """The listeners an endpoint table wants; `step` looks again only at services whose entry changed."""

    def __init__(self, captured: Sequence[str] = ()) -> None:
        self._captured = tuple(ipaddress.ip_network(r, strict=False) for r in captured)
        self._last: tuple[EndpointAddresses, MeshView | None, Placement] | None = None
        self._by_service: dict[ServiceId, dict[HostKey, Bind]] = {}
        self._service_of: dict[str, ServiceId] = {}
        """Endpoint address -> its service, for the services planned: a VIP interface change looks at those only."""
        self._inside: dict[str, bool] = {}

    def step(self, table: EndpointAddresses, view: MeshView, placement: Placement) -> tuple[set[HostKey],
                                                                                             dict[HostKey, Bind]]:
        """(keys to look at, where each wanted one among them binds)."""
        last = self._last
        if last is None or last[2].fallback != placement.fallback or last[1] is None:
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
            if last[2].held is not placement.held:  # only services with an endpoint held or let go (not the VIPs)
                services |= {self._service_of[a] for a in last[2].held ^ placement.held if a in self._service_of}
        self._last = (table, view, placement)
        check: set[HostKey] = set()
        before_table = last[0] if last is not None else None
        for key in services:
            old = self._by_service.pop(key, {})
            for r in before_table.get(key, ()) if before_table is not None else ():
                if self._service_of.get(r.address) == key:
                    del self._service_of[r.address]
            remote = table.get(key, ())
            for r in remote:
                self._service_of[r.address] = key
            new = wanted_of(view, key, remote, placement, self._captured, self._inside)
            if new:
                self._by_service[key] = new
            check |= old.keys() | new.keys()
        wanted = {k: b for k in check for b in (self._by_service.get(k[:2], {}).get(k),) if b is not None}
        return check, wanted


def wanted_of(view: MeshView, service: ServiceId, remote: tuple[RemoteEndpoint, ...], placement: Placement,
              captured: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
              memo: dict[str, bool] | None = None) -> dict[HostKey, Bind]:
    """The listeners of one service's remote endpoints: (CAPTURED, port) where the address is in a captured
    range, at the endpoint's address where this host holds it (a VM's interface), else on the placement's
    fallback (Kubernetes: a derived Service per endpoint)."""
    svc = view.service(*service)
    if svc is None:
        return {}
    out: dict[HostKey, Bind] = {}
    for r in remote:
        for p in svc.ports:
            if p.protocol is Protocol.TCP and svc.serves(r.site, p.name):
                key = (service[0], service[1], p.name, r.site, r.hostname)
                if captured and p.port and _inside(r.address, captured, memo):
                    out[key] = (CAPTURED, p.port)
                else:
                    out[key] = (r.address, p.port) if r.address in placement.held and p.port else placement.fallback
    return out


class HostListeners:
    """Binds the listeners of remote headless endpoints and routes their clients through `egress`."""

    def __init__(self, egress: Egress, endpoints: Readable[EndpointAddresses], captured: Sequence[str] = ()) -> None:
        """`captured`: the ranges redirected to the egress's capture listener (capture mode)."""
        self.egress = egress
        self.endpoints = endpoints
        self._plan = HostPlan(captured)
        self._servers: dict[HostKey, tuple[asyncio.Server, tuple[str, int]]] = {}
        self._claimed: dict[HostKey, Destination] = {}
        self._by_destination: dict[Destination, HostKey] = {}
        self._closed = False
        if captured:
            egress.claims.append(self.claim)
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
        """Close every listener and take no more captured clients (relayed streams are the egress's, and
        drain with it); nothing is opened after this."""
        self._closed = True
        self._by_destination.clear()
        for server, _ in self._servers.values():
            server.close()

    async def close(self) -> None:
        """Close the listeners and wait for them."""
        self.stop_accepting()
        for server, _ in self._servers.values():
            await server.wait_closed()
        self._servers.clear()

    def claim(self, client: PlainLeg, dest: Destination) -> bool:
        """Take a captured client bound for a remote headless endpoint's address and port (True), else False."""
        key = self._by_destination.get(dest)
        if key is None:
            return False
        self.admit(client, key)
        return True

    async def _apply(self) -> None:
        view, placement = self.egress.mesh.get(), self.egress.placement.get()
        if not view.complete or self._closed:
            return
        table = self.endpoints.get()
        if table.unplaced != self._unplaced:
            self._unplaced = table.unplaced
            if table.unplaced:
                log.warning("%d headless endpoint(s) of other networks have no address here: the endpoint "
                            "ranges are full (vm.endpoint_ranges / kubernetes.endpoint_ranges); DNS leaves them out",
                            table.unplaced)
        check, wanted = self._plan.step(table, view, placement)
        spots = _Spots(table)
        current = self.listening.get()
        mutation = (current if isinstance(current, immutables.Map) else immutables.Map(current)).mutate()
        loop = asyncio.get_running_loop()
        for key in sorted(check):
            if self._closed:
                break  # stopped while a listener was being opened: open nothing more
            want = wanted.get(key)
            if self._unclaim(key, want, spots) or self._unbind(key, want):
                continue
            if key in mutation:
                del mutation[key]
            if want is None:
                log.debug("egress listener for %s/%s:%s of %s endpoint %s closed", *key)
                continue
            if want[0] == CAPTURED:
                dest = _claim_of(key, want[1], spots)
                if dest is not None:
                    self._claimed[key] = dest
                    self._by_destination[dest] = key
                    mutation[key] = (str(dest[0]), dest[1])
                continue
            try:
                server = await loop.create_server(self._factory(key), want[0], want[1], backlog=1024)
            except OSError as exc:
                log.error("egress listener for %s/%s:%s of %s endpoint %s on %s:%d failed: %s", *key, *want, exc)
                continue
            bound = server.sockets[0].getsockname()[:2] if server.sockets else ("", 0)
            if self._closed or not bound[1]:
                server.close()
                break
            self._servers[key] = (server, (str(bound[0]), int(bound[1])))
            mutation[key] = self._servers[key][1]
            log.debug("egress listener for %s/%s:%s of %s endpoint %s on %s:%d", *key, *mutation[key])
        if len(mutation) != len(current) or any(mutation.get(k) != current.get(k) for k in check):
            self.listening.set(mutation.finish())  # a new map only when a listener changed: followers diff it

    def _unbind(self, key: HostKey, want: Bind | None) -> bool:
        """True if `key`'s listener already binds where `want` says; else closes it (if any), False."""
        held = self._servers.get(key)
        if held is None:
            return False
        if want is not None and want[0] == held[1][0] and want[1] in (0, held[1][1]):
            return True
        self._servers.pop(key)[0].close()
        return False

    def _unclaim(self, key: HostKey, want: Bind | None, spots: _Spots) -> bool:
        """True if `key`'s captured entry is still what `want` says; else drops it (if any), False."""
        dest = self._claimed.get(key)
        if dest is None:
            return False
        if want is not None and want[0] == CAPTURED and _claim_of(key, want[1], spots) == dest:
            return True
        del self._claimed[key]
        if self._by_destination.get(dest) == key:
            del self._by_destination[dest]
        return False



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
        """Tunnel `client` to the endpoint of `key` through a gateway of its own site, or reset it. The
        service's traffic policy sets the timeouts (each gateway within `connectPerTry`, all within
        `connect`; `idle`; `maxConnectionDuration`); nothing else of it applies: no other endpoint will do."""
        egress = self.egress
        ns, name, port, site, hostname = key
        view = egress.mesh.get()
        allowed = egress.authorizer.check((ns, name), egress._peer(client_workload(egress.workloads, client))).allowed
        record = view.sites.get(site)
        gateways: tuple[Any, ...] = record.gateways if record is not None and allowed else ()
        rules = egress.enforcer.rules(view, (ns, name, port)) if gateways else None
        t = rules.timeouts if rules is not None else None
        try:
            async with asyncio.timeout(t.connect if t is not None else None):
                for gateway in gateways[:MAX_GATEWAYS]:
                    if client.lost:
                        egress.metrics.connections.labels("client_gone").inc()
                        return
                    if await self._try(client, ViaGateway(site, gateway), key, t):
                        egress.metrics.connections.labels("relayed").inc()
                        if t is not None and t.max_connection_duration is not None:
                            _limit_duration(client, t.max_connection_duration, egress.enforcer.metrics.actions)
                        return
        except TimeoutError:
            _throttle.log(log, logging.INFO, ("connect-timeout", key), "a client of %s/%s:%s endpoint %s of %s "
                          "waited the policy's connect timeout (%.1fs): reset", ns, name, port, hostname, site,
                          t.connect if t is not None else 0.0)
        egress.metrics.connections.labels("no_route" if allowed else "denied").inc()
        if allowed:
            _throttle.log(log, logging.WARNING, ("no-route", key),
                          "no gateway of %s accepted a client of %s/%s:%s endpoint %s", site, ns, name, port, hostname)
        reset(client)

    async def _try(self, client: PlainLeg, route: ViaGateway, key: HostKey, t: Timeouts | None) -> bool:
        """One gateway, within the policy's `connectPerTry` (if any)."""
        ns, name, port, _, hostname = key
        try:
            async with asyncio.timeout(min(t.connect_per_try, t.connect) if t is not None else None):
                return await self.egress._tunnel(client, route, (ns, name, port), idle=t.idle if t else None,
                                                 hostname=hostname)
        except TimeoutError:
            self.egress.metrics.attempts.labels("gateway", "timeout").inc()
            return False


def _limit_duration(client: PlainLeg, seconds: float, actions: Counter) -> None:
    """Reset `client` once it has been connected `seconds` (maxConnectionDuration), unless it is gone first."""
    def expire() -> None:
        if not client.lost:
            actions.labels("max_duration").inc()
            reset_transport(client.transport)
    timer = asyncio.get_running_loop().call_later(seconds, expire)
    before = client.on_lost

    def lost() -> None:
        timer.cancel()
        if before is not None:
            before()
    client.on_lost = lost


class _Spots:
    """The address each remote endpoint of a table has here, indexed per service on first use."""

    def __init__(self, table: EndpointAddresses) -> None:
        self.table = table
        self._by_service: dict[ServiceId, dict[tuple[str, str], str]] = {}

    def address(self, key: HostKey) -> str | None:
        service = key[:2]
        spots = self._by_service.get(service)
        if spots is None:
            spots = self._by_service[service] = {(r.site, r.hostname): r.address for r in self.table.get(service, ())}
        return spots.get((key[3], key[4]))


def _claim_of(key: HostKey, port: int, spots: _Spots) -> Destination | None:
    """The (address, port) clients of `key` connect to (its endpoint's address here)."""
    address = spots.address(key)
    return (ipaddress.ip_address(address), port) if address is not None else None


def _inside(address: str, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
            memo: dict[str, bool] | None = None) -> bool:
    """Whether `address` is in one of `nets` (remembered in `memo`, at most one entry per endpoint address)."""
    if memo is not None and (known := memo.get(address)) is not None:
        return known
    ip = ipaddress.ip_address(address)
    inside = any(ip.version == n.version and ip in n for n in nets)
    if memo is not None:
        if len(memo) > MEMO_LIMIT:
            memo.clear()
        memo[address] = inside
    return inside


class _HostLeg(PlainLeg):
    """An accepted client of one endpoint's listener: reading stays paused until its tunnel accepted it."""

    def __init__(self, listeners: HostListeners, key: HostKey) -> None:
        super().__init__()
        self.listeners = listeners
        self.key = key

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.listeners.admit(self, self.key)
