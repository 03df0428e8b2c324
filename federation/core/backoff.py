"""Exponential backoff with full jitter. Pure: the random source is an argument."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays of base * 2**n, capped at `cap`, each drawn uniformly from [delay/2, delay]."""

    base: float = 0.2
    cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = min(self.cap, self.base * float(2 ** min(self.attempts, 30)))
        self.attempts += 1
        return delay / 2 + self.rng.random() * delay / 2

    def reset(self) -> None:
        """Call after a success."""
        self.attempts = 0


REGISTRY_CAP = 2.0
"""Longest wait between registry attempts: a quorum that returns is seen within 2 s (etcd elects a new
leader in about 1 s), and a client's attempts cost etcd nothing next to its normal traffic."""


def registry_backoff() -> Backoff:
    """The retry policy every registry user shares: 0.1 s doubling, jittered, capped at `REGISTRY_CAP`."""
    return Backoff(base=0.1, cap=REGISTRY_CAP)
