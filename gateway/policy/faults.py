"""TCP fault injection: which connections to delay or abort, by percentage and by source and destination site. Pure.

Envoy and Istio have no network-level fault injection (envoy#17448); this is meshfed's. The first rule
whose site lists match applies; its delay and abort are drawn independently, so a connection may be
delayed and then aborted (a slow death), delayed only, aborted only, or left alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from federation.core.policy.model import AbortKind, FaultRule


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one connection: wait `delay` seconds first, then abort it as `abort` says (None: don't)."""

    delay: float = 0.0
    abort: AbortKind | None = None
    rule: int | None = None
    """The index of the rule that matched, for metrics; None when none did."""

    @property
    def injects(self) -> bool:
        return self.delay > 0 or self.abort is not None


NONE = FaultDecision()


def matching_rule(rules: Sequence[FaultRule], source_site: str, destination_site: str | None) -> int | None:
    """The index of the first rule for connections from `source_site` to `destination_site`.

    A rule with destination sites never matches while the destination is not known yet (None).
    """
    for i, r in enumerate(rules):
        if r.source_sites and source_site not in r.source_sites:
            continue
        if r.destination_sites and (destination_site is None or destination_site not in r.destination_sites):
            continue
        return i
    return None


def decide(rules: Sequence[FaultRule], source_site: str, destination_site: str | None,
           rng: random.Random) -> FaultDecision:
    """The faults for one connection (two `rng.random()` draws when a rule matches, none otherwise)."""
    i = matching_rule(rules, source_site, destination_site)
    if i is None:
        return NONE
    rule = rules[i]
    delay_draw, abort_draw = rng.random() * 100.0, rng.random() * 100.0
    delay = rule.delay.fixed if rule.delay is not None and delay_draw < rule.delay.percent else 0.0
    abort = rule.abort.kind if rule.abort is not None and abort_draw < rule.abort.percent else None
    return FaultDecision(delay, abort, i)
