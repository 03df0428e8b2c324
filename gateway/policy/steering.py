"""Route choice: locality priority levels with failover, spill between levels, distribute weights. Pure.

Each candidate endpoint gets a priority key from the policy's `failoverPriority` (lexicographic: a
later entry orders endpoints within the groups of the earlier ones, so with [network, region, zone] an
endpoint on another network in our region still beats one on another network elsewhere). Equal keys form
a level; traffic goes to the best level with healthy endpoints, spilling to the next ones gradually
(Envoy's overprovisioning factor 1.4) or strictly. Failover needs nothing but health: it is always on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from federation.core.policy.model import NETWORK, REGION, SITE, ZONE, DistributeRule, LocalityPolicy, Spill
from federation.core.records import Labels
from federation.core.view import MeshView
from gateway.balancing import find_port

T = TypeVar("T")
OVERPROVISIONING = 1.4
"""Envoy's default factor: a level keeps all its traffic while at least 1/1.4 = 71.4 % of it is healthy."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a client or an endpoint runs."""

    site: str
    network: str
    region: str = ""
    zone: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    """An endpoint a connection may go to: its site's place, labels, weight and current health."""

    site: str
    address: str
    port: int
    place: Place
    labels: Labels = ()
    weight: int = 1
    healthy: bool = True

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


def candidates(view: MeshView, namespace: str, name: str, port_name: str) -> list[Candidate]:
    """Every endpoint (ready or not: levels count both) of `namespace/name:port_name` in the mesh view.

    `healthy` is the endpoint's readiness; the outlier core lowers it further.
    """
    svc = view.service(namespace, name)
    out: list[Candidate] = []
    for export in svc.exports if svc is not None else ():
        site = view.sites.get(export.site)
        port = find_port(export.ports, port_name)
        if site is None or port is None:
            continue
        for e in export.endpoints:
            if not e.addresses:
                continue
            region = e.locality.region or site.locality.region
            zone = e.locality.zone or site.locality.zone
            out.append(Candidate(export.site, e.addresses[0], e.port_for(port),
                                 Place(site.name, site.network, region, zone), e.labels, e.weight, e.ready))
    return out


def priority_key(client: Place, c: Candidate, policy: LocalityPolicy) -> tuple[int, ...]:
    """Larger is nearer. One element per failoverPriority entry; explicit failover ranks follow `region`."""
    key: list[int] = []
    for entry in policy.failover_priority:
        if entry == SITE:
            key.append(int(c.place.site == client.site))
        elif entry == NETWORK:
            key.append(int(c.place.network == client.network))
        elif entry == REGION:
            key.append(int(bool(client.region) and c.place.region == client.region))
            targets = [r.to_region for r in policy.failover if r.from_region == client.region]
            if targets:
                region = c.place.region
                key.append(len(targets) - targets.index(region) if region in targets else 0)
        elif entry == ZONE:
            same = bool(client.region and client.zone) and (c.place.region, c.place.zone) == (client.region,
                                                                                           client.zone)
            key.append(int(same))
        else:
            label, _, value = entry.partition("=")
            key.append(int(c.label(label) == value))
    return tuple(key)


def levels(client: Place, cands: Sequence[Candidate], policy: LocalityPolicy) -> list[list[Candidate]]:
    """Candidates grouped into priority levels, nearest first (each level keeps the input order)."""
    groups: dict[tuple[int, ...], list[Candidate]] = {}
    for c in cands:
        groups.setdefault(priority_key(client, c, policy), []).append(c)
    return [groups[k] for k in sorted(groups, reverse=True)]


def level_loads(lvls: Sequence[Sequence[Candidate]], spill: Spill) -> list[float]:
    """The share of new connections each level gets (summing to 1; all 0 if nothing is healthy)."""
    health = [sum(c.healthy for c in lvl) / len(lvl) if lvl else 0.0 for lvl in lvls]
    if spill is Spill.STRICT:
        first = next((i for i, h in enumerate(health) if h > 0), None)
        return [1.0 if i == first else 0.0 for i in range(len(lvls))]
    scores = [min(1.0, OVERPROVISIONING * h) for h in health]
    total = min(1.0, sum(scores))
    if total == 0:
        return [0.0] * len(lvls)
    loads, left = [], 1.0
    for score in scores:
        share = min(left, score / total)
        loads.append(share)
        left -= share
    return loads


def choose(client: Place, cands: Sequence[Candidate], policy: LocalityPolicy, rng: random.Random) -> Candidate | None:
    """The endpoint for one new connection, or None when no candidate is healthy.

    A `distribute` rule for the client's locality first spreads traffic over the localities it lists by
    their weights (a listed locality with nothing healthy gives its share to the others); the localities
    it does not list serve only when every listed one has nothing healthy: failover, not a black hole.
    """
    rule = distribute_rule(client, policy.distribute)
    if rule is not None:
        groups, rest = _distribute_groups(rule, cands)
        live = [(w, g) for w, g in groups if w > 0 and any(c.healthy for c in g)]
        if live:
            group = _weighted(live, rng)
            return _choose_levels(client, group, policy, rng)
        cands = rest
    return _choose_levels(client, cands, policy, rng)


def distribute_rule(client: Place, rules: Sequence[DistributeRule]) -> DistributeRule | None:
    """The first rule whose `from` matches the client's locality."""
    return next((r for r in rules if locality_matches(r.from_pattern, client.region, client.zone)), None)


def locality_matches(pattern: str, region: str, zone: str) -> bool:
    """`eu`, `eu/*`, `eu/eu-1a`, `*`, `*/eu-1a` against a region and zone."""
    want_region, _, want_zone = pattern.partition("/")
    if want_region != "*" and want_region != region:
        return False
    return want_zone in ("", "*") or want_zone == zone


def pick(cands: Sequence[Candidate], rng: random.Random) -> Candidate | None:
    """A healthy candidate, by endpoint weight (all of weight 0: uniformly); None if none is healthy."""
    healthy = [c for c in cands if c.healthy]
    if not healthy:
        return None
    if sum(c.weight for c in healthy) == 0:
        return healthy[rng.randrange(len(healthy))]
    return _weighted([(float(c.weight), c) for c in healthy if c.weight > 0], rng)


# ---------------------------------------------------------------- private


def _choose_levels(client: Place, cands: Sequence[Candidate], policy: LocalityPolicy,
                   rng: random.Random) -> Candidate | None:
    lvls = levels(client, cands, policy)
    loads = level_loads(lvls, policy.spill)
    live = [(load, lvl) for load, lvl in zip(loads, lvls, strict=True) if load > 0]
    if not live:
        return None
    return pick(_weighted(live, rng), rng)


def _distribute_groups(rule: DistributeRule, cands: Sequence[Candidate]
                       ) -> tuple[list[tuple[float, list[Candidate]]], list[Candidate]]:
    """Candidates per `to` entry (each in the first entry it matches), and those no entry lists."""
    groups: list[tuple[float, list[Candidate]]] = [(w, []) for _, w in rule.to]
    rest: list[Candidate] = []
    for c in cands:
        for i, (pattern, _w) in enumerate(rule.to):
            if locality_matches(pattern, c.place.region, c.place.zone):
                groups[i][1].append(c)
                break
        else:
            rest.append(c)
    return groups, rest


def _weighted(items: Sequence[tuple[float, T]], rng: random.Random) -> T:
    total = sum(w for w, _ in items)
    x = rng.random() * total
    for w, item in items:
        if x < w:
            return item
        x -= w
    return items[-1][1]
