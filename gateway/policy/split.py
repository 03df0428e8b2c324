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


class SplitPlan:
    """What does not change with health: which candidates (indices) each target selects, and which none do.
    Prepare it when the mesh view or the policy changes; `draw` runs once per new connection."""

    __slots__ = ("members", "targets", "unselected")

    def __init__(self, targets: Sequence[SplitTarget], cands: Sequence[Candidate]) -> None:
        self.targets = tuple(targets)
        self.members = tuple(tuple(i for i, c in enumerate(cands) if selects(t, c)) for t in self.targets)
        chosen = {i for m in self.members for i in m}
        self.unselected = tuple(i for i in range(len(cands)) if i not in chosen)

    def draw(self, healthy: Sequence[bool], rng: random.Random) -> tuple[int | None, tuple[int, ...] | None, str]:
        """(target index, its members) for one connection; (None, the fallback's members or None for every
        candidate, why) when no target can serve. One `rng.random()` when a target is drawn."""
        live = [i for i, t in enumerate(self.targets) if t.weight > 0 and any(healthy[j] for j in self.members[i])]
        if live:
            x = rng.random() * sum(self.targets[i].weight for i in live)
            for i in live:
                if x < self.targets[i].weight:
                    return i, self.members[i], ""
                x -= self.targets[i].weight
            return live[-1], self.members[live[-1]], ""
        if any(healthy[j] for j in self.unselected):
            return None, self.unselected, "no split target has a healthy endpoint; using unselected endpoints"
        return None, None, "no split target has a healthy endpoint; using every endpoint"


def select(targets: Sequence[SplitTarget], cands: Sequence[Candidate], rng: random.Random) -> Selection:
    """Draw the split target for one new connection, from each candidate's own `healthy` (one-off use)."""
    if not targets:
        return Selection(None, list(cands))
    index, members, why = SplitPlan(targets, cands).draw([c.healthy for c in cands], rng)
    return Selection(index, list(cands) if members is None else [cands[i] for i in members], why)
