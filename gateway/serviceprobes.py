"""Per-service active health: "does site S have a ready endpoint for service X?", asked through the tunnel.

For every remote site on another network that exports a service this site imports, the prober sends
`HealthQuery` messages (gateway.healthquery, up to 128 services each) over a tunnel it keeps open to one of
the site's gateways, and the gateway answers per service at once (gateway.endpointchecks). A service whose
answers say "no ready endpoint" `unhealthyThreshold` times in a row, or whose site's every gateway cannot
be reached as often, is unhealthy at that site: DNS answers and routes leave the site out for that service
while another site serves it (never the last one), until `healthyThreshold` answers say READY again. An
answer of `unknown` (a gateway older than health queries, a first check not finished) changes nothing.
One answer of `forbidden` (the site's access policy refuses every stream from here) takes the service
out at once: not a dead gateway, a decision; it comes back when that policy lets this site in again.

Each service follows its traffic policy's `activeHealth` (interval, timeout, thresholds, on/off; the
defaults without a policy). Cost is bounded: one query per remote site and 128 services per interval, at
most `QUERY_RATE` queries a second and `gateway.probe_concurrency` at once; `gateway.probe_interval: 0`
turns these probes off with the gateway probes.

`HealthTable` is pure (time as an argument); `ServiceProbes` is the shell, run by gateway.probing.Prober.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from federation.core.errors import RemoteProtocolError
from federation.core.policy.model import ActiveHealth, TrafficPolicy
from federation.core.view import MeshView
from federation.pki.verifying import PeerRejected
from federation.runtime.values import Readable, Value
from gateway.healthquery import MAX_SERVICES, Health, HealthAnswer, HealthQuery
from gateway.pool import PoolKey, TunnelPool
from gateway.preamble import Status
from gateway.refusals import Throttle
from gateway.settings import GatewaySettings
from gateway.tls import Bundle, ResumingContext

log = logging.getLogger(__name__)
_throttle = Throttle()

QUERY_RATE = 200.0
"""Health queries started per second at most: at 1 s intervals, 200 remote sites (x 128 services each)."""
OLD_GATEWAY_RETRY = 60.0
"""Seconds before asking again a site whose gateway did not understand the query (it may be upgraded)."""
DEFAULT = ActiveHealth()

ServiceId = tuple[str, str]
Key = tuple[str, str, str]
"""(site, namespace, name)"""
Policies = Mapping[ServiceId, TrafficPolicy]


@dataclass(slots=True)
class ServiceState:
    """What the prober knows of one service at one site."""

    state: str = "UNKNOWN"
    """HEALTHY, UNHEALTHY or UNKNOWN (not asked yet, or only `unknown` answers)."""
    reason: str = "not probed yet"
    since: float = 0.0
    """When `state` last changed (seconds since the epoch)."""
    fails: int = 0
    passes: int = 0
    due: float = 0.0
    """When to ask next (monotonic)."""
    last: float | None = None
    """When the last answer came (seconds since the epoch)."""

    def describe(self) -> dict[str, Any]:
        """One entry of a /gateways `serviceHealth` map."""
        return {"state": self.state, "reason": self.reason, "since": self.since or None, "lastProbe": self.last}


class HealthTable:
    """The state of every (site, service) probed, and which are unhealthy. Pure.

    A round costs in proportion to the sites due, not to every pair: each site keeps the earliest due
    time of its services, and the services of a site asked together stay due together.
    """

    def __init__(self, slack: float = 0.5) -> None:
        self.slack = slack
        """Services due within this many seconds are asked with those due now (they then stay aligned)."""
        self.states: dict[Key, ServiceState] = {}
        self.by_site: dict[str, set[ServiceId]] = {}
        self.sites_of: dict[ServiceId, set[str]] = {}
        self.unhealthy: set[Key] = set()
        self._site_due: dict[str, float] = {}

    def set_services(self, service: ServiceId, sites: Iterable[str]) -> None:
        """`service` is probed at exactly `sites` from now on (none: not at all)."""
        want = set(sites)
        for site in self.sites_of.get(service, set()) - want:
            services = self.by_site[site]
            services.discard(service)
            self.states.pop((site, *service), None)
            self.unhealthy.discard((site, *service))
            if not services:
                del self.by_site[site]
                self._site_due.pop(site, None)
        for site in want:
            self.by_site.setdefault(site, set()).add(service)
            self.states.setdefault((site, *service), ServiceState())
            self._site_due[site] = 0.0  # a new service is asked at the next round
        if want:
            self.sites_of[service] = want
        else:
            self.sites_of.pop(service, None)

    def due(self, now: float) -> dict[str, list[ServiceId]]:
        """The services to ask each site about now (and those due within `slack`), sorted."""
        out: dict[str, list[ServiceId]] = {}
        for site in [s for s, t in self._site_due.items() if t <= now]:
            ready = sorted(s for s in self.by_site[site] if self.states[(site, *s)].due <= now + self.slack)
            if ready:
                out[site] = ready
        return out

    def next_due(self) -> float | None:
        """The earliest time some service is due (monotonic)."""
        return min(self._site_due.values(), default=None)

    def asked(self, site: str, services: Iterable[ServiceId], now: float, interval: Callable[[ServiceId], float],
              jitter: float = 1.0) -> None:
        """A query for `services` was started: each is due again one interval (x `jitter`) later."""
        for service in services:
            state = self.states.get((site, *service))
            if state is not None:
                state.due = now + interval(service) * jitter
        if site in self.by_site:
            self._site_due[site] = min(self.states[(site, *s)].due for s in self.by_site[site])

    def observe(self, site: str, service: ServiceId, answer: Health | None, reason: str, settings: ActiveHealth,
                wall: float) -> str | None:
        """Take one answer (None: the site's gateways could not be reached); the new state if it changed."""
        state = self.states.get((site, *service))
        if state is None:
            return None
        state.last = wall
        if answer is Health.UNKNOWN:
            state.reason = reason or "the gateway cannot say yet"
            return None
        good = answer is Health.READY
        state.passes, state.fails = (state.passes + 1, 0) if good else (0, state.fails + 1)
        state.reason = "" if good else reason
        new = state.state
        if good and (state.state == "UNKNOWN" or state.passes >= settings.healthy_threshold):
            new = "HEALTHY"
        elif not good and (state.fails >= settings.unhealthy_threshold or answer is Health.FORBIDDEN):  # a decision
            new = "UNHEALTHY"
        return self._move(site, service, state, new, wall)

    def unknown(self, site: str, service: ServiceId, reason: str, wall: float) -> str | None:
        """The site cannot answer health queries (an older agent): unknown, so never left out for it."""
        state = self.states.get((site, *service))
        if state is None:
            return None
        state.passes = state.fails = 0
        state.reason, state.last = reason, wall
        return self._move(site, service, state, "UNKNOWN", wall)

    def _move(self, site: str, service: ServiceId, state: ServiceState, new: str, wall: float) -> str | None:
        if new == state.state:
            return None
        state.state, state.since = new, wall
        (self.unhealthy.add if new == "UNHEALTHY" else self.unhealthy.discard)((site, *service))
        return new


def targets(view: MeshView, own_site: str, service: ServiceId) -> list[str]:
    """The sites to ask about `service`: those on another network, with a gateway, that export it. Pure."""
    svc = view.service(*service)
    own = view.sites.get(own_site)
    out = []
    for site in svc.sites if svc is not None else ():
        record = view.sites.get(site)
        if site != own_site and record is not None and record.gateways and (
                own is None or record.network != own.network):
            out.append(site)
    return out


def settings_for(policies: Policies, service: ServiceId) -> ActiveHealth:
    """The service's `activeHealth` (the defaults without a policy; per-port entries do not apply)."""
    policy = policies.get(service)
    return policy.rules.active_health if policy is not None else DEFAULT


class ProbeMetrics:
    """meshfed_service_probe_* in the agent's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answers = Counter("meshfed_service_probe_answers", "Per-service health answers from remote sites' "
                               "gateways, by answer", ["answer"], registry=registry)
        for answer in (*(h.name.lower() for h in Health), "unreachable", "old_gateway"):
            self.answers.labels(answer)
        self.unhealthy = Gauge("meshfed_service_probe_unhealthy",
                               "(site, service) pairs left out of DNS answers and routes by active health",
                               registry=registry)
        self.probed = Gauge("meshfed_service_probe_targets", "(site, service) pairs probed", registry=registry)


class ServiceProbes:
    """Asks remote gateways about the services this site imports, until cancelled; `down` says the result."""

    def __init__(self, site: str, mesh: Readable[MeshView], context: ResumingContext, bundle: Bundle,
                 settings: Readable[GatewaySettings], policies: Readable[Policies] | None,
                 registry: CollectorRegistry, down: Value[frozenset[Key]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.site = site
        self.mesh = mesh
        self.context = context
        self.trust = bundle
        self._settings = settings
        self.policies = policies
        self.metrics = ProbeMetrics(registry)
        self.table = HealthTable()
        self.down: Value[frozenset[Key]] = down or Value(frozenset(), name="services down at sites")
        """(site, namespace, name) the probes found without a ready endpoint (DNS and routes use them last)."""
        self._clock = clock
        self._pools: dict[PoolKey, TunnelPool] = {}
        self._generation = -1
        self._policy_version = -1
        self._nonce = random.getrandbits(63)
        self._busy: set[str] = set()
        self._good: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.get().probe_concurrency)

    async def run(self) -> None:
        """Probe until cancelled (idle while gateway.probe_interval is 0)."""
        try:
            while True:
                s = self._settings.get()
                view = self.mesh.get()
                if s.probe_interval <= 0 or not view.complete or self.site not in view.sites:  # see Prober.round
                    await asyncio.sleep(1.0)
                    continue
                self._follow(view)
                await self._round(s, view)
                wake = self.table.next_due()
                await asyncio.sleep(min(1.0, max(0.05, (wake or 0.0) - time.monotonic())))
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for pool in self._pools.values():
                pool.close()

    def settings_for(self, service: ServiceId) -> ActiveHealth:
        """The `activeHealth` in force for `service`."""
        return settings_for(self.policies.get() if self.policies is not None else {}, service)

    def describe(self, site: str) -> dict[str, Any]:
        """What /gateways shows of one site's services: counts, and every service not HEALTHY."""
        services = sorted(self.table.by_site.get(site, ()))
        states = {f"{ns}/{name}": self.table.states[(site, ns, name)] for ns, name in services}
        return {"probed": len(states), "unhealthy": sum(1 for s in states.values() if s.state == "UNHEALTHY"),
                "notHealthy": {k: s.describe() for k, s in states.items() if s.state != "HEALTHY"}}

    # -- private

    def _follow(self, view: MeshView) -> None:
        """Targets follow the view (only the services it changed) and the policies (on/off per service)."""
        version = self.policies.version if self.policies is not None else 0
        changes = view.changes_since(self._generation) if self._generation >= 0 else None
        if view.generation == self._generation and version == self._policy_version:
            return
        if changes is None or version != self._policy_version:
            todo: Iterable[ServiceId] = set(view.services()) | {s for ss in self.table.by_site.values() for s in ss}
        else:
            todo = changes.services
        self._generation, self._policy_version = view.generation, version
        for service in todo:
            on = self.settings_for(service).enabled
            self.table.set_services(service, targets(view, self.site, service) if on else ())
        for key in [k for k in self._pools if k[0] not in self.table.by_site]:
            self._pools.pop(key).close()
        self.metrics.probed.set(len(self.table.states))
        self._publish()

    async def _round(self, s: GatewaySettings, view: MeshView) -> None:
        now = time.monotonic()
        for site, services in self.table.due(now).items():
            if site in self._busy:
                continue  # its last queries have not ended (a black-holed gateway): no second tunnel to it
            self.table.asked(site, services, now, lambda svc: self.settings_for(svc).interval,
                             random.uniform(0.9, 1.1))  # noqa: S311 - spreading load, not secrets
            batches = [services[i:i + MAX_SERVICES] for i in range(0, len(services), MAX_SERVICES)]
            await self._slots.acquire()
            self._busy.add(site)
            task = asyncio.get_running_loop().create_task(self._ask(site, batches), name=f"service-probe-{site}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(len(batches) / QUERY_RATE)

    async def _ask(self, site: str, batches: list[list[ServiceId]]) -> None:
        """One site's queries, one after the other over the same tunnel."""
        try:
            for batch in batches:
                await self._ask_one(site, batch)
        except Exception:  # our bug: this site's answers are lost this round, every other site is still asked
            if _throttle.allow(("bug", site)):
                log.exception("asking site %s about its services failed", site)
        finally:
            self._busy.discard(site)
            self._slots.release()

    async def _ask_one(self, site: str, batch: list[ServiceId]) -> None:
        view, s = self.mesh.get(), self._settings.get()
        record = view.sites.get(site)
        gateways = sorted(record.gateways if record is not None else (),
                          key=lambda g: g.name != self._good.get(site))  # the one that answered last first
        timeout = max(self.settings_for(svc).timeout for svc in batch)
        reason = "no gateway"
        for gateway in gateways:
            pool = self._pool(site, gateway, s)
            tunnel = None
            try:
                async with asyncio.timeout(timeout + (0 if pool.idle else s.handshake_timeout)):
                    tunnel, _ = await pool.take()
                    self._nonce = (self._nonce + 1) % (1 << 63)
                    answer = await tunnel.health(HealthQuery(self._nonce, tuple(batch)))
            except (OSError, TimeoutError, RemoteProtocolError, ssl.SSLError, PeerRejected) as exc:
                if tunnel is not None:
                    tunnel.close()
                    pool.give_back(tunnel)
                reason = f"gateway {gateway.name} unreachable: {type(exc).__name__}{f': {exc}' if str(exc) else ''}"
                continue
            pool.give_back(tunnel)
            self._good[site] = gateway.name
            self._take(site, batch, answer)
            return
        self.metrics.answers.labels("unreachable").inc(len(batch))
        self._observe(site, batch, [None] * len(batch), reason)

    def _take(self, site: str, batch: list[ServiceId], answer: HealthAnswer | Any) -> None:
        wall = self._clock()
        if isinstance(answer, HealthAnswer):
            for state in answer.states:
                self.metrics.answers.labels(state.name.lower()).inc()
            self._observe(site, batch, list(answer.states), "")
            return
        if answer.status is Status.BAD_REQUEST:  # a gateway from before health queries
            self.metrics.answers.labels("old_gateway").inc(len(batch))
            self.table.asked(site, batch, time.monotonic(), lambda _: OLD_GATEWAY_RETRY)
            for service in batch:
                self.table.unknown(site, service, "the gateway does not answer health queries (an older agent)", wall)
            self._publish()
            return
        self.metrics.answers.labels("unreachable").inc(len(batch))
        self._observe(site, batch, [None] * len(batch), f"the gateway answered {answer.status.name}: {answer.reason}")

    def _observe(self, site: str, batch: list[ServiceId], answers: list[Health | None], reason: str) -> None:
        wall = self._clock()
        for service, answer in zip(batch, answers, strict=True):
            why = reason or {Health.NO_READY_ENDPOINT: "no ready endpoint there (or every one refused its check)",
                             Health.NOT_EXPORTED: "no longer exported there",
                             Health.FORBIDDEN: "its access policy refuses streams from this site (FORBIDDEN)"
                             }.get(answer or Health.UNKNOWN, "")
            new = self.table.observe(site, service, answer, why, self.settings_for(service), wall)
            if new is not None and (new == "UNHEALTHY" or _throttle.allow(("back", site, service))):
                log.log(logging.WARNING if new == "UNHEALTHY" else logging.INFO,
                        "service %s/%s at site %s is %s%s", *service, site, new, f": {why}" if why else "")
        self._publish()

    def _publish(self) -> None:
        down = frozenset(self.table.unhealthy)
        self.metrics.unhealthy.set(len(down))
        if down != self.down.get():
            self.down.set(down)

    def _pool(self, site: str, gateway: Any, s: GatewaySettings) -> TunnelPool:
        key = (site, gateway.address, gateway.port)
        pool = self._pools.get(key)
        if pool is None or pool.gateway != gateway:
            if pool is not None:
                pool.close()
            # One tunnel kept open per gateway (no handshake per query); never refilled ahead of need.
            pool = self._pools[key] = TunnelPool(key, gateway, self.context, self.trust, self.mesh, 0,
                                                 min(60.0, s.tunnel_idle_timeout / 2), s.handshake_timeout,
                                                 _no_spawn, keep=1)
        return pool


def _no_spawn(coro: Any, name: str = "") -> None:  # these pools never refill
    coro.close()
