"""Outlier ejection per endpoint and per gateway, with the ejection cap, panic and last resort."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from federation.core.policy.model import OutlierDetection
from gateway.policy.outlier import Capped, Ejected, Mode, Outliers, Route

SETTINGS = OutlierDetection()  # 3 endpoint failures, 2 gateway errors, 30 s base, 300 s max, 50 %, panic off


def fail(o: Outliers, key: str, times: int, now: float = 0.0, known: int = 10) -> object:
    out = None
    for _ in range(times):
        out = o.endpoint_failed(key, now, known)
    return out


def test_consecutive_failures_eject_and_a_success_resets_the_run() -> None:
    o = Outliers(SETTINGS)
    assert fail(o, "a", 2) is None
    o.endpoint_succeeded("a", 0.0)
    assert fail(o, "a", 2) is None
    assert fail(o, "a", 1) == Ejected("a", 30.0, 1)
    assert o.endpoint_ejected("a", 29.9)
    assert not o.endpoint_ejected("a", 30.0)


def test_ejection_time_grows_with_each_ejection_up_to_the_maximum_and_decays() -> None:
    o = Outliers(SETTINGS)
    now, times = 0.0, []
    for _ in range(12):
        ejected = fail(o, "a", 3, now)
        assert isinstance(ejected, Ejected)
        times.append(ejected.until - now)
        now = ejected.until  # fails again the moment it is back
    assert times[:4] == [30.0, 60.0, 90.0, 120.0]
    assert max(times) == 300.0
    quiet = now + 10 * 30.0  # ten base periods back in service forgive ten ejections
    ejected = fail(o, "a", 3, quiet)
    assert isinstance(ejected, Ejected)
    assert ejected.ejections == 3


def test_max_ejection_percent_caps_endpoints_but_one_may_always_go() -> None:
    o = Outliers(SETTINGS)
    assert isinstance(fail(o, "a", 3, known=4), Ejected)
    assert isinstance(fail(o, "b", 3, known=4), Ejected)
    assert fail(o, "c", 3, known=4) == Capped("c")
    assert o.capped == 1
    lone = Outliers(OutlierDetection(max_ejection_percent=10))
    assert isinstance(fail(lone, "only", 3, known=1), Ejected)


def test_a_gateway_error_ejects_the_gateway_and_an_endpoint_failure_behind_it_does_not() -> None:
    o = Outliers(SETTINGS)
    routes = [Route(("east", ip), gateways=("east/gw",)) for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3")]
    routes.append(Route(("west", "10.1.0.1")))
    for _ in range(3):  # the remote gateway reports its endpoint 10.0.0.1 refused
        o.endpoint_failed(routes[0].endpoint, 0.0, known=4)
    assert not o.gateway_ejected("east/gw", 0.0)
    assert o.health(routes, 1.0).healthy == (False, True, True, True)  # one endpoint out, not the site
    assert o.gateway_failed("east/gw", 1.0) is None
    assert isinstance(o.gateway_failed("east/gw", 1.0), Ejected)
    assert o.health(routes, 2.0).healthy == (False, False, False, True)
    o.gateway_succeeded("east/gw", 3.0)  # e.g. an active probe passed
    assert o.health(routes, 3.0).healthy == (False, True, True, True)


def test_a_site_with_two_gateways_stays_reachable_while_one_works() -> None:
    o = Outliers(SETTINGS)
    route = Route("ep", gateways=("gw1", "gw2"))
    o.gateway_failed("gw1", 0.0)
    o.gateway_failed("gw1", 0.0)
    assert o.gateway_ejected("gw1", 0.0)
    assert o.health([route, Route("x")], 0.0).healthy == (True, True)


def test_panic_ignores_endpoint_ejections_but_never_gateway_ejections() -> None:
    o = Outliers(OutlierDetection(panic_threshold=60, max_ejection_percent=100))
    routes = [Route("a"), Route("b"), Route("c", gateways=("gw",)), Route("d")]
    fail(o, "a", 3, known=4)
    fail(o, "b", 3, known=4)
    o.gateway_failed("gw", 0.0)
    o.gateway_failed("gw", 0.0)
    h = o.health(routes, 1.0)
    assert h.mode is Mode.PANIC  # 1 of 4 healthy < 60 %
    assert h.healthy == (True, True, False, True)


def test_when_nothing_is_healthy_everything_ready_is_tried() -> None:
    o = Outliers(OutlierDetection(max_ejection_percent=100))
    routes = [Route("a"), Route("b", ready=False), Route("c", gateways=("gw",))]
    fail(o, "a", 3)
    o.gateway_failed("gw", 0.0)
    o.gateway_failed("gw", 0.0)
    h = o.health(routes, 1.0)
    assert h.mode is Mode.LAST_RESORT
    assert h.healthy == (True, False, True)
    assert o.health([Route("z", ready=False)], 1.0).healthy == (False,)


def test_disabled_detection_ejects_nothing_and_uses_readiness() -> None:
    o = Outliers(OutlierDetection(enabled=False))
    assert fail(o, "a", 10) is None
    assert o.gateway_failed("gw", 0.0) is None
    h = o.health([Route("a"), Route("b", ready=False)], 0.0)
    assert h.mode is Mode.OFF
    assert h.healthy == (True, False)


def test_a_policy_change_keeps_current_ejections_and_applies_new_thresholds() -> None:
    o = Outliers(SETTINGS)
    fail(o, "a", 3)
    o.update(OutlierDetection(consecutive_connect_failures=1))
    assert o.endpoint_ejected("a", 1.0)
    assert isinstance(o.endpoint_failed("b", 1.0, 10), Ejected)


def test_state_is_bounded() -> None:
    o = Outliers(SETTINGS, capacity=8)
    for i in range(100):
        o.endpoint_failed(f"ep{i}", 0.0, 100)
    assert len(o._endpoints) == 8


# ---------------------------------------------------------------- properties

ops = st.lists(st.tuples(st.sampled_from(["fail", "gwfail", "ok", "gwok", "tick"]), st.integers(0, 5),
                         st.floats(0, 100)), max_size=60)


@given(ops, st.integers(1, 100), st.integers(1, 5), st.floats(0, 100))
def test_ejection_respects_the_cap_the_maximum_time_and_never_refuses_on_its_own(
        steps: list[tuple[str, int, float]], pct: int, threshold: int, panic: float) -> None:
    settings = OutlierDetection(consecutive_connect_failures=threshold, consecutive_gateway_errors=threshold,
                                max_ejection_percent=pct, panic_threshold=panic)
    o, now, known = Outliers(settings), 0.0, 6
    routes = [Route(i, gateways=(f"gw{i % 2}",) if i >= 3 else (), ready=i != 5) for i in range(known)]
    allowed = max(1, math.floor(pct * known / 100))
    for op, key, dt in steps:
        if op == "fail":
            got = o.endpoint_failed(key, now, known)
            if isinstance(got, Ejected):
                assert got.until - now <= settings.max_ejection_time + 1e-9
        elif op == "gwfail":
            o.gateway_failed(f"gw{key % 2}", now)
        elif op == "ok":
            o.endpoint_succeeded(key, now)
        elif op == "gwok":
            o.gateway_succeeded(f"gw{key % 2}", now)
        else:
            now += dt
        assert o.ejected_endpoints(now) <= allowed
        h = o.health(routes, now)
        assert all(r.ready for r, ok in zip(routes, h.healthy, strict=True) if ok)  # never revives an unready one
        assert any(h.healthy)  # some ready endpoint is always offered
