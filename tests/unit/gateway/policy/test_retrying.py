"""Retries before the first byte: when, after how long, and within which budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import Backoff, Retries, RetryBudget, Timeouts
from gateway.policy.retrying import Budget, Failure, GiveUp, Retry, backoff_delay, decide

RETRIES, TIMEOUTS = Retries(), Timeouts()  # 3 attempts, 25 ms .. 250 ms; connect 10 s, 3 s per try
RNG = random.Random(5)


def budget(active: int = 10, retrying: int = 0) -> Budget:
    b = Budget(RetryBudget())
    b.active, b.retrying = active, retrying
    return b


def test_a_refused_connect_is_retried_after_a_short_jittered_backoff() -> None:
    got = decide(RETRIES, TIMEOUTS, 1, Failure.REFUSED, 0.01, False, budget(), RNG)
    assert isinstance(got, Retry)
    assert 0 <= got.delay <= 0.025
    assert got.per_try == 3.0


@pytest.mark.parametrize(("attempt", "failure", "elapsed", "first_byte", "b", "reason"), [
    (1, Failure.REFUSED, 0.0, True, budget(), "first bytes went upstream"),
    (1, Failure.FORBIDDEN, 0.0, False, budget(), "not retried: forbidden"),
    (3, Failure.TIMEOUT, 6.0, False, budget(), "3 of 3 attempts failed"),
    (1, Failure.TIMEOUT, 10.0, False, budget(), "connect timeout of 10s is spent"),
    (1, Failure.GATEWAY, 0.0, False, budget(active=10, retrying=3), "retry budget spent"),
])
def test_when_not_to_retry(attempt: int, failure: Failure, elapsed: float, first_byte: bool, b: Budget,
                           reason: str) -> None:
    got = decide(RETRIES, TIMEOUTS, attempt, failure, elapsed, first_byte, b, RNG)
    assert isinstance(got, GiveUp)
    assert reason in got.reason


def test_the_budget_is_a_share_of_active_connections_with_a_floor() -> None:
    b = budget(active=100)
    assert b.allowance() == 20
    b.active = 2
    assert b.allowance() == 3
    b.retrying = 3
    assert not b.allows()
    refused = b.refused
    decide(RETRIES, TIMEOUTS, 1, Failure.REFUSED, 0.0, False, b, RNG)
    assert b.refused == refused + 1
    b.retry_ended()
    assert b.allows()


def test_the_last_try_gets_only_what_is_left_of_the_connect_timeout() -> None:
    got = decide(RETRIES, TIMEOUTS, 2, Failure.TIMEOUT, 9.0, False, budget(), random.Random(0))
    assert isinstance(got, Retry)
    assert got.per_try <= 1.0


def test_backoff_doubles_up_to_its_maximum() -> None:
    class Top(random.Random):
        def random(self) -> float:
            return 0.999999

    ceilings = [backoff_delay(Backoff(), n, Top()) for n in range(1, 7)]
    assert ceilings == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25], rel=1e-5)


@given(st.integers(1, 10), st.integers(1, 12), st.sampled_from(list(Failure)), st.floats(0, 20), st.booleans(),
       st.integers(0, 200), st.integers(0, 50), st.integers(1, 3000), st.integers(1, 3000),
       st.randoms(use_true_random=False))
def test_a_retry_always_fits_the_limits(attempts: int, attempt: int, failure: Failure, elapsed: float,
                                        first_byte: bool, active: int, retrying: int, base_ms: int, per_try_ms: int,
                                        rng: random.Random) -> None:
    retries = Retries(attempts, Backoff(base_ms / 1000, max(base_ms, 2000) / 1000))
    timeouts = Timeouts(connect=10.0, connect_per_try=min(per_try_ms / 1000, 10.0))
    b = budget(active, retrying)
    got = decide(retries, timeouts, attempt, failure, elapsed, first_byte, b, rng)
    if isinstance(got, Retry):
        assert not first_byte
        assert failure is not Failure.FORBIDDEN
        assert attempt < attempts
        assert 0 <= got.delay <= min(retries.backoff.max, retries.backoff.base * 2 ** (attempt - 1))
        assert 0 < got.per_try <= timeouts.connect_per_try
        assert elapsed + got.delay + got.per_try <= timeouts.connect + 1e-9
        assert retrying < b.allowance()


@given(st.lists(st.sampled_from(["open", "close", "retry", "end"]), max_size=80), st.integers(0, 100),
       st.integers(0, 5))
def test_retries_started_only_when_allowed_stay_within_the_budget_when_it_was_taken(
        ops: list[str], percent: int, floor: int) -> None:
    b = Budget(RetryBudget(percent, floor))
    for op in ops:
        if op == "open":
            b.opened()
        elif op == "close":
            b.closed()
        elif op == "retry" and b.allows():
            before = b.allowance()
            b.retry_started()
            assert b.retrying <= before
        elif op == "end":
            b.retry_ended()
        assert b.active >= 0
        assert b.retrying >= 0


def test_jitter_spreads_the_retries_of_many_clients() -> None:
    rng = random.Random(11)
    delays = [backoff_delay(Backoff(), 3, rng) for _ in range(1000)]
    assert min(delays) < 0.01
    assert max(delays) > 0.09
    assert len(set(delays)) > 900
