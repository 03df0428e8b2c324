"""One client's route choice for one service port: split, health and locality together. Pure.

Everything that does not change with health (split membership, priority levels, distribute groups, the
gateways each endpoint is reached through) is prepared once per mesh view or policy change; a new
connection then costs one health pass and a few draws. A retry passes the candidates already tried as
`exclude`, so it makes a new pick elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from federation.core.policy.model import Rules
from gateway.policy.outlier import Route
from gateway.policy.split import SplitPlan
from gateway.policy.steering import Candidate, Place, Steering


@dataclass(frozen=True, slots=True)
class Choice:
    """The endpoint for a connection (None: nothing healthy), the split target drawn, and any fallback."""

    candidate: Candidate | None
    index: int | None = None
    """The candidate's index in the plan, to report its outcome and to exclude it on a retry."""
    target: int | None = None
    fallback: str = ""


class RoutePlan:
    """The prepared choice of `client` among `cands` under `rules` (one service port)."""

    __slots__ = ("by_target", "candidates", "everyone", "routes", "split", "unselected")

    def __init__(self, client: Place, cands: Sequence[Candidate], rules: Rules,
                 site_gateways: Mapping[str, Sequence[str]]) -> None:
        self.candidates = tuple(cands)
        self.routes = tuple(Route((c.site, c.address, c.port), _gateways(client, c, site_gateways), c.healthy)
                            for c in self.candidates)
        """What the outlier core needs: endpoint keys (site, address, port), gateway keys (site, name)."""
        self.split = SplitPlan(rules.split, self.candidates)
        self.by_target = tuple(Steering(client, self.candidates, rules.locality, m) for m in self.split.members)
        self.unselected = Steering(client, self.candidates, rules.locality, self.split.unselected)
        self.everyone = Steering(client, self.candidates, rules.locality)

    def choose(self, healthy: Sequence[bool], rng: random.Random, exclude: Collection[int] = ()) -> Choice:
        """The endpoint for one new connection (or retry) given each candidate's health now."""
        if exclude:
            healthy = [h and i not in exclude for i, h in enumerate(healthy)]
        if self.split.targets:
            target, members, fallback = self.split.draw(healthy, rng)
            if target is not None:
                steering = self.by_target[target]
            else:
                steering = self.everyone if members is None else self.unselected
        else:
            target, fallback, steering = None, "", self.everyone
        index = steering.choose_index(healthy, rng)
        return Choice(None if index is None else self.candidates[index], index, target, fallback)


def _gateways(client: Place, c: Candidate, site_gateways: Mapping[str, Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """Direct on the client's own network; else through the gateways of the endpoint's site."""
    if c.place.network == client.network:
        return ()
    return tuple((c.site, g) for g in site_gateways.get(c.site, ()))
