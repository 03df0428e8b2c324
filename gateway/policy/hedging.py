"""Hedged connects before the first byte: when a try still unanswered is raced by one on the next route. Pure.

Happy Eyeballs (RFC 8305) for tunnels: a try to a gateway that has not answered its stream request
within `delay` (3 x that gateway's recent p95 answer time, at least `Hedge.min_delay`) gets a second try
on the next route, and the first to answer keeps the client. Nothing reached the application before the
answer, so the second try cannot duplicate a byte. The try that lost keeps running to its own per-try
timeout: its late answer is a sample (a slow WAN raises its own delay, and then stops being hedged), and
its timeout is the evidence that ejects a black-holed gateway.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Hashable

from federation.core.policy.model import Hedge

QUANTILE = 0.95
"""The Tail at Scale's hedging point (Dean and Barroso, 2013): a 95th percentile is robust to the few
fresh handshakes in a window of pooled-tunnel answers, which a 99th (the window's maximum) is not."""
MULTIPLIER = 3.0
"""Times the recent p95: a try three times later than 19 of 20 answers is far out of the gateway's own
habit, whatever its WAN's round trip, so a merely slow gateway is rarely hedged."""
WINDOW = 64
"""Samples kept per gateway: recent enough to follow a WAN that became slow within a few connections."""
MAX_GATEWAYS = 4096
"""Gateways with samples kept (least recently answered forgotten): a 1,000-site mesh fits, memory bounded."""


class Answers:
    """Recent answer times (a try's start to its gateway's status) per gateway, in bounded windows."""

    def __init__(self, window: int = WINDOW, max_gateways: int = MAX_GATEWAYS) -> None:
        self.window = window
        self.max_gateways = max_gateways
        self._samples: collections.OrderedDict[Hashable, collections.deque[float]] = collections.OrderedDict()

    def record(self, gateway: Hashable, seconds: float) -> None:
        """`gateway` answered a try after `seconds`."""
        samples = self._samples.get(gateway)
        if samples is None:
            samples = self._samples[gateway] = collections.deque(maxlen=self.window)
            while len(self._samples) > self.max_gateways:
                self._samples.popitem(last=False)
        else:
            self._samples.move_to_end(gateway)
        samples.append(max(0.0, seconds))

    def p95(self, gateway: Hashable) -> float | None:
        """The 95th percentile of `gateway`'s recent answer times (nearest rank); None before any answer."""
        samples = self._samples.get(gateway)
        if not samples:
            return None
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, math.ceil(QUANTILE * len(ordered)) - 1)]

    def __len__(self) -> int:
        return len(self._samples)


def delay(settings: Hedge, p95: float | None, per_try: float) -> float | None:
    """Seconds after which an unanswered try through a gateway with this recent `p95` is hedged; None: never
    (hedging off, or the delay would reach the per-try timeout, where a plain retry takes over anyway)."""
    if not settings.enabled:
        return None
    wait = settings.min_delay if p95 is None else max(settings.min_delay, MULTIPLIER * p95)
    return wait if wait < per_try else None
