"""A service port's RoutePlan for the enforcer (`gateway.enforcing`), prepared once per mesh view and policy.

Pure: the plan, which candidates belong to which site, the sites' gateways, and the route to one pick.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from federation.core.policy.model import Rules
from federation.core.records import Gateway, Labels
from federation.core.view import MeshView
from gateway.balancing import Direct, ListenerKey, Route, Target, ViaGateway
from gateway.policy.outlier import Outliers
from gateway.policy.plan import RoutePlan
from gateway.policy.steering import Place, candidates


@dataclasses.dataclass(slots=True)
class Prepared:
    """A RoutePlan and what the connect loop needs from it, valid while `service`, `sites`, `rules` stay."""

    service: object
    sites: object
    rules: Rules
    plan: RoutePlan
    by_site: dict[str, frozenset[int]]
    gateways: dict[str, tuple[Gateway, ...]]
    ready: int

    def fresh(self, view: MeshView, key: ListenerKey, rules: Rules) -> bool:
        """True while the view's service and sites and the rules are the ones this was prepared from."""
        return self.service is view.service(key[0], key[1]) and self.sites is view.sites and self.rules is rules

    def route_to(self, outliers: Outliers, i: int, now: float, rng: random.Random, subset: Labels = ()) -> Route:
        """The route to candidate `i`: its endpoint directly, or one of its site's gateways not ejected (asked
        for `subset`'s endpoints there: the drawn split target's labels)."""
        c = self.plan.candidates[i]
        if not self.plan.routes[i].gateways:
            return Direct(c.site, Target(c.address, c.port))
        gateways = self.gateways[c.site]
        live = [g for g in gateways if not outliers.gateway_ejected((c.site, g.name), now)] or gateways
        return ViaGateway(c.site, live[rng.randrange(len(live))], subset)

    def subset(self, target: int | None) -> Labels:
        """The drawn split target's labels, for the remote gateway to pick within (none for a fallback)."""
        return self.rules.split[target].labels if target is not None else ()

    def probed(self, healthy: Sequence[bool], down: frozenset[str], refused: frozenset[str]) -> Sequence[bool]:
        """`healthy` less the candidates at `refused` sites (partition behaviour), and at sites active health
        found `down` unless that leaves none (last resort)."""
        if not down and not refused:
            return healthy
        sites = [c.site for c in self.plan.candidates]
        allowed = [h and sites[i] not in refused for i, h in enumerate(healthy)]
        out = [h and sites[i] not in down for i, h in enumerate(allowed)]
        return out if any(out) else allowed


def prepare(site: str, view: MeshView, key: ListenerKey, rules: Rules) -> Prepared:
    """The plan of `key`'s candidates for a client at `site`."""
    svc = view.service(key[0], key[1])
    own = view.sites.get(site)
    client = Place(site, own.network, own.locality.region, own.locality.zone) if own is not None else Place(site, "")
    found = candidates(view, *key)
    gateways = {c.site: view.sites[c.site].gateways for c in found}
    cands = []
    for c in found:
        direct = c.place.network == client.network
        # MCS: a site whose port of this name differs gets none of its traffic; a remote site with no
        # gateway cannot be reached. Both stay in the levels, as not ready.
        usable = svc is not None and svc.serves(c.site, key[2]) and (direct or bool(gateways.get(c.site)))
        cands.append(c if usable or not c.healthy else dataclasses.replace(c, healthy=False))
    plan = RoutePlan(client, cands, rules, {s: [g.name for g in gws] for s, gws in gateways.items()})
    by_site: dict[str, set[int]] = {}
    for i, c in enumerate(plan.candidates):
        by_site.setdefault(c.site, set()).add(i)
    return Prepared(svc, view.sites, rules, plan, {s: frozenset(m) for s, m in by_site.items()}, gateways,
                    sum(1 for c in plan.candidates if c.healthy))
