"""Rate limiting for log lines keyed by remote input, with a bounded memory."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class LogLimiter:
    """Allows one line per key per `interval` seconds; remembers at most `capacity` keys (LRU)."""

    def __init__(self, interval: float = 60.0, capacity: int = 1024) -> None:
        self.interval = interval
        self.capacity = capacity
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self.suppressed = 0

    def allow(self, key: Hashable, now: float) -> bool:
        """True if a line for `key` may be logged at time `now`."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._last)
