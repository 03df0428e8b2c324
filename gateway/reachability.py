"""Which sites' gateways the egress could reach lately: `unreachable`, kept current as failures age out.

A thin asyncio shell around the pure `gateway.balancing.SiteHealth`: the egress reports each tunnel
that failed or worked; `unreachable` (DNS reads it, to answer sites used last) changes at once, and
again when the oldest failure's hold runs out. A newly unreachable site is logged at most once a
minute (an overloaded link flaps).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from federation.runtime.values import Derived, Value
from gateway.balancing import Route, SiteHealth
from gateway.refusals import Throttle

log = logging.getLogger(__name__)
_throttle = Throttle()
RouteT = TypeVar("RouteT", bound=Route)


class Reachability:
    """The sites whose gateways failed lately, as a value holder; `close()` stops its timer."""

    def __init__(self, health: SiteHealth | None = None) -> None:
        self.health = health or SiteHealth()
        self.unreachable: Value[frozenset[str]] = Value(frozenset(), name="unreachable sites")
        """Sites whose gateway could not be reached lately (DNS leaves them out while others serve)."""
        self.services: Value[frozenset[tuple[str, str, str]]] = Value(frozenset(), name="services down at sites")
        """(site, namespace, name) that active health found without a ready endpoint (gateway.serviceprobes)."""
        self.avoid: Derived[frozenset[str | tuple[str, str, str]]] = Derived(
            lambda: self.unreachable.get() | self.services.get(), self.unreachable, self.services, name="avoid")
        """Both, as DNS takes them: a site (every service there) or (site, namespace, name), answered last."""
        self.gateway_alive: Callable[[str, str], None] = lambda _site, _gateway: None
        """Told when an active probe through (site, gateway name) passed: the egress ends its ejection."""
        self._timer: asyncio.TimerHandle | None = None

    def failed(self, site: str) -> None:
        """A tunnel to `site`'s gateway failed now."""
        self.health.failed(site, time.monotonic())
        self._changed()

    def succeeded(self, site: str, probed: str | None = None) -> None:
        """A tunnel to `site`'s gateway worked (`probed`: the gateway an active probe passed through)."""
        if probed is not None:
            self.gateway_alive(site, probed)
        if self.health.succeeded(site):
            self._changed()

    def sites_down(self, namespace: str, name: str) -> frozenset[str]:
        """The sites active health found without a ready endpoint for `namespace/name`."""
        down = self.services.get()
        return frozenset(s for s, ns, n in down if (ns, n) == (namespace, name)) if down else frozenset()

    def prefer(self, routes: Sequence[RouteT], namespace: str, name: str) -> list[RouteT]:
        """`routes` with those to sites down for the service moved last (used only when nothing else works)."""
        down = self.sites_down(namespace, name)
        if not down:
            return list(routes)
        return [r for r in routes if r.site not in down] + [r for r in routes if r.site in down]

    def close(self) -> None:
        """Stop looking again later."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _changed(self) -> None:
        """Publish the unreachable sites; look again when the oldest failure's hold runs out."""
        now = time.monotonic()
        down = self.health.down(now)
        for site in sorted(down - self.unreachable.get()):
            _throttle.log(log, logging.WARNING, ("unreachable", site),
                          "gateways of %s unreachable: DNS answers leave them out while others serve", site)
        self.unreachable.set(down)
        self.close()
        expiry = self.health.next_expiry()
        if expiry is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, expiry - now), self._changed)
