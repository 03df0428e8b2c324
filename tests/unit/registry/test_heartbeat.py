"""The lag meter: arrival minus stamp per site; a site that goes takes its series with it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from federation.core.catalog import Outcome
from federation.core.heartbeat import Heartbeat
from federation.registry.heartbeat import LagMeter


def test_lag_is_arrival_minus_stamp_and_a_clock_ahead_counts_as_zero() -> None:
    reg, now = CollectorRegistry(), [1000.0]
    meter = LagMeter(reg, clock=lambda: now[0])
    meter.take(Outcome(beat=Heartbeat("east", 999.7, 30.0)))
    meter.take(Outcome(beat=Heartbeat("west", 1000.5, 30.0)))  # west's clock runs 0.5 s ahead (or more)
    assert reg.get_sample_value("meshfed_registry_lag_seconds_sum", {"site": "east"}) == pytest.approx(0.3)
    assert reg.get_sample_value("meshfed_registry_lag_seconds_bucket", {"site": "west", "le": "0.01"}) == 1
    assert meter.last["west"].lag == -0.5
    now[0] = 1070.0
    report = meter.report()
    assert report["east"]["overdue"] is True
    assert report["east"]["heartbeatAgeSeconds"] == 70.0


def test_a_site_that_goes_takes_its_series() -> None:
    reg = CollectorRegistry()
    meter = LagMeter(reg, clock=lambda: 10.0)
    for site in ("east", "west"):
        meter.take(Outcome(beat=Heartbeat(site, 9.0, 30.0)))
    meter.take(Outcome(beat_gone="east"))
    meter.prune(["south"])
    assert meter.last == {}
    assert reg.get_sample_value("meshfed_registry_lag_seconds_count", {"site": "east"}) is None
    assert reg.get_sample_value("meshfed_registry_lag_seconds_count", {"site": "west"}) is None
