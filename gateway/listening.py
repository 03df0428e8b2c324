"""Which egress listeners the mesh wants, followed service by service. Pure: no sockets, no IO.

`ListenerPlan.step(view, placement, bound)` answers which listener keys to look at and where each wanted
one binds. After a registry change it looks only at the services the change touched (and at the
VIP addresses whose hold moved), so one change costs its services, not the mesh; a first step, a new
placement fallback, or a view from another history looks at everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from federation.core.view import MeshView, ServiceId
from federation.core.vips import VipAddresses
from gateway.balancing import Bind, ListenerKey, Placement, desired_listeners, listeners_of


@dataclass(frozen=True, slots=True)
class Step:
    """One look at the mesh: the keys it checked, where the wanted ones among them bind, what it covered."""

    check: frozenset[ListenerKey]
    """Listener keys whose state may have changed (wanted now, or wanted before)."""
    wanted: dict[ListenerKey, Bind]
    """The keys of `check` the mesh wants, with where each binds."""
    touched: frozenset[ServiceId] | None
    """The services looked at; None: all of them."""
    sites_changed: bool
    """Sites came, went or changed (pools to sites that left can close)."""


class ListenerPlan:
    """The listener keys the mesh wants for one site, kept per service between steps."""

    def __init__(self, site: str, include_own: bool, skip: Callable[[MeshView, ListenerKey], bool]) -> None:
        self.site = site
        self.include_own = include_own
        self.skip = skip
        """Keys served another way (the capture listener's services): never a listener of their own."""
        self._by_service: dict[ServiceId, set[ListenerKey]] = {}
        self._last: tuple[MeshView, Placement] | None = None

    def step(self, view: MeshView, placement: Placement, bound: Iterable[ListenerKey]) -> Step:
        """What to look at after `view` and `placement` replaced the last ones; `bound`: keys listening now."""
        touched, sites_changed = self._touched(view, placement)
        if touched is None:
            self._by_service = {}
            for key in desired_listeners(view, self.site, include_own=self.include_own):
                if not self.skip(view, key):
                    self._by_service.setdefault(key[:2], set()).add(key)
            check = {k for keys in self._by_service.values() for k in keys} | set(bound)
        else:
            check = set()
            for service in touched:
                old = self._by_service.pop(service, set())
                new = {k for k in listeners_of(view, service, self.site, self.include_own) if not self.skip(view, k)}
                if new:
                    self._by_service[service] = new
                check |= old | new
        self._last = (view, placement)
        wanted = {k: placement.bind(k, _port(view, k)) for k in check if k in self._by_service.get(k[:2], ())}
        return Step(frozenset(check), wanted, None if touched is None else frozenset(touched),
                    sites_changed or touched is None)

    def _touched(self, view: MeshView, placement: Placement) -> tuple[set[ServiceId] | None, bool]:
        """The services whose listeners can have changed since the last step (None: all), and whether sites did."""
        if self._last is None:
            return None, True
        before, placed = self._last
        if placement.fallback != placed.fallback or view.history is None or view.history is not before.history:
            return None, True
        if not (_of_view(placement, view) and _of_view(placed, before)) and placement.vips != placed.vips:
            return None, True
        diff = view.changes_since(before.generation)
        if diff is None:
            return None, True
        touched = set(diff.services)
        for address in placement.held ^ placed.held:
            claim = view.claims.get(address) or before.claims.get(address)
            if claim is not None:
                touched.add(claim.service)
        return touched, bool(diff.sites)


def _of_view(placement: Placement, view: MeshView) -> bool:
    """True when the placement's VIPs are the view's own (the view's changes name every VIP change)."""
    vips = placement.vips
    return isinstance(vips, VipAddresses) and vips.allocations is view.vips


def _port(view: MeshView, key: ListenerKey) -> int:
    svc = view.service(key[0], key[1])
    return next((p.port for p in svc.ports if p.name == key[2]), 0) if svc is not None else 0
