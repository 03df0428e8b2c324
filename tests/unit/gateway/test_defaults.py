"""A service without a TrafficPolicy gets every default rule (the same object an empty spec gets), and an
active probe that passes through an ejected gateway ends its ejection for every service."""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from federation.core.policy.codec import from_document
from federation.core.policy.model import DEFAULT_RULES, OutlierDetection, TrafficPolicy
from federation.core.records import Endpoint, EndpointPort, Gateway, Locality, ServiceExport, ServicePort, Site
from federation.core.view import MeshView
from federation.runtime.values import Value
from gateway.enforcing import Enforcer, Policies
from gateway.policy.outlier import Outliers, Route
from gateway.reachability import Reachability
from gateway.refusals import EgressMetrics


async def _attempt(*_args: Any) -> bool:
    return False


def _enforcer(policies: Value[Policies] | None) -> Enforcer:
    registry = CollectorRegistry()
    return Enforcer("west", EgressMetrics(registry), _attempt, _attempt, policies, registry)


def _view(*services: str) -> MeshView:
    gw = (Gateway("gw", "198.18.0.2", 15443),)
    eps = (Endpoint(("10.0.0.1",), ports=(EndpointPort("tcp", 80),)),)
    return MeshView(sites={"west": Site("west", "n1", Locality("r1", "z1")),
                           "east": Site("east", "n2", Locality("r1", "z1"), gateways=gw)},
                    exports={("east", "shop", s): ServiceExport("east", "shop", s, (ServicePort("tcp", 80),),
                                                                endpoints=eps) for s in services})


def _empty(name: str) -> TrafficPolicy:
    return from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                          "metadata": {"namespace": "shop", "name": name}, "spec": {}})


def test_without_a_policy_reader_every_service_gets_the_default_rules() -> None:
    rules = _enforcer(None).rules(_view("web"), ("shop", "web", "tcp"))
    assert rules is DEFAULT_RULES
    assert rules == _empty("web").rules_for("tcp", 80)  # exactly what an empty spec gives
    assert rules.retries.hedge.enabled
    assert rules.retries.attempts > 1
    assert rules.outlier_detection.enabled
    assert rules.timeouts.connect_per_try < rules.timeouts.connect


def test_a_service_without_a_policy_beside_one_with_a_policy_gets_the_defaults() -> None:
    tuned = from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                           "metadata": {"namespace": "shop", "name": "web"},
                           "spec": {"timeouts": {"connectPerTry": "1s"}}})
    holder: Value[Policies] = Value(MappingProxyType({("shop", "web"): tuned}), name="traffic policies")
    enforcer, view = _enforcer(holder), _view("web", "db")
    assert enforcer.rules(view, ("shop", "web", "tcp")).timeouts.connect_per_try == 1.0
    assert enforcer.rules(view, ("shop", "db", "tcp")) is DEFAULT_RULES
    holder.set(MappingProxyType({}))  # the policy deleted: the service falls back to the defaults, not a plain path
    assert enforcer.rules(view, ("shop", "web", "tcp")) is DEFAULT_RULES


def test_state_of_a_service_gone_from_the_view_is_dropped() -> None:
    enforcer = _enforcer(None)
    view = _view("web")
    enforcer.rules(view, ("shop", "web", "tcp"))
    enforcer._state(("shop", "web", "tcp"), DEFAULT_RULES)  # what the first client of the service makes
    assert enforcer.state("shop", "web") is not None
    enforcer.rules(MeshView(sites=view.sites, exports={}, generation=view.generation + 1), ("shop", "db", "tcp"))
    assert enforcer.state("shop", "web") is None


def test_a_probe_that_passed_through_a_gateway_ends_its_ejection_for_every_service() -> None:
    enforcer = _enforcer(None)
    told: list[tuple[str, str]] = []
    reach = Reachability()
    reach.gateway_alive = lambda site, gateway: (told.append((site, gateway)), enforcer.gateway_alive(site, gateway))
    states = [enforcer._state(("shop", s, "tcp"), DEFAULT_RULES) for s in ("web", "db")]
    now = time.monotonic()  # the enforcer's clock
    for state in states:
        for _ in range(DEFAULT_RULES.outlier_detection.consecutive_gateway_errors):
            state.outliers.gateway_failed(("east", "gw"), now)
        assert state.outliers.gateway_ejected(("east", "gw"), now)
    reach.succeeded("east")  # a tunnel worked: no gateway named, nothing un-ejected here (the enforcer does it)
    assert told == []
    enforcer.gateway_alive("east", "other")
    assert all(s.outliers.gateway_ejected(("east", "gw"), now) for s in states)
    reach.succeeded("east", "gw")
    assert told == [("east", "gw")]
    assert not any(s.outliers.ejections(time.monotonic()) for s in states)


@given(st.lists(st.sampled_from(["fail", "ok", "probe"]), max_size=40), st.integers(1, 5))
def test_after_a_good_probe_the_gateway_is_never_ejected_and_its_route_is_healthy(
        events: list[str], errors: int) -> None:
    outliers = Outliers(OutlierDetection(consecutive_gateway_errors=errors))
    routes = [Route(("east", "10.0.0.1", 80), (("east", "gw"),)), Route(("edge", "10.0.0.2", 80), (("edge", "gw"),))]
    now = 0.0
    for e in events:
        now += 0.5
        if e == "fail":
            outliers.gateway_failed(("east", "gw"), now)
        else:  # a stream opened through it, or an active probe passed: the same evidence
            outliers.gateway_succeeded(("east", "gw"), now)
    outliers.gateway_succeeded(("east", "gw"), now)
    assert not outliers.gateway_ejected(("east", "gw"), now)
    assert outliers.health(routes, now).healthy == (True, True)
