"""When memory is handed back after a burst of connections (the Trimmer's decisions; pure, times given)."""

from __future__ import annotations

import pytest

from federation.runtime.memory import Trimmer, rss, trim, tune


def test_a_trim_comes_once_a_burst_has_closed_and_the_count_stopped_falling() -> None:
    t = Trimmer(least=100, every=10.0, settle=1.0)
    for n in range(1, 1001):
        assert t.seen(n, 0.0) is None  # rising: nothing to give back
    assert t.seen(900, 1.0) is None  # 100 fewer, but not half of the peak
    due = None
    for n in range(899, -1, -1):
        due = t.seen(n, 2.0 + (899 - n) * 0.001)  # the rest closes over 0.9 s
    assert due is not None
    assert due == pytest.approx(2.899 + 1.0)  # a second after the last close
    assert not t.due(0, due - 0.5)
    assert t.due(0, due)
    assert not t.due(0, due + 1)  # once
    assert t.trims == 1


def test_trims_are_at_most_every_interval_and_count_from_the_new_peak() -> None:
    t = Trimmer(least=10, every=10.0, settle=0.5)
    t.seen(100, 0.0)
    due = t.seen(0, 1.0)
    assert due == 1.5
    assert t.due(0, 1.5)
    t.seen(100, 2.0)
    due = t.seen(0, 3.0)
    assert due == 11.5  # ten seconds after the last trim
    t.seen(5, 4.0)  # a small rise does not cancel it (the peak since the trim is 100)
    assert t.seen(4, 5.0) == 11.5


def test_the_glibc_hooks_work_here_and_report_the_rss() -> None:
    assert tune() is True
    trim()
    assert rss() > 1024 * 1024
