"""Log rate limiting stays bounded under a flood of distinct keys."""

from federation.core.backoff import Backoff
from federation.core.ratelimit import LogLimiter


def test_one_line_per_key_per_interval_and_bounded_memory() -> None:
    lim = LogLimiter(interval=10, capacity=100)
    assert lim.allow("k", 0.0)
    assert not lim.allow("k", 5.0)
    assert lim.allow("k", 11.0)
    for i in range(10_000):
        lim.allow(i, 20.0)
    assert len(lim) == 100


def test_backoff_grows_to_the_cap_and_resets() -> None:
    b = Backoff(base=1.0, cap=8.0)
    delays = [b.next() for _ in range(8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[4:]) <= 8.0
    assert min(delays[4:]) >= 4.0
    b.reset()
    assert b.next() <= 1.0
