"""Durations and percentages as policies write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.errors import PolicyError
from federation.core.policy.units import format_duration, parse_duration, parse_percent


@pytest.mark.parametrize(("text", "seconds"), [
    ("0s", 0.0), ("250ms", 0.25), ("1.5s", 1.5), ("1m30s", 90.0), ("2h", 7200.0), ("1h1m1s1ms", 3661.001),
    ("90s", 90.0), ("0.5m", 30.0),
])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration("f", text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "reason"), [
    ("5", "is not a duration"), (5, "is not a duration"), ("5 s", "is not a duration"), ("-1s", "is not a duration"),
    ("1us", "is not a duration"), ("0.5ms", "finer than a millisecond"), ("8d", "is not a duration"),
    ("169h", "is not between 0s and 168h"), ("", "is not a duration"), (None, "is not a duration"),
])
def test_bad_durations_say_why(value: object, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason) as info:
        parse_duration("spec.timeouts.connect", value)
    assert info.value.field == "spec.timeouts.connect"


@given(st.integers(0, 7 * 86400 * 1000))
def test_format_then_parse_is_identity_to_the_millisecond(ms: int) -> None:
    text = format_duration(ms / 1000)
    assert round(parse_duration("f", text) * 1000) == ms
    assert format_duration(parse_duration("f", text)) == text


def test_canonical_duration_strings() -> None:
    assert [format_duration(x) for x in (0, 0.025, 1, 1.25, 60, 90, 3600, 3725.5)] == [
        "0s", "25ms", "1s", "1.25s", "1m", "1m30s", "1h", "1h2m5.5s"]


@pytest.mark.parametrize("value", [True, "10", -1, 100.5, float("nan"), float("inf"), None])
def test_bad_percentages(value: object) -> None:
    with pytest.raises(PolicyError):
        parse_percent("p", value)


def test_percentages() -> None:
    assert parse_percent("p", 0) == 0.0
    assert parse_percent("p", 12.5) == 12.5
    assert parse_percent("p", 100) == 100.0
