"""Traffic policies enforced on the egress's new connections: the asyncio shell around `gateway.policy`.

Every service's new clients go (by its `TrafficPolicy`'s rules, which the agent's policy reader hands the
egress, or by `DEFAULT_RULES`, the rules an empty spec gets, when it has none): circuit breaker (over a
service limit: reset at once) -> the prepared `RoutePlan` (split, health after outlier ejection, locality
failover) -> faults (by source and destination site) -> one connect within the per-try timeout (hedged by
a second route when it is late) -> on failure, ejection evidence and a retry on a new pick (jittered
backoff, the retry budget, the total connect timeout), all before any client byte went upstream.
Failover never depends on a policy object being there (docs/traffic.md).

Plans are prepared once per service port, mesh view and policy; a new connection costs one health pass
and a few draws. A policy change applies to the next new connection; open ones are never cut by it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from federation.core.policy.model import DEFAULT_RULES, AbortKind, Rules, TrafficPolicy
from federation.core.records import Labels
from federation.core.view import MeshView
from federation.runtime.values import Readable
from gateway import racing
from gateway.balancing import Direct, ListenerKey, Route, ViaGateway, find_port
from gateway.enforcedstate import Admitted, ServiceState
from gateway.policy import faults, hedging, retrying
from gateway.policy.breaker import Breaker, Verdict
from gateway.policy.outlier import Capped, Ejected, Outliers
from gateway.policy.retrying import Budget, Failure, GiveUp
from gateway.preparing import Prepared, prepare
from gateway.racing import Race, Try
from gateway.refusals import EgressMetrics, PolicyMetrics, Throttle
from gateway.relay import PlainLeg
from gateway.shedding import reset_transport

log = logging.getLogger(__name__)
_throttle = Throttle()

Policies = Mapping[tuple[str, str], TrafficPolicy]
"""(namespace, name) -> the service's traffic policy in force (the policy reader's holder)."""

Attempt = Callable[[PlainLeg, Any, ListenerKey, list[str], float], Awaitable[bool]]
"""The egress's connect of a client over one route (`_direct`, `_tunnel`): True once relayed; on failure it
appends why to the list (`refused`, `gateway`, a gateway status name)."""

_FAILURES = {
    "refused": Failure.REFUSED, "timeout": Failure.TIMEOUT, "gateway": Failure.GATEWAY,
    "no_healthy_endpoint": Failure.NO_ENDPOINT, "no_such_service": Failure.NO_ENDPOINT,
    "forbidden": Failure.FORBIDDEN, "bad_request": Failure.GATEWAY,
}
"""What the egress noted about a failed attempt (gateway.egress `_direct`/`_tunnel`) as a retry failure."""


def noted(note: list[str] | None, what: str) -> None:
    """Record why an attempt failed, where the caller asked (the enforcer does; headless endpoints not)."""
    if note is not None:
        note.append(what)


class Enforcer:
    """Routes the egress's clients of every service, by its traffic policy or the default rules."""

    def __init__(self, site: str, egress_metrics: EgressMetrics, direct: Attempt, tunnel: Attempt,
                 policies: Readable[Policies] | None, registry: CollectorRegistry,
                 rng: random.Random | None = None) -> None:
        self.site = site
        self.egress_metrics = egress_metrics
        self._direct = direct
        self._tunnel = tunnel
        self.policies = policies
        self.metrics = PolicyMetrics(registry)
        self.rng = rng or random.Random()  # noqa: S311 - load balancing, not cryptography
        self._services: dict[tuple[str, str], ServiceState] = {}
        self._prepared: dict[ListenerKey, Prepared] = {}
        self._generation = -1
        self.answers = hedging.Answers()
        """Recent answer times per gateway (site, name), which set when an unanswered try is hedged."""
        self.sites_down: Callable[[str, str], frozenset[str]] = lambda _ns, _name: frozenset()
        """Sites active health found without a ready endpoint for a service (gateway.reachability)."""
        self.sites_refused: Callable[[str, str], frozenset[str]] = lambda _ns, _name: frozenset()
        """Sites partition behaviour leaves out for a service, their records stale (gateway.partition)."""
        self.relayed: Callable[[PlainLeg, ListenerKey, Route, int, str | None], None] = lambda *_: None
        """Told of each relayed client, its route, the tries that failed before, its identity (the access log)."""

    def rules(self, view: MeshView, key: ListenerKey) -> Rules:
        """The rules for a new client of `key`: its TrafficPolicy's, or `DEFAULT_RULES` when it has none."""
        if view.generation != self._generation:  # a service gone from the view takes its state with it
            self._generation = view.generation
            for gone in [s for s in self._services if view.service(*s) is None]:
                del self._services[gone]
            for k in [k for k in self._prepared if view.service(k[0], k[1]) is None]:
                del self._prepared[k]
        policy = self.policies.get().get((key[0], key[1])) if self.policies is not None else None
        if policy is None:
            return DEFAULT_RULES
        svc = view.service(key[0], key[1])
        port = find_port(svc.ports, key[2]) if svc is not None else None
        return policy.rules_for(key[2], port.port if port is not None else 0)

    def gateway_alive(self, site: str, gateway: str) -> None:
        """An active probe through `site`'s `gateway` passed: its ejection ends for every service (as Envoy's
        successful_active_health_check_uneject_host), so a gateway back from a hang serves again at once."""
        now = time.monotonic()
        for state in self._services.values():
            state.outliers.gateway_succeeded((site, gateway), now)

    def state(self, namespace: str, name: str) -> ServiceState | None:
        """A service's live ejections, breaker counts and retry budget (None before its first client)."""
        return self._services.get((namespace, name))

    async def route(self, client: PlainLeg, key: ListenerKey, view: MeshView, rules: Rules,
                    identity: str | None = None) -> None:
        """Connect `client` (of workload `identity`, where known) as `rules` say, or reset it."""
        state = self._state(key, rules)
        verdict = state.breaker.open()
        if verdict.rejects_client:
            self._refuse(client, key, "breaker_service", f"circuit breaker: {verdict.value} limit")
            return
        conn = Admitted(state, identity)
        state.budget.opened()
        client.on_lost = conn.release
        if client.lost:
            conn.release()
            self.egress_metrics.connections.labels("client_gone").inc()
            return
        try:
            await self._connect(client, key, rules, state, self._prepare(view, key, rules), conn)
        except Exception:  # our bug: this client is reset, every other one is still served
            if _throttle.allow(("bug", key)):
                log.exception("routing a client of %s/%s:%s by its traffic policy failed", *key)
            self.egress_metrics.connections.labels("no_route").inc()
            reset_transport(client.transport)

    # -- private

    async def _connect(self, client: PlainLeg, key: ListenerKey, rules: Rules, state: ServiceState, prep: Prepared,
                       conn: Admitted) -> None:
        loop, t = asyncio.get_running_loop(), rules.timeouts
        start = loop.time()
        tried: set[int] = set()
        attempt, per_try, fault = 0, min(t.connect_per_try, t.connect), None
        why = "no healthy endpoint"
        retry = False
        reopened = -1
        try:
            while not client.lost:
                now = time.monotonic()
                choice = prep.plan.choose(self._healthy(key, prep, state, now), self.rng, tried)
                c, i = choice.candidate, choice.index
                if c is None or i is None:
                    if not tried or reopened == attempt:
                        break
                    # Everything was tried once (a single surviving site whose try timed out on a busy
                    # host): a retry may go back to what failed rather than fail the client.
                    tried.clear()
                    reopened = attempt
                    continue
                if fault is None:
                    fault = faults.decide(rules.faults, self.site, c.site, self.rng)
                    if fault.delay > 0:
                        self.metrics.actions.labels("fault_delay").inc()
                        await asyncio.sleep(fault.delay)
                        continue  # pick again: health may have changed while waiting
                    if fault.abort is AbortKind.REFUSE:
                        self._refuse(client, key, "fault_abort", "fault injection: abort (Refuse)")
                        return
                admitted = state.breaker.connecting(c.site)
                if admitted.rejects_client:
                    self._refuse(client, key, "breaker_service", f"circuit breaker: {admitted.value} limit")
                    return
                if admitted is not Verdict.OK:
                    self.metrics.actions.labels("breaker_site").inc()
                    tried |= prep.by_site[c.site]
                    continue
                attempt += 1
                race = Race(self._try(client, key, prep, state, i, c.site, now, per_try, t.idle,
                                      prep.subset(choice.target)))
                hedge = functools.partial(self._hedge, client, key, prep, state, race, tried, now, per_try, t.idle)
                can_hedge = attempt < rules.retries.attempts and loop.time() - start < t.connect
                try:
                    won = await race.run(self._hedge_after(rules, race, per_try) if can_hedge else None, hedge)
                except BaseException:
                    for x in race.tries:
                        state.breaker.connect_failed(x.site)
                    raise
                finally:
                    if race.hedged:
                        attempt += 1
                        state.budget.retry_ended()
                if retry:
                    state.budget.retry_ended()
                    retry = False
                failure = Failure.GATEWAY
                for x in race.tries:
                    if x is not won and x is not race.loser:
                        failure = self._settle(state, prep, x, tried)
                if won is not None:
                    self._connected(client, state, prep, won.index, won.route, fault, conn, t.max_connection_duration)
                    self.relayed(client, key, won.route, attempt - 1, conn.identity)
                    self._sample(won)
                    if race.hedged and won is race.tries[1]:
                        self.metrics.actions.labels("hedge_won").inc()
                    if (loser := race.loser) is not None:  # runs on to its timeout: the evidence about its gateway
                        try:
                            await asyncio.wait([loser.task])
                        except BaseException:
                            loser.task.cancel()
                            state.breaker.connect_failed(loser.site)
                            raise
                        self._settle(state, prep, loser, tried)
                    return
                decision = retrying.decide(rules.retries, t, attempt, failure, loop.time() - start, False,
                                           state.budget, self.rng)
                if isinstance(decision, GiveUp):
                    why = decision.reason
                    if "budget" in why:
                        self.metrics.actions.labels("budget_spent").inc()
                    break
                self.metrics.actions.labels("retry").inc()
                state.budget.retry_started()
                retry = True
                await asyncio.sleep(decision.delay)
                per_try = decision.per_try
        finally:
            if retry:
                state.budget.retry_ended()
        if client.lost:
            self.egress_metrics.connections.labels("client_gone").inc()
            return
        _throttle.log(log, logging.WARNING, ("no-route", key), "no route accepted a client of %s/%s:%s: %s",
                      *key, why)
        self.egress_metrics.connections.labels("no_route").inc()
        reset_transport(client.transport)

    def _connected(self, client: PlainLeg, state: ServiceState, prep: Prepared, i: int, route: Route,
                   fault: faults.FaultDecision | None, conn: Admitted, max_duration: float | None) -> None:
        now = time.monotonic()
        site = prep.plan.candidates[i].site
        state.breaker.connected(site)
        conn.site = site
        state.outliers.endpoint_succeeded(prep.plan.routes[i].endpoint, now)
        if isinstance(route, ViaGateway):
            state.outliers.gateway_succeeded((site, route.gateway.name), now)
        self.egress_metrics.connections.labels("relayed").inc()
        if fault is not None and fault.abort is AbortKind.RESET:
            self.metrics.actions.labels("fault_abort").inc()
            reset_transport(client.transport)
        elif max_duration is not None and not conn.released:
            conn.timer = asyncio.get_running_loop().call_later(max_duration, self._expire, client)

    def _expire(self, client: PlainLeg) -> None:
        """maxConnectionDuration reached: end the connection (the client sees a reset and reconnects)."""
        if not client.lost:
            self.metrics.actions.labels("max_duration").inc()
            reset_transport(client.transport)

    def _healthy(self, key: ListenerKey, prep: Prepared, state: ServiceState, now: float) -> Sequence[bool]:
        """Candidates not ejected, less the sites active health or partition behaviour leave out."""
        healthy = state.outliers.health(prep.plan.routes, now).healthy
        return prep.probed(healthy, self.sites_down(*key[:2]), self.sites_refused(*key[:2]))

    def _try(self, client: PlainLeg, key: ListenerKey, prep: Prepared, state: ServiceState, i: int, site: str,
             now: float, per_try: float, idle: float, subset: Labels = ()) -> Try:
        route = prep.route_to(state.outliers, i, now, self.rng, subset)
        attempt = self._direct if isinstance(route, Direct) else self._tunnel
        return racing.start(lambda note: attempt(client, route, key, note, idle), per_try, i, site, route,
                            "egress-try-{}/{}:{}".format(*key))

    def _hedge_after(self, rules: Rules, race: Race, per_try: float) -> float | None:
        """When the first try of `race` is hedged: only a try through a gateway (a direct try has no gateway
        whose answers say what is late, and the egress's direct connect cannot tell that it lost a race)."""
        first = race.tries[0]
        if not isinstance(first.route, ViaGateway):
            return None
        return hedging.delay(rules.retries.hedge, self.answers.p95((first.site, first.route.gateway.name)), per_try)

    def _hedge(self, client: PlainLeg, key: ListenerKey, prep: Prepared, state: ServiceState, race: Race,
               tried: set[int], now: float, per_try: float, idle: float) -> Try | None:
        """A second try on the next route beside the unanswered first one, if the plan has another gateway
        route, its site's breaker admits it, and the retry budget allows one more retry."""
        first = race.tries[0]
        choice = prep.plan.choose(self._healthy(key, prep, state, now), self.rng, tried | prep.by_site[first.site])
        j = choice.index
        if j is None or not prep.plan.routes[j].gateways:
            return None
        if not state.budget.allows():
            self.metrics.actions.labels("budget_spent").inc()
            return None
        site = prep.plan.candidates[j].site
        if state.breaker.connecting(site) is not Verdict.OK:
            return None
        state.budget.retry_started()
        self.metrics.actions.labels("hedge").inc()
        return self._try(client, key, prep, state, j, site, time.monotonic(), per_try, idle, prep.subset(choice.target))

    def _settle(self, state: ServiceState, prep: Prepared, x: Try, tried: set[int]) -> Failure:
        """A try that did not connect the client ended: its pending connect is over; count its evidence."""
        state.breaker.connect_failed(x.site)
        self._sample(x)
        if x.task.cancelled():
            return Failure.TIMEOUT
        if x.note and x.note[-1] == racing.LATE:
            assert isinstance(x.route, ViaGateway)
            state.outliers.gateway_succeeded((x.site, x.route.gateway.name), time.monotonic())
            return Failure.TIMEOUT
        return self._failed(state, prep, x.index, x.route, x.note, time.monotonic(), tried)

    def _sample(self, x: Try) -> None:
        if x.answered():
            assert isinstance(x.route, ViaGateway)
            self.answers.record((x.site, x.route.gateway.name), asyncio.get_running_loop().time() - x.started)

    def _failed(self, state: ServiceState, prep: Prepared, i: int, route: Route, note: Sequence[str], now: float,
                tried: set[int]) -> Failure:
        """Count the evidence of one failed attempt, leave out what it rules out, and say what failed."""
        what = note[-1] if note else "gateway"
        failure = _FAILURES.get(what, Failure.REFUSED)
        site = prep.plan.candidates[i].site
        tried.add(i)
        outcome: Ejected | Capped | None = None
        kind = "endpoint"
        if isinstance(route, Direct):
            outcome = state.outliers.endpoint_failed(prep.plan.routes[i].endpoint, now, prep.ready)
        else:
            # The remote gateway answers for its whole site: a failed stream rules out the site for this
            # connection (only the subset's endpoints there, when it had none of the subset); evidence counts
            # against the gateway when it was not reached, else the endpoint.
            tried |= prep.by_site[site] if what != "no_healthy_endpoint" or not route.subset else {
                j for j in prep.by_site[site] if all(prep.plan.candidates[j].label(k) == v for k, v in route.subset)}
            if failure in (Failure.GATEWAY, Failure.TIMEOUT):
                kind = "gateway"
                outcome = state.outliers.gateway_failed((site, route.gateway.name), now)
            elif failure is not Failure.FORBIDDEN:
                state.outliers.gateway_succeeded((site, route.gateway.name), now)
                outcome = state.outliers.endpoint_failed(prep.plan.routes[i].endpoint, now, prep.ready)
        if isinstance(outcome, Ejected):
            self.metrics.actions.labels(f"ejected_{kind}").inc()
            _throttle.log(log, logging.INFO, ("ejected", outcome.key), "ejected %s %s for %.0fs (ejection %d)",
                          kind, outcome.key, outcome.until - now, outcome.ejections)
        elif isinstance(outcome, Capped):
            self.metrics.actions.labels("ejection_capped").inc()
        return failure

    def _refuse(self, client: PlainLeg, key: ListenerKey, action: str, reason: str) -> None:
        self.metrics.actions.labels(action).inc()
        self.egress_metrics.connections.labels("policy_reset").inc()
        _throttle.log(log, logging.INFO, (action, key), "reset a client of %s/%s:%s: %s", *key, reason)
        reset_transport(client.transport)

    def _state(self, key: ListenerKey, rules: Rules) -> ServiceState:
        state = self._services.get(key[:2])
        if state is None:
            state = self._services[key[:2]] = ServiceState(
                Outliers(rules.outlier_detection), Breaker(rules.circuit_breaker), Budget(rules.retries.budget))
        else:
            # New limits and thresholds apply to new connections; what is open or ejected runs its course.
            state.outliers.update(rules.outlier_detection)
            state.breaker.update(rules.circuit_breaker)
            state.budget.settings = rules.retries.budget
        return state

    def _prepare(self, view: MeshView, key: ListenerKey, rules: Rules) -> Prepared:
        prep = self._prepared.get(key)
        if prep is None or not prep.fresh(view, key, rules):
            prep = self._prepared[key] = prepare(self.site, view, key, rules)
        return prep
