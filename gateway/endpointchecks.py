"""The east-west gateway's answer to a health query: does this site have a ready endpoint for each service?

A service is READY when one of its ready endpoints (this site's own export, as the gateway's view has it)
accepted a TCP connect at its last check, NO_READY_ENDPOINT when none is ready or every one refused,
NOT_EXPORTED when this site does not export it, UNKNOWN until its first check has finished. Answers are
immediate (from the last check); a query also starts a check of each service whose result is older than
`FRESH`, in the background. So the cost at the gateway does not grow with the number of sites asking: at
most one check per service per `FRESH` seconds, `MAX_CHECKS` at once, each stopping at the first endpoint
that accepts (one connect per service, as long as it lives). Only services someone asks about are checked.

A service the access policy closes to the asking site (every stream it could open would be refused,
federation.core.policy.reach) is answered FORBIDDEN, never checked: its state is not the asker's to know.
Counted in `meshfed_gateway_health_denied_total`, logged once a minute per asking site.

`LocalHealth` is pure (time as an argument); `EndpointChecks` is the shell the gateway's tunnels call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from federation.core.view import MeshView
from federation.runtime.values import Readable
from gateway.balancing import Target, endpoint_targets
from gateway.healthquery import Health, HealthAnswer, HealthQuery
from gateway.refusals import Throttle

log = logging.getLogger(__name__)

FRESH = 1.0
"""Seconds a check's result stands before a query starts the next: ActiveHealth's 1 s interval."""
MAX_CHECKS = 32
"""Checks running at once (each a TCP connect): bounds the gateway's work whatever the mesh asks."""
CAPACITY = 20_000
"""Services whose last check is remembered (the oldest is forgotten first): more than any site exports."""

ServiceId = tuple[str, str]


@dataclass(slots=True)
class _Checked:
    ok: bool | None = None
    """The last finished check: an endpoint accepted (True), none did (False), none finished yet (None)."""
    at: float = float("-inf")
    """When the last check started."""
    running: bool = False


class LocalHealth:
    """The last check of each service asked about, and which to check next. Pure."""

    def __init__(self, fresh: float = FRESH, capacity: int = CAPACITY) -> None:
        self.fresh = fresh
        self.capacity = capacity
        self._checks: collections.OrderedDict[ServiceId, _Checked] = collections.OrderedDict()

    def answer(self, view: MeshView, site: str, services: Sequence[ServiceId],
               now: float) -> tuple[tuple[Health, ...], list[tuple[ServiceId, list[Target]]]]:
        """The state of each of `services` now, and the checks to start (each marked running here)."""
        states, start = [], []
        for key in services:
            export = view.exports.get((site, *key))
            if export is None or not export.ports:
                states.append(Health.NOT_EXPORTED)
                continue
            targets = endpoint_targets(export, export.ports[0])
            if not targets:
                states.append(Health.NO_READY_ENDPOINT)
                continue
            checked = self._checks.pop(key, None) or _Checked()
            self._checks[key] = checked
            if not checked.running and now - checked.at >= self.fresh:
                checked.running, checked.at = True, now
                start.append((key, targets))
            states.append(Health.UNKNOWN if checked.ok is None else Health.READY if checked.ok
                          else Health.NO_READY_ENDPOINT)
        while len(self._checks) > self.capacity:
            self._checks.popitem(last=False)
        return tuple(states), start

    def finished(self, key: ServiceId, ok: bool) -> None:
        """A check of `key` ended: some endpoint accepted (`ok`), or none."""
        checked = self._checks.get(key)
        if checked is not None:
            checked.ok, checked.running = ok, False


class EndpointChecks:
    """Answers health queries for the gateway of `site`; checks run as tasks the gateway's `spawn` owns."""

    def __init__(self, site: str, mesh: Readable[MeshView], spawn: Callable[[Coroutine[Any, Any, None], str], None],
                 timeout: Callable[[], float], registry: CollectorRegistry) -> None:
        self.site = site
        self.mesh = mesh
        self._spawn = spawn
        self._timeout = timeout
        self.local = LocalHealth()
        self._slots = asyncio.Semaphore(MAX_CHECKS)
        self.queries = Counter("meshfed_gateway_health_queries", "Health queries from other sites' probers answered",
                               registry=registry)
        self.checks = Counter("meshfed_gateway_endpoint_checks",
                              "Checks of this site's endpoints that health queries started, by result",
                              ["result"], registry=registry)
        for result in ("ok", "failed"):
            self.checks.labels(result)
        self.denied = Counter("meshfed_gateway_health_denied", "Services of health queries answered FORBIDDEN: "
                              "the access policy closes them to the asking site", registry=registry)
        self._throttle = Throttle(60.0, 4096)

    def answer(self, query: HealthQuery, asker: str = "",
               refuse: Callable[[ServiceId], str | None] = lambda _: None) -> HealthAnswer:
        """The answer, at once; checks whose results are old start in the background. A service `refuse`
        gives a reason for (the access policy closes it to site `asker`) is FORBIDDEN and not checked."""
        self.queries.inc()
        denied = {key: why for key in query.services if (why := refuse(key)) is not None}
        asked = [key for key in query.services if key not in denied]
        states, start = self.local.answer(self.mesh.get(), self.site, asked, time.monotonic())
        for key, targets in start:
            self._spawn(self._check(key, targets), f"endpoint-check-{key[0]}-{key[1]}")
        if not denied:
            return HealthAnswer(query.nonce, states)
        it = iter(states)
        out = tuple(Health.FORBIDDEN if key in denied else next(it) for key in query.services)
        self.denied.inc(len(query.services) - len(asked))
        (key, why), *_ = denied.items()
        self._throttle.log(log, logging.WARNING, ("health-denied", asker),
                           "health query from site %s: %d service(s) answered FORBIDDEN, e.g. %s/%s: %s", asker,
                           len(denied), *key, why)
        return HealthAnswer(query.nonce, out)

    async def _check(self, key: ServiceId, targets: list[Target]) -> None:
        ok = False
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                for target in targets:
                    try:
                        async with asyncio.timeout(min(self._timeout(), FRESH * 2)):
                            transport, _ = await loop.create_connection(asyncio.Protocol, target.address,
                                                                        target.port)
                    except (OSError, TimeoutError):
                        continue
                    transport.abort()  # a reset, not a half-open connection the endpoint has to time out
                    ok = True
                    break
        finally:
            self.local.finished(key, ok)
            self.checks.labels("ok" if ok else "failed").inc()
