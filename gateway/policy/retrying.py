"""Retries before the first byte: whether to try again after a failed connect, and after how long. Pure.

A retry is a new pick (the caller leaves out what failed), only before any client byte went upstream,
within the attempts and the total connect timeout, after a full-jitter backoff, and only while the
retry budget allows: at most `percent` of the service's connections in progress may be retries (but
always `min_retries`), so retries cannot multiply the load of an outage.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from federation.core.policy.model import Backoff, Retries, RetryBudget, Timeouts
from federation.core.policy.units import format_duration


class Failure(enum.StrEnum):
    """Why one connect attempt failed."""

    REFUSED = "refused"
    """The endpoint refused the TCP connect (directly, or as the remote gateway reported)."""
    TIMEOUT = "timeout"
    """The try took longer than connectPerTry."""
    GATEWAY = "gateway"
    """The gateway could not be reached: TCP, TLS or preamble failure."""
    NO_ENDPOINT = "no-endpoint"
    """The remote gateway has no healthy endpoint for the service."""
    OVERLOADED = "overloaded"
    """A per-site circuit-breaker limit: that site is skipped."""
    FORBIDDEN = "forbidden"
    """The target site refused by policy: trying elsewhere would go around a deliberate decision."""


RETRYABLE = frozenset(Failure) - {Failure.FORBIDDEN}


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after `delay` seconds, with at most `per_try` seconds for that try."""

    delay: float
    per_try: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Reset the client; `reason` is for logs and metrics."""

    reason: str


class Budget:
    """Counts a service's connections in progress and the retries among them."""

    def __init__(self, settings: RetryBudget) -> None:
        self.settings = settings
        self.active = 0
        """Client connections of the service now open (connecting or relaying)."""
        self.retrying = 0
        """Retries now connecting."""
        self.refused = 0
        """Retries the budget did not allow, since start (a metric)."""

    def allowance(self) -> int:
        """How many retries may be in progress at once now."""
        return max(self.settings.min_retries, math.floor(self.settings.percent * self.active / 100.0))

    def allows(self) -> bool:
        """True if one more retry may start."""
        return self.retrying < self.allowance()

    def opened(self) -> None:
        self.active += 1

    def closed(self) -> None:
        self.active = max(0, self.active - 1)

    def retry_started(self) -> None:
        self.retrying += 1

    def retry_ended(self) -> None:
        self.retrying = max(0, self.retrying - 1)


def backoff_delay(settings: Backoff, retry: int, rng: random.Random) -> float:
    """Full jitter: a uniform time in [0, min(max, base * 2**(retry-1))] before retry number `retry` (1, 2..)."""
    ceiling = min(settings.max, settings.base * 2.0 ** min(retry - 1, 30))
    return rng.random() * ceiling


def decide(retries: Retries, timeouts: Timeouts, attempt: int, failure: Failure, elapsed: float,
           first_byte_sent: bool, budget: Budget, rng: random.Random) -> Retry | GiveUp:
    """After attempt number `attempt` (1 = the first try) failed `elapsed` seconds into the connection."""
    if first_byte_sent:
        return GiveUp("the client's first bytes went upstream; a retry could duplicate them")
    if failure not in RETRYABLE:
        return GiveUp(f"not retried: {failure.value}")
    if attempt >= retries.attempts:
        return GiveUp(f"{attempt} of {retries.attempts} attempts failed")
    delay = backoff_delay(retries.backoff, attempt, rng)
    left = timeouts.connect - elapsed - delay
    if left <= 0:
        return GiveUp(f"the connect timeout of {format_duration(timeouts.connect)} is spent")
    if not budget.allows():
        budget.refused += 1
        return GiveUp(f"retry budget spent ({budget.retrying} retries in progress)")
    return Retry(delay, min(timeouts.connect_per_try, left))
