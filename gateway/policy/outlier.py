"""Passive outlier ejection of one service's endpoints and of the gateways it goes through. Pure.

A remote site behind its gateway is not one host (istio#52435): a failure the remote gateway reports
for one endpoint counts against that endpoint; only a failure to reach the gateway itself (TCP, TLS,
preamble) counts against the gateway. Endpoint ejections are capped by `maxEjectionPercent` (at least
one may always go, as in Envoy); gateway ejections are not (a gateway that cannot be reached serves
nobody). Below `panicThreshold` healthy, endpoint ejections are ignored; gateway ejections never are.
When nothing at all would be healthy, everything ready is tried: ejection never refuses on its own.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from federation.core.policy.model import OutlierDetection


class Mode(enum.StrEnum):
    """How `health` treated ejections for one choice."""

    NORMAL = "normal"
    PANIC = "panic"
    """Too few healthy: endpoint ejections ignored (gateway ejections kept)."""
    LAST_RESORT = "last-resort"
    """Nothing healthy at all: every ready endpoint tried, ejections ignored."""
    OFF = "off"
    """Outlier detection is disabled for the service: readiness alone."""


@dataclass(frozen=True, slots=True)
class Ejected:
    """`key` is out until `until` (monotonic seconds), after its `ejections`-th ejection in a row."""

    key: Hashable
    until: float
    ejections: int


@dataclass(frozen=True, slots=True)
class Capped:
    """`key` reached the failure threshold but maxEjectionPercent of the endpoints are out already."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class Route:
    """What `health` needs about one candidate: its endpoint, the gateways that reach it (none: direct)."""

    endpoint: Hashable
    gateways: tuple[Hashable, ...] = ()
    ready: bool = True


@dataclass(frozen=True, slots=True)
class Health:
    """Which candidates may be used now (same order as the routes given), and why."""

    healthy: tuple[bool, ...]
    mode: Mode


@dataclass(slots=True)
class _State:
    failures: int = 0
    ejections: int = 0
    until: float = 0.0


class Outliers:
    """Consecutive-failure ejection for one service (endpoints) and the gateways it uses."""

    def __init__(self, settings: OutlierDetection, capacity: int = 65536) -> None:
        self.settings = settings
        self.capacity = capacity
        self._endpoints: OrderedDict[Hashable, _State] = OrderedDict()
        self._gateways: OrderedDict[Hashable, _State] = OrderedDict()
        self.capped = 0
        """Ejections refused by maxEjectionPercent since start (a metric)."""

    def update(self, settings: OutlierDetection) -> None:
        """A new policy: current ejections run their course; thresholds and times apply from now on."""
        self.settings = settings

    def endpoint_failed(self, key: Hashable, now: float, known: int) -> Ejected | Capped | None:
        """Count a failure of endpoint `key` (one of `known` ready endpoints of the service)."""
        if not self.settings.enabled:
            return None
        st = self._state(self._endpoints, key)
        if st.until > now:
            return None  # already out (a connection in flight when it was ejected)
        st.failures += 1
        if st.failures < self.settings.consecutive_connect_failures:
            return None
        allowed = max(1, math.floor(self.settings.max_ejection_percent * known / 100.0))
        if self.ejected_endpoints(now) >= allowed:
            self.capped += 1
            return Capped(key)
        return self._eject(key, st, now)

    def gateway_failed(self, key: Hashable, now: float) -> Ejected | None:
        """Count a failure to reach gateway `key` (TCP connect, TLS handshake or preamble)."""
        if not self.settings.enabled:
            return None
        st = self._state(self._gateways, key)
        if st.until > now:
            return None
        st.failures += 1
        if st.failures < self.settings.consecutive_gateway_errors:
            return None
        return self._eject(key, st, now)

    def endpoint_succeeded(self, key: Hashable, now: float) -> None:
        """A connection reached endpoint `key`: its failure run ends, and so does an ejection (panic tries)."""
        self._succeeded(self._endpoints, key, now)

    def gateway_succeeded(self, key: Hashable, now: float) -> None:
        """A tunnel stream through gateway `key` opened (or an active probe through it passed)."""
        self._succeeded(self._gateways, key, now)

    def endpoint_ejected(self, key: Hashable, now: float) -> bool:
        st = self._endpoints.get(key)
        return st is not None and st.until > now

    def gateway_ejected(self, key: Hashable, now: float) -> bool:
        st = self._gateways.get(key)
        return st is not None and st.until > now

    def ejected_endpoints(self, now: float) -> int:
        """Endpoints out at `now`."""
        return sum(1 for st in self._endpoints.values() if st.until > now)

    def ejections(self, now: float) -> list[tuple[str, Hashable, float, int]]:
        """What is ejected now: (`endpoint` or `gateway`, its key, seconds left, its ejection count)."""
        return [(kind, key, st.until - now, st.ejections)
                for kind, table in (("endpoint", self._endpoints), ("gateway", self._gateways))
                for key, st in table.items() if st.until > now]

    def health(self, routes: Sequence[Route], now: float) -> Health:
        """Which of `routes` may take a new connection at `now`."""
        if not self.settings.enabled:
            return Health(tuple(r.ready for r in routes), Mode.OFF)
        reachable = [r.ready and (not r.gateways or any(not self.gateway_ejected(g, now) for g in r.gateways))
                     for r in routes]
        ok = [reach and not self.endpoint_ejected(r.endpoint, now) for r, reach in zip(routes, reachable,
                                                                                      strict=True)]
        ready = sum(r.ready for r in routes)
        if ready and not any(ok):
            return Health(tuple(r.ready for r in routes), Mode.LAST_RESORT)
        if ready and 100.0 * sum(ok) / ready < self.settings.panic_threshold:
            return Health(tuple(reachable), Mode.PANIC)
        return Health(tuple(ok), Mode.NORMAL)

    # -- private

    @staticmethod
    def _succeeded(table: OrderedDict[Hashable, _State], key: Hashable, now: float) -> None:
        st = table.get(key)
        if st is not None:
            st.failures = 0
            if st.until > now:
                st.until = now

    def _eject(self, key: Hashable, st: _State, now: float) -> Ejected:
        base = self.settings.base_ejection_time
        if st.until and now >= st.until:
            # Each base period spent back in service since the last ejection forgives one ejection.
            st.ejections = max(0, st.ejections - math.floor((now - st.until) / base))
        st.ejections += 1
        st.failures = 0
        st.until = now + min(self.settings.max_ejection_time, base * st.ejections)
        return Ejected(key, st.until, st.ejections)

    def _state(self, table: OrderedDict[Hashable, _State], key: Hashable) -> _State:
        st = table.get(key)
        if st is None:
            st = table[key] = _State()
            while len(table) > self.capacity:
                table.popitem(last=False)
        table.move_to_end(key)
        return st
