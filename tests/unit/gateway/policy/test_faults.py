"""TCP fault injection decisions: percentages, source and destination scoping."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import Abort, AbortKind, Delay, FaultRule
from gateway.policy.faults import NONE, decide, matching_rule

DRILL = (
    FaultRule(source_sites=("west",), destination_sites=("east",), abort=Abort(AbortKind.REFUSE, 100)),
    FaultRule(source_sites=("west",), delay=Delay(2.0, 10), abort=Abort(AbortKind.RESET, 5)),
)


def test_rules_match_by_source_then_destination_first_rule_wins() -> None:
    assert matching_rule(DRILL, "west", "east") == 0
    assert matching_rule(DRILL, "west", "edge") == 1
    assert matching_rule(DRILL, "west", None) == 1  # destination unknown: only rules without destinations
    assert matching_rule(DRILL, "edge", "east") is None
    assert matching_rule((FaultRule(delay=Delay(1.0, 1)),), "anywhere", None) == 0


def test_percentages_land_within_2_percent_at_10000_connections() -> None:
    rng = random.Random(42)
    decisions = [decide(DRILL, "west", "edge", rng) for _ in range(10_000)]
    delayed = sum(d.delay == 2.0 for d in decisions) / 10_000
    aborted = Counter(d.abort for d in decisions)
    assert abs(delayed - 0.10) <= 0.02
    assert abs(aborted[AbortKind.RESET] / 10_000 - 0.05) <= 0.02
    assert all(d.rule == 1 for d in decisions)
    assert {decide(DRILL, "west", "east", rng).abort for _ in range(100)} == {AbortKind.REFUSE}


def test_no_rule_no_fault_and_no_randomness_spent() -> None:
    class Counting(random.Random):
        calls = 0

        def random(self) -> float:
            Counting.calls += 1
            return 0.0

    assert decide(DRILL, "edge", "east", Counting()) == NONE
    assert Counting.calls == 0
    assert not NONE.injects


@given(st.floats(0, 100), st.floats(0, 100), st.randoms(use_true_random=False))
def test_zero_percent_never_and_hundred_always(delay_pct: float, abort_pct: float, rng: random.Random) -> None:
    rules = (FaultRule(delay=Delay(1.0, delay_pct), abort=Abort(AbortKind.RESET, abort_pct)),)
    d = decide(rules, "a", None, rng)
    if delay_pct == 0:
        assert d.delay == 0
    if delay_pct == 100:
        assert d.delay == 1.0
    if abort_pct == 0:
        assert d.abort is None
    if abort_pct == 100:
        assert d.abort is AbortKind.RESET
