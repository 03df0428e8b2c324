"""Circuit-breaker accounting for one service: connections and pending connects, per service and per site. Pure.

Over a service limit a new client is rejected at once (reset, never queued); over a per-site limit that
site is skipped for the pick and the client goes elsewhere. Changing the limits never cuts what is open.
"""

from __future__ import annotations

import enum
from collections import Counter

from federation.core.policy.model import CircuitBreaker, Limits


class Verdict(enum.StrEnum):
    """The outcome of asking for a connection slot or a connect slot."""

    OK = "ok"
    SERVICE_CONNECTIONS = "service-connections"
    SERVICE_PENDING = "service-pending"
    SITE_CONNECTIONS = "site-connections"
    SITE_PENDING = "site-pending"

    @property
    def rejects_client(self) -> bool:
        """True for the service limits (reset the client); False for OK and site limits (pick another)."""
        return self in (Verdict.SERVICE_CONNECTIONS, Verdict.SERVICE_PENDING)


class Breaker:
    """Open connections and pending connects of one service, and of each of its sites."""

    def __init__(self, settings: CircuitBreaker) -> None:
        self.settings = settings
        self.connections = 0
        """Client connections admitted and not closed."""
        self.pending = 0
        """Upstream connects in progress."""
        self.site_connections: Counter[str] = Counter()
        self.site_pending: Counter[str] = Counter()
        self.rejected: Counter[Verdict] = Counter()
        """Rejections by limit, since start (a metric)."""

    def update(self, settings: CircuitBreaker) -> None:
        """New limits for new admissions; what is open stays open."""
        self.settings = settings

    def open(self) -> Verdict:
        """A new client connection: admit it (OK) or reject it."""
        if _over(self.settings.service.max_connections, self.connections):
            return self._reject(Verdict.SERVICE_CONNECTIONS)
        self.connections += 1
        return Verdict.OK

    def close(self) -> None:
        """An admitted client connection ended."""
        self.connections = max(0, self.connections - 1)

    def connecting(self, site: str) -> Verdict:
        """An upstream connect to `site` is about to start: admit it or say which limit stands in the way."""
        service, per_site = self.settings.service, self.settings.per_site
        if _over(service.max_pending_connects, self.pending):
            return self._reject(Verdict.SERVICE_PENDING)
        if _over(per_site.max_pending_connects, self.site_pending[site]):
            return self._reject(Verdict.SITE_PENDING)
        # Connects in flight count too: each may become a connection, and admitted together they would overshoot.
        if _over(per_site.max_connections, self.site_connections[site] + self.site_pending[site]):
            return self._reject(Verdict.SITE_CONNECTIONS)
        self.pending += 1
        self.site_pending[site] += 1
        return Verdict.OK

    def connected(self, site: str) -> None:
        """The connect to `site` admitted by `connecting` succeeded; the connection now counts for the site."""
        self._unpend(site)
        self.site_connections[site] += 1

    def connect_failed(self, site: str) -> None:
        """The connect to `site` admitted by `connecting` failed."""
        self._unpend(site)

    def disconnected(self, site: str) -> None:
        """A connection to `site` counted by `connected` ended."""
        _down(self.site_connections, site)

    def _unpend(self, site: str) -> None:
        self.pending = max(0, self.pending - 1)
        _down(self.site_pending, site)

    def _reject(self, verdict: Verdict) -> Verdict:
        self.rejected[verdict] += 1
        return verdict


def limits_text(limits: Limits) -> str:
    """`connections 100, pending 1024` for logs and status."""
    def one(v: int | None) -> str:
        return "no limit" if v is None else str(v)

    return f"connections {one(limits.max_connections)}, pending {one(limits.max_pending_connects)}"


def _over(limit: int | None, current: int) -> bool:
    return limit is not None and current >= limit


def _down(counter: Counter[str], site: str) -> None:
    if counter[site] <= 1:
        counter.pop(site, None)
    else:
        counter[site] -= 1
