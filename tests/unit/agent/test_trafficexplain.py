"""`meshfed explain`'s traffic-policy step (pure): the policy and port entry in force, the split with the
endpoints each target selects, the live ejections and breaker counts, timeouts, retries, the faults of the
asking site only."""

from __future__ import annotations

import yaml

from federation.agent.explaining import explain, parse_name
from federation.core.policy.access import AccessState
from federation.core.policy.codec import from_document
from federation.core.policy.model import TrafficPolicy
from federation.core.records import Endpoint, EndpointPort, Gateway, Locality, ServiceExport, ServicePort, Site
from federation.core.view import MeshView
from gateway.policy.breaker import Breaker
from gateway.policy.outlier import Outliers
from gateway.policy.retrying import Budget

SPEC = """
split: [{weight: 80, labels: {version: v1}}, {weight: 20, labels: {version: v2}}]
circuitBreaker: {maxConnections: 100}
faults:
  - {sourceSites: [north], abort: {kind: Refuse, percent: 100}}
  - {sourceSites: [west], destinationSites: [east], delay: {fixed: 200ms, percent: 10}}
ports:
  - port: tcp
    timeouts: {connectPerTry: 1s, idle: 30m}
    retries: {attempts: 2}
"""


def _policy(spec: str) -> TrafficPolicy:
    return from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                          "metadata": {"namespace": "shop", "name": "web"}, "spec": yaml.safe_load(spec)})


def _view() -> MeshView:
    gw = (Gateway("gw", "198.18.0.2", 15443),)
    eps = tuple(Endpoint((f"10.0.0.{i}",), ports=(EndpointPort("tcp", 80),), labels=(("version", v),))
                for i, v in ((1, "v1"), (2, "v1"), (3, "v2")))
    return MeshView(sites={"west": Site("west", "n1", Locality("r1", "z1")), "north": Site("north", "n3"),
                           "east": Site("east", "n2", Locality("r1", "z1"), gateways=gw)},
                    exports={("east", "shop", "web"): ServiceExport("east", "shop", "web", (ServicePort("tcp", 80),),
                                                                    endpoints=eps)})


def _step(policies: dict[tuple[str, str], TrafficPolicy], state: object = None, from_site: str = "west") -> dict:
    q = parse_name("shop/web", "clusterset.local", from_site, None)
    out = explain(_view(), "west", q, {}, AccessState(), "mesh.example", {}, (), policies, state, 100.0)
    (step,) = [s for s in out["steps"] if s["step"] == "traffic-policy"]
    return step


class _State:
    def __init__(self, policy: TrafficPolicy) -> None:
        rules = policy.rules_for("tcp", 80)
        self.outliers = Outliers(rules.outlier_detection)
        self.breaker = Breaker(rules.circuit_breaker)
        self.budget = Budget(rules.retries.budget)


def test_without_a_policy_the_step_shows_the_defaults_in_force() -> None:
    step = _step({})
    assert step["answer"] == "defaults (no TrafficPolicy for shop/web): every default rule, as an empty spec has"
    assert step["policy"] is None
    assert step["defaults"] is True
    empty = _step({("shop", "web"): _policy("{}")})
    assert empty["defaults"] is False
    for field in ("timeouts", "retries", "circuitBreaker", "split"):
        assert step[field] == empty[field], field  # the same rules as an empty spec
    text = "\n".join(step["details"])
    assert "ejection: an endpoint after" in text
    assert "retries: " in text
    assert "timeouts: connect" in text


def test_the_policy_its_port_entry_split_breaker_timeouts_retries_and_the_askers_faults() -> None:
    policy = _policy(SPEC)
    state = _State(policy)
    for _ in range(2):
        state.outliers.gateway_failed(("east", "gw"), 90.0)  # ejected at 90 for 30 s: 20 s left at 100
    assert state.breaker.open().value == "ok"
    assert state.breaker.connecting("east").value == "ok"
    state.breaker.connected("east")
    step = _step({("shop", "web"): policy}, state)
    assert step["answer"] == "TrafficPolicy shop/web applies, with its entry for port tcp"
    assert step["portEntry"] == "tcp"
    text = "\n".join(step["details"])
    assert "split: 80% to labels version=v1: 2 ready endpoint(s) (east 2); through a gateway its labels go in " \
           "the stream request" in text
    assert "split: 20% to labels version=v2: 1 ready endpoint(s) (east 1)" in text
    assert "ejected now: gateway gw of east (20s left, ejection 1)" in text
    assert "circuit breaker: service connections 100, pending 1024; per site connections no limit, pending 256; " \
           "now 1 open, 0 pending (east 1)" in text
    assert "timeouts: connect 10s in all, 1s per try, idle 30m, max duration none" in text
    assert "retries: 2 attempt(s) in all" in text
    assert "fault rule 2 for clients of west, routed to east: delay 200ms on 10%" in text
    assert "fault rule 1" not in text  # north's drill does not touch west's clients
    assert step["live"]["ejected"] == [{"kind": "gateway", "what": "gateway gw of east", "secondsLeft": 20.0,
                                        "ejections": 1}]
    assert step["faults"] == [{"rule": 2, "sourceSites": ["west"], "destinationSites": ["east"],
                               "delay": {"fixed": "200ms", "percent": 10}}]


def test_another_sites_view_names_its_faults_but_not_this_agents_live_state() -> None:
    policy = _policy(SPEC)
    step = _step({("shop", "web"): policy}, _State(policy), from_site="north")
    text = "\n".join(step["details"])
    assert "fault rule 1 for clients of north, routed to any site: abort (Refuse) 100%" in text
    assert "run meshfed explain on north's agent" in text
    assert "ejected now" not in text
    assert "now 0 retrying" not in text  # this agent's budget is not north's
    assert step["live"] is None
