"""Partition behaviour: keep serving, stop after a duration, or fail closed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import Partition, PartitionMode
from gateway.policy.partition import Serve, Withdraw, decide, withdrawn_sites

KEEP = Partition()
STOP = Partition(PartitionMode.STOP_AFTER, 60.0)
CLOSED = Partition(PartitionMode.FAIL_CLOSED)


def test_fresh_state_always_serves() -> None:
    for p in (KEEP, STOP, CLOSED):
        assert decide(p, None, 1000.0) == Serve()


def test_the_three_modes_when_stale() -> None:
    assert decide(KEEP, 0.0, 86400.0) == Serve(86400.0)
    assert decide(STOP, 0.0, 59.0) == Serve(59.0)
    stopped = decide(STOP, 0.0, 60.0)
    assert isinstance(stopped, Withdraw)
    assert "longer than the 1m" in stopped.reason
    closed = decide(CLOSED, 10.0, 10.0)
    assert isinstance(closed, Withdraw)
    assert "fails closed" in closed.reason


def test_withdrawn_sites() -> None:
    assert withdrawn_sites(STOP, {"east": 0.0, "west": None, "edge": 50.0}, 100.0).keys() == {"east"}


@given(st.sampled_from([KEEP, STOP, CLOSED]), st.none() | st.floats(0, 1e6), st.floats(0, 1e6))
def test_only_keep_serving_serves_forever(p: Partition, since: float | None, later: float) -> None:
    now = (since or 0.0) + later
    verdict = decide(p, since, now)
    if since is None or p.mode is PartitionMode.KEEP_SERVING:
        assert isinstance(verdict, Serve)
    elif p.mode is PartitionMode.FAIL_CLOSED:
        assert isinstance(verdict, Withdraw)
    else:
        assert isinstance(verdict, Serve) == (now - since < 60.0)
