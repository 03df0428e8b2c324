"""Weighted split of new connections between sites and label subsets (canaries, staged rollouts). Pure.

A split target selects the endpoints of its site (if set) that carry all its labels (if set). Each new
connection draws a target by weight among the targets that have a healthy endpoint; a target with none
gives its share to the others. When no target can serve, the endpoints that no target selects serve,
and when those cannot either, every endpoint may: a split never makes a service with healthy endpoints
unreachable. Locality steering then chooses within what the split selected.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from federation.core.policy.model import SplitTarget
from gateway.policy.steering import Candidate


@dataclass(frozen=True, slots=True)
class Selection:
    """The endpoints one connection may use: those of target `index`, or a fallback (index None)."""

    index: int | None
    members: list[Candidate]
    fallback: str = ""
    """Empty when a target was drawn; else why not ("no target has a healthy endpoint")."""


def selects(target: SplitTarget, c: Candidate) -> bool:
    """True if `target` selects endpoint `c`."""
    if target.site is not None and c.site != target.site:
        return False
    return all(c.label(k) == v for k, v in target.labels)


def select(targets: Sequence[SplitTarget], cands: Sequence[Candidate], rng: random.Random) -> Selection:
    """Draw the split target for one new connection (one `rng.random()` when a target is drawn)."""
    if not targets:
        return Selection(None, list(cands))
    members = [[c for c in cands if selects(t, c)] for t in targets]
    live = [i for i, t in enumerate(targets) if t.weight > 0 and any(c.healthy for c in members[i])]
    if live:
        total = sum(targets[i].weight for i in live)
        x = rng.random() * total
        for i in live:
            if x < targets[i].weight:
                return Selection(i, members[i])
            x -= targets[i].weight
        return Selection(live[-1], members[live[-1]])
    unselected = [c for c in cands if not any(selects(t, c) for t in targets)]
    if any(c.healthy for c in unselected):
        return Selection(None, unselected, "no split target has a healthy endpoint; using unselected endpoints")
    return Selection(None, list(cands), "no split target has a healthy endpoint; using every endpoint")
