"""Route choice: locality priority levels with failover, spill between levels, distribute weights. Pure.

Each candidate endpoint gets a priority key from the policy's `failoverPriority` (lexicographic: a
later entry orders endpoints within the groups of the earlier ones, so with [network, region, zone] an
endpoint on another network in our region still beats one on another network elsewhere). Equal keys form
a level; traffic goes to the best level with healthy endpoints, spilling to the next ones gradually
(Envoy's overprovisioning factor 1.4) or strictly. Failover needs nothing but health: it is always on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from federation.core.policy.model import NETWORK, REGION, SITE, ZONE, DistributeRule, LocalityPolicy, Spill
from federation.core.records import Labels
from federation.core.view import MeshView
from gateway.balancing import find_port

T = TypeVar("T")
Levels = tuple[tuple[int, ...], ...]
"""Priority levels as candidate indices, nearest first."""
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
    return [[cands[i] for i in lvl] for lvl in _levels(client, cands, range(len(cands)), policy)]


def level_loads(health: Sequence[float], spill: Spill) -> list[float]:
    """The share of new connections each level gets, from each level's healthy fraction (0..1), nearest
    first; the shares sum to 1, or are all 0 when nothing is healthy."""
    if spill is Spill.STRICT:
        first = next((i for i, h in enumerate(health) if h > 0), None)
        return [1.0 if i == first else 0.0 for i in range(len(health))]
    scores = [min(1.0, OVERPROVISIONING * h) for h in health]
    total = min(1.0, sum(scores))
    if total == 0:
        return [0.0] * len(health)
    loads, left = [], 1.0
    for score in scores:
        share = min(left, score / total)
        loads.append(share)
        left -= share
    return loads


class Steering:
    """What does not change with health, for one client, candidate list and locality policy: the priority
    levels and distribute groups. Prepare it when the mesh view or the policy changes; `choose` then costs
    one pass over the candidates' health per new connection.

    Indices refer to `candidates`; `subset` (indices) restricts the choice to part of them (a split target).
    """

    __slots__ = ("candidates", "groups", "rest", "spill")

    def __init__(self, client: Place, cands: Sequence[Candidate], policy: LocalityPolicy,
                 subset: Sequence[int] | None = None) -> None:
        self.candidates = tuple(cands)
        self.spill = policy.spill
        members = range(len(self.candidates)) if subset is None else subset
        rule = distribute_rule(client, policy.distribute)
        self.groups: tuple[tuple[float, Levels], ...] = ()
        if rule is not None:
            assigned: list[list[int]] = [[] for _ in rule.to]
            rest: list[int] = []
            for i in members:
                place = self.candidates[i].place
                slot = next((j for j, (pattern, _w) in enumerate(rule.to)
                             if locality_matches(pattern, place.region, place.zone)), None)
                (rest if slot is None else assigned[slot]).append(i)
            self.groups = tuple((w, _levels(client, self.candidates, idx, policy))
                                for (_p, w), idx in zip(rule.to, assigned, strict=True))
            members = rest
        self.rest: Levels = _levels(client, self.candidates, members, policy)

    def choose(self, healthy: Sequence[bool], rng: random.Random) -> Candidate | None:
        """The endpoint for one new connection, given each candidate's health now; None if none is healthy.

        A `distribute` rule for the client's locality first spreads traffic over the localities it lists
        by their weights (a listed locality with nothing healthy gives its share to the others); the
        localities it does not list serve only when every listed one has nothing healthy: failover.
        """
        i = self.choose_index(healthy, rng)
        return None if i is None else self.candidates[i]

    def choose_index(self, healthy: Sequence[bool], rng: random.Random) -> int | None:
        """As `choose`, the candidate's index."""
        live = [(w, lv) for w, lv in self.groups if w > 0 and any(healthy[i] for lvl in lv for i in lvl)]
        lvls = _weighted(live, rng) if live else self.rest
        health = [sum(healthy[i] for i in lvl) / len(lvl) for lvl in lvls]
        loads = level_loads(health, self.spill)
        chosen = [(load, lvl) for load, lvl in zip(loads, lvls, strict=True) if load > 0]
        if not chosen:
            return None
        return _pick(self.candidates, _weighted(chosen, rng), healthy, rng)


def choose(client: Place, cands: Sequence[Candidate], policy: LocalityPolicy, rng: random.Random) -> Candidate | None:
    """`Steering(client, cands, policy).choose(...)` with each candidate's own `healthy`: for one-off choices."""
    return Steering(client, cands, policy).choose([c.healthy for c in cands], rng)


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
    i = _pick(cands, range(len(cands)), [c.healthy for c in cands], rng)
    return None if i is None else cands[i]


# ---------------------------------------------------------------- private


def _levels(client: Place, cands: Sequence[Candidate], members: Iterable[int], policy: LocalityPolicy) -> Levels:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in members:
        groups.setdefault(priority_key(client, cands[i], policy), []).append(i)
    return tuple(tuple(groups[k]) for k in sorted(groups, reverse=True))


def _pick(cands: Sequence[Candidate], members: Iterable[int], healthy: Sequence[bool],
          rng: random.Random) -> int | None:
    live = [i for i in members if healthy[i]]
    if not live:
        return None
    weighted = [(float(cands[i].weight), i) for i in live if cands[i].weight > 0]
    if not weighted:
        return live[rng.randrange(len(live))]
    return _weighted(weighted, rng)


def _weighted(items: Sequence[tuple[float, T]], rng: random.Random) -> T:
    total = sum(w for w, _ in items)
    x = rng.random() * total
    for w, item in items:
        if x < w:
            return item
        x -= w
    return items[-1][1]
