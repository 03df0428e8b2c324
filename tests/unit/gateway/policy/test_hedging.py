"""Hedged connects: when an unanswered try through a gateway is raced by one on the next route."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import Hedge
from gateway.policy.hedging import MULTIPLIER, Answers, delay

times = st.floats(0.0, 30.0, allow_nan=False)
HEDGE = Hedge()  # on, at least 250 ms


def test_a_gateway_never_heard_from_is_hedged_after_the_floor() -> None:
    assert Answers().p95(("east", "gw")) is None
    assert delay(HEDGE, None, 3.0) == 0.25


def test_a_fast_gateway_is_hedged_at_the_floor_and_a_slow_one_at_three_times_its_p95() -> None:
    fast, slow = Answers(), Answers()
    for _ in range(50):
        fast.record("east", 0.004)
        slow.record("east", 0.4)
    assert delay(HEDGE, fast.p95("east"), 3.0) == 0.25
    assert delay(HEDGE, slow.p95("east"), 3.0) == MULTIPLIER * 0.4


def test_no_hedge_when_it_is_off_or_would_come_no_sooner_than_the_per_try_timeout() -> None:
    assert delay(Hedge(enabled=False), None, 3.0) is None
    assert delay(HEDGE, 1.0, 3.0) is None  # a WAN answering in 1 s: 3 s is the per-try timeout already
    assert delay(HEDGE, None, 0.2) is None


@given(st.lists(times, min_size=1, max_size=200), times, st.floats(0.01, 60.0))
def test_the_delay_lies_between_the_floor_and_the_per_try_timeout_and_grows_with_the_answers(
        samples: list[float], floor: float, per_try: float) -> None:
    answers = Answers()
    for s in samples:
        answers.record("gw", s)
    p95 = answers.p95("gw")
    assert p95 is not None
    assert min(samples[-64:]) <= p95 <= max(samples[-64:])
    got = delay(Hedge(min_delay=max(floor, 0.01)), p95, per_try)
    if got is not None:
        assert max(floor, 0.01) <= got < per_try
        assert got >= MULTIPLIER * p95
        slower = delay(Hedge(min_delay=max(floor, 0.01)), p95 * 2, per_try)
        assert slower is None or slower >= got


@given(st.lists(times, min_size=65, max_size=300))
def test_only_recent_answers_count(samples: list[float]) -> None:
    answers = Answers(window=64)
    for s in [*samples, *[0.01] * 64]:
        answers.record("gw", s)
    assert answers.p95("gw") == 0.01  # a gateway that became fast again is hedged at the floor again


@given(st.lists(st.integers(0, 50), min_size=1, max_size=300))
def test_memory_is_bounded_and_the_least_recent_gateway_is_forgotten_first(gateways: list[int]) -> None:
    answers = Answers(window=4, max_gateways=8)
    for g in gateways:
        answers.record(g, 0.1)
    assert len(answers) <= 8
    assert answers.p95(gateways[-1]) == 0.1
