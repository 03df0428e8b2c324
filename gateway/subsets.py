"""Label subsets (and workload identities) through a gateway: what the egress puts in a stream request, and
old gateways' answer.

A split target with labels (`version: v2`) chose its endpoints at the egress; through a gateway, the
egress only picks the site, so the request carries the target's labels (the preamble's subset extension)
and the remote gateway picks only endpoints carrying them. A gateway older than the extension refuses such
a request with `bad request`; the egress then sends that gateway the same request without the subset (its
site's endpoints picked as before: any of them), remembers it for `recheck` seconds so later clients do not
pay the refusal again, and says so in one log line a minute. The client's workload (`ns/sa`, the preamble's
workload extension: docs/security.md, "Workload identities") goes the same way: such a gateway gets no
extension at all, and decides as for an unknown workload, which never widens access.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict

from gateway.balancing import ListenerKey, Route, ViaGateway
from gateway.preamble import Request, Response, Status
from gateway.refusals import Throttle

log = logging.getLogger(__name__)
_throttle = Throttle()

GatewayKey = tuple[str, str, int]
"""(site, address, port) of a gateway, as the tunnel pools key them."""


class SubsetSupport:
    """Which gateways refused the subset extension lately (bounded); builds each stream request."""

    def __init__(self, recheck: float = 300.0, capacity: int = 4096) -> None:
        self.recheck = recheck
        """How long a gateway that refused the extension is sent requests without it (an upgrade shows then)."""
        self.capacity = capacity
        self._old: OrderedDict[GatewayKey, float] = OrderedDict()

    def request(self, key: ListenerKey, route: Route, now: float, hostname: str | None = None,
                workload: str | None = None) -> Request:
        """The stream request for a client of `key` (of `workload`) over `route`: with the route's subset and
        the workload, unless its gateway is known not to take extensions."""
        old = isinstance(route, ViaGateway) and self._is_old(_key(route), now)
        subset = route.subset if isinstance(route, ViaGateway) and not old else ()
        return Request(key[0], key[1], key[2], hostname, subset, None if old else workload)

    def retry(self, req: Request, resp: Response, route: Route, now: float) -> Request | None:
        """The request again without its extensions (subset, workload) when `resp` is an old gateway's refusal of
        them; else None."""
        if not (req.subset or req.workload) or resp.status is not Status.BAD_REQUEST or not isinstance(
                route, ViaGateway):
            return None
        gw = _key(route)
        self._old[gw] = now + self.recheck
        self._old.move_to_end(gw)
        while len(self._old) > self.capacity:
            self._old.popitem(last=False)
        _throttle.log(log, logging.WARNING, ("old-gateway", gw),
                      "gateway %s of site %s does not take preamble extensions (%s): its site's endpoints are "
                      "picked by it, ignoring a split's labels, and it sees no workload identity, until it is "
                      "upgraded", route.gateway.name, route.site, resp.reason)
        return dataclasses.replace(req, subset=(), workload=None)

    def _is_old(self, gw: GatewayKey, now: float) -> bool:
        until = self._old.get(gw)
        if until is None:
            return False
        if until <= now:
            del self._old[gw]
            return False
        return True


def _key(route: ViaGateway) -> GatewayKey:
    return (route.site, route.gateway.address, route.gateway.port)
