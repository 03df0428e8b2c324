"""TrafficPolicy documents and stored records: defaults, round trips, per-port merge, refusals with field
and reason, and no crash on hostile input."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from federation.core.errors import PolicyError, RecordError
from federation.core.keys import Keys
from federation.core.policy import model as m
from federation.core.policy.codec import (
    decode_policy,
    difference,
    encode_policy,
    from_document,
    merge,
    parse_policy_key,
    policy_key,
    to_document,
)

CANARY = """
apiVersion: meshfed.io/v1alpha1
kind: TrafficPolicy
metadata:
  namespace: shop
  name: web
  labels: {team: shop}
  resourceVersion: "12"
spec:
  split:
    - weight: 90
      labels: {version: v1}
    - weight: 10
      labels: {version: v2}
  retries:
    attempts: 2
  ports:
    - port: grpc
      timeouts: {idle: 10m}
      retries: {backoff: {base: 50ms}}
"""


def doc(spec: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                           "metadata": {"namespace": "shop", "name": "web"}}
    if spec is not None:
        out["spec"] = spec
    out.update(top)
    return out


def test_an_empty_spec_is_every_default() -> None:
    p = from_document(doc())
    assert p == m.TrafficPolicy("shop", "web")
    assert p.rules.locality.failover_priority == ("network", "region", "zone")
    assert p.rules.outlier_detection.enabled
    assert p.rules.active_health.enabled
    assert p.rules.retries.attempts == 3
    assert p.partition.mode is m.PartitionMode.KEEP_SERVING
    assert from_document(doc({})) == p


def test_the_stored_form_writes_every_default_out() -> None:
    spec = to_document(m.TrafficPolicy("shop", "web"))["spec"]
    assert spec["timeouts"] == {"connect": "10s", "connectPerTry": "3s", "idle": "1h", "maxConnectionDuration": None}
    assert spec["outlierDetection"]["maxEjectionPercent"] == 50
    assert spec["circuitBreaker"] == {"maxConnections": None, "maxPendingConnects": 1024,
                                      "perSite": {"maxConnections": None, "maxPendingConnects": 256}}
    assert "ports" not in spec


def test_canary_document_and_port_overrides_merge_field_by_field() -> None:
    p = from_document(yaml.safe_load(CANARY))
    assert [t.weight for t in p.rules.split] == [90, 10]
    assert p.rules.split[1].labels == (("version", "v2"),)
    grpc = p.rules_for("grpc")
    assert grpc.retries.attempts == 2  # inherited from the service level
    assert grpc.retries.backoff.base == 0.05
    assert grpc.retries.backoff.max == 0.25
    assert grpc.timeouts.idle == 600
    assert grpc.timeouts.connect == 10
    assert grpc.split == p.rules.split
    assert p.rules_for("http") == p.rules
    assert p.rules_for("other", 9090) == p.rules


def test_port_entries_by_number_and_stored_as_their_difference() -> None:
    p = from_document(doc({"timeouts": {"connect": "2s"}, "ports": [{"port": 5432, "timeouts": {"idle": "24h"}}]}))
    assert p.rules_for("pg", 5432).timeouts == m.Timeouts(2.0, 2.0, 86400.0, None)
    stored = to_document(p)["spec"]["ports"]
    assert stored == [{"port": 5432, "timeouts": {"idle": "24h"}}]


def test_round_trip_through_the_stored_record() -> None:
    p = from_document(yaml.safe_load(CANARY))
    data = encode_policy(p)
    assert json.loads(data)["schema"] == 1
    assert decode_policy(("shop", "web"), data) == p
    assert encode_policy(decode_policy(("shop", "web"), data)) == data  # canonical: equal policies, equal bytes


def test_keys() -> None:
    keys = Keys()
    assert policy_key(keys, "shop", "web") == "/meshfed/v1/mesh/policies/traffic/shop/web"
    assert parse_policy_key(keys, "/meshfed/v1/mesh/policies/traffic/shop/web") == ("shop", "web")
    for bad in ("/meshfed/v1/mesh/policies/traffic/shop", "/meshfed/v1/mesh/policies/traffic/shop/web/x",
                "/meshfed/v1/mesh/policies/traffic/Shop/web", "/meshfed/v1/sites/a"):
        with pytest.raises(RecordError):
            parse_policy_key(keys, bad)


BAD = [
    (doc(apiVersion="meshfed.io/v1"), "apiVersion", "is not meshfed.io/v1alpha1"),
    (doc(kind="DestinationRule"), "kind", "is not TrafficPolicy"),
    (doc(metadata={"name": "web"}), "metadata.namespace", "is required"),
    (doc(metadata={"namespace": "shop", "name": "Web"}), "metadata.name", "is not a DNS label"),
    (doc(metadata={"namespace": "shop", "name": "web", "namspace": "x"}), "metadata.namspace", "unknown field"),
    (doc(spce={}), "spce", "unknown field"),
    (doc({"retry": {}}), "spec.retry", "unknown field"),
    (doc({"retries": {"attempts": 0}}), "spec.retries.attempts", "0 is not in 1..10"),
    (doc({"retries": {"attempts": "3"}}), "spec.retries.attempts", "is not a whole number"),
    (doc({"retries": {"hedge": {"minDelay": "5ms"}}}), "spec.retries.hedge.minDelay", "is not between 10ms and"),
    (doc({"retries": {"hedge": {"enabled": "yes"}}}), "spec.retries.hedge.enabled", "is not true or false"),
    (doc({"retries": {"hedge": {"after": "1s"}}}), "spec.retries.hedge.after", "unknown field"),
    (doc({"retries": {"backoff": {"base": "1s", "max": "100ms"}}}), "spec.retries.backoff.max", "shorter than base"),
    (doc({"timeouts": {"connect": "1s", "connectPerTry": "2s"}}), "spec.timeouts.connectPerTry",
     "longer than connect 1s"),
    (doc({"timeouts": {"idle": "0s"}}), "spec.timeouts.idle", "would keep dead connections"),
    (doc({"timeouts": {"connect": 5}}), "spec.timeouts.connect", "is not a duration"),
    (doc({"locality": {"failoverPriority": ["network", "regoin"]}}), "spec.locality.failoverPriority[1]",
     "is not one of site, network, region, zone"),
    (doc({"locality": {"failoverPriority": ["zone", "zone"]}}), "spec.locality.failoverPriority[1]", "twice"),
    (doc({"locality": {"failoverPriority": ["network"], "failover": [{"from": "eu", "to": "us"}]}}),
     "spec.locality.failover", "needs `region` in failoverPriority"),
    (doc({"locality": {"failover": [{"from": "eu", "to": "eu"}]}}), "spec.locality.failover[0]", "to itself"),
    (doc({"locality": {"failover": [{"from": "eu"}]}}), "spec.locality.failover[0].to", "is required"),
    (doc({"locality": {"distribute": [{"from": "eu/*", "to": {"eu/*": 80, "us/*": 10}}]}}),
     "spec.locality.distribute[0].to", "weights sum to 90, not 100"),
    (doc({"locality": {"distribute": [{"from": "eu/a/b", "to": {"*": 100}}]}}),
     "spec.locality.distribute[0].from", "is not a locality"),
    (doc({"locality": {"spill": "strict"}}), "spec.locality.spill", "is not one of Gradual, Strict"),
    (doc({"split": [{"weight": 90, "site": "east"}, {"weight": 20, "site": "west"}]}), "spec.split",
     "weights sum to 110, not 100"),
    (doc({"split": [{"weight": 100}]}), "spec.split[0]", "needs a site, labels, or both"),
    (doc({"split": [{"site": "east"}]}), "spec.split[0].weight", "is required"),
    (doc({"split": [{"weight": 50, "site": "east"}, {"weight": 50, "site": "east"}]}), "spec.split[1]",
     "selects the same endpoints"),
    (doc({"split": [{"weight": 100, "labels": {"version": "v2!"}}]}), "spec.split[0].labels.version",
     "must be at most 63"),
    (doc({"split": {"east": 90}}), "spec.split", "must be a list"),
    (doc({"outlierDetection": {"maxEjectionPercent": 0}}), "spec.outlierDetection.maxEjectionPercent",
     "use enabled: false"),
    (doc({"outlierDetection": {"baseEjectionTime": "10m", "maxEjectionTime": "1m"}}),
     "spec.outlierDetection.maxEjectionTime", "shorter than baseEjectionTime"),
    (doc({"outlierDetection": {"panicThreshold": 150}}), "spec.outlierDetection.panicThreshold",
     "not between 0 and 100"),
    (doc({"activeHealth": {"interval": "1s", "timeout": "2s"}}), "spec.activeHealth.timeout", "longer than the interval"),
    (doc({"circuitBreaker": {"maxConnections": 0}}), "spec.circuitBreaker.maxConnections", "would refuse every"),
    (doc({"circuitBreaker": {"perSite": {"maxPendingConnects": -1}}}),
     "spec.circuitBreaker.perSite.maxPendingConnects", "is not in 1..1000000"),
    (doc({"faults": [{"sourceSites": ["west"]}]}), "spec.faults[0]", "needs a delay, an abort, or both"),
    (doc({"faults": [{"delay": {"fixed": "1s"}}]}), "spec.faults[0].delay.percent", "is required"),
    (doc({"faults": [{"abort": {"kind": "Drop", "percent": 5}}]}), "spec.faults[0].abort.kind",
     "is not one of Refuse, Reset"),
    (doc({"faults": [{"sourceSites": ["West"], "abort": {"kind": "Reset", "percent": 5}}]}),
     "spec.faults[0].sourceSites[0]", "is not a DNS label"),
    (doc({"partition": {"mode": "StopAfter"}}), "spec.partition.after", "is required with mode StopAfter"),
    (doc({"partition": {"mode": "FailClosed", "after": "1m"}}), "spec.partition.after", "StopAfter only"),
    (doc({"ingress": {"port": 443}}), "spec.ingress", "configured on the site that hosts it"),
    (doc({"ports": [{"port": "http", "partition": {}}]}), "spec.ports[0].partition", "whole service only"),
    (doc({"ports": [{"port": "http", "retires": {}}]}), "spec.ports[0].retires", "unknown field"),
    (doc({"ports": [{"port": "http"}, {"port": "http"}]}), "spec.ports[1].port", "has an entry already"),
    (doc({"ports": [{"port": "Not_A_Port"}]}), "spec.ports[0].port", "neither a port name"),
    (doc({"ports": [{"port": "http", "retries": {"attempts": 11}}]}), "spec.ports[0].retries.attempts",
     "not in 1..10"),
    (doc({"timeouts": {"connectPerTry": "2s"}, "ports": [{"port": "http", "timeouts": {"connect": "1s"}}]}),
     "spec.ports[0].timeouts.connectPerTry", "longer than connect 1s"),
    ([], "", "must be a mapping"),
]


@pytest.mark.parametrize(("document", "field", "reason"), BAD, ids=[b[1] or "top" for b in BAD])
def test_a_bad_document_is_refused_with_field_and_reason(document: Any, field: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        from_document(document)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{field}: " if field else reason[:5])


@pytest.mark.parametrize(("data", "reason"), [
    (b"{", "value is not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps(doc()).encode(), "schema: is not 1"),
    (json.dumps({"schema": 1, **doc(metadata={"namespace": "shop", "name": "db"})}).encode(),
     "names shop/db but its key names shop/web"),
    (json.dumps({"schema": 1, **doc({"retries": {"attempts": 99}})}).encode(), "spec.retries.attempts"),
])
def test_a_bad_stored_record_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_policy(("shop", "web"), data)


def test_merge_and_difference_are_inverse() -> None:
    base = {"a": {"x": 1, "y": [1]}, "b": 2}
    full = {"a": {"x": 1, "y": [2]}, "b": 3}
    assert merge(base, difference(full, base)) == full
    assert merge({"a": {"x": 1}}, {"a": None}) == {"a": None}  # null replaces, it does not mean "inherit"


# ---------------------------------------------------------------- properties

durations = st.integers(1, 3_600_000).map(lambda ms: f"{ms}ms")
sites = st.sampled_from(["east", "west", "edge"])
label_values = st.sampled_from(["v1", "v2", "canary", "stable"])
weights = st.integers(0, 100)


@st.composite
def split_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 3))
    if n == 0:
        return []
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
    ws = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    return [{"weight": w, "site": f"site-{i}", **({"labels": {"version": draw(label_values)}}
                                                   if draw(st.booleans()) else {})} for i, w in enumerate(ws)]


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["retries"] = {"attempts": draw(st.integers(1, 10)),
                           "budget": {"percent": draw(st.integers(0, 100)), "minRetries": draw(st.integers(0, 9))},
                           "hedge": {"enabled": draw(st.booleans()),
                                     "minDelay": draw(st.integers(10, 60_000).map(lambda ms: f"{ms}ms"))}}
    if draw(st.booleans()):
        spec["timeouts"] = {"connect": "1h", "connectPerTry": draw(durations), "idle": draw(durations),
                            "maxConnectionDuration": draw(st.none() | durations.filter(lambda d: int(d[:-2]) >= 1000))}
    if draw(st.booleans()):
        spec["outlierDetection"] = {"enabled": draw(st.booleans()),
                                    "consecutiveConnectFailures": draw(st.integers(1, 1000)),
                                    "maxEjectionPercent": draw(st.integers(1, 100)),
                                    "panicThreshold": draw(st.floats(0, 100))}
    if draw(st.booleans()):
        spec["split"] = draw(split_lists())
    if draw(st.booleans()):
        spec["locality"] = {"failoverPriority": draw(st.lists(st.sampled_from(m.TOPOLOGY_KEYS), unique=True)),
                            "spill": draw(st.sampled_from(["Gradual", "Strict"]))}
    if draw(st.booleans()):
        spec["circuitBreaker"] = {"maxConnections": draw(st.none() | st.integers(1, 10**6)),
                                  "perSite": {"maxPendingConnects": draw(st.none() | st.integers(1, 10**6))}}
    if draw(st.booleans()):
        spec["faults"] = [{"sourceSites": draw(st.lists(sites, unique=True)),
                           "abort": {"kind": draw(st.sampled_from(["Refuse", "Reset"])), "percent": draw(weights)}}]
    if draw(st.booleans()):
        port_spec = draw(specs()) if draw(st.booleans()) else {}
        port_spec.pop("ports", None)
        spec["ports"] = [{"port": draw(st.sampled_from(["http", "grpc", 8080])), **port_spec}]
    return spec


@given(specs())
def test_every_valid_document_round_trips_canonically(spec: dict[str, Any]) -> None:
    p = from_document(doc(spec))
    again = from_document(to_document(p))
    assert again == p
    assert decode_policy(("shop", "web"), encode_policy(p)) == p
    for port in p.ports:
        assert p.rules_for(str(port.port), port.port if isinstance(port.port, int) else 0) == port.rules


leaves = st.none() | st.booleans() | st.integers(-5, 10**7) | st.floats(allow_nan=True) | st.text(max_size=12) \
    | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)


@given(specs(), st.data())
def test_a_mutated_document_is_either_valid_or_refused_with_a_field(spec: dict[str, Any], data: st.DataObject) -> None:
    document = to_document(from_document(doc(spec)))
    target = copy.deepcopy(document)
    node: Any = target
    while isinstance(node, dict | list) and node:
        key = data.draw(st.sampled_from(list(node.keys()) if isinstance(node, dict) else list(range(len(node)))))
        if not isinstance(node[key], dict | list) or not node[key] or data.draw(st.booleans()):
            node[key] = data.draw(leaves)
            break
        node = node[key]
    try:
        from_document(target)
    except PolicyError as exc:
        reason = exc.reason  # every refusal says why
        assert reason
    try:
        decode_policy(("shop", "web"), json.dumps({"schema": 1, **target}).encode())
    except RecordError:
        pass


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    with pytest.raises(RecordError):
        decode_policy(("shop", "web"), data)
