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
