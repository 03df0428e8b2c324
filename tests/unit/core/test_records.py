"""Record codec and validation: round trips, precise rejections, and no crash on arbitrary bytes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.codec import decode_export, decode_site, encode_export, encode_site
from federation.core.errors import RecordError
from federation.core.keys import ChunkKey, ClaimKey, Keys, ServiceKey, SiteKey, VipKey
from federation.core.records import (
    Endpoint,
    EndpointPort,
    Gateway,
    Locality,
    ServiceExport,
    ServicePort,
    ServiceType,
    Site,
)

KEYS = Keys()
SITE = Site("east", "net-1", Locality("eu", "eu-1a"), "kubernetes", (Gateway("gw", "198.18.0.1"),), "PEM", "0.1.0")
EXPORT = ServiceExport(
    "east", "shop", "web", (ServicePort("http", 80), ServicePort("grpc", 9090)), ServiceType.HEADLESS,
    (Endpoint(("10.0.0.1", "fd00::1"), (EndpointPort("http", 8080),), True, "web-0", Locality("eu", "eu-1a"), 3),),
    1700000000.5,
)


def test_round_trips() -> None:
    assert decode_site(SiteKey("east"), encode_site(SITE)) == SITE
    assert decode_export(ServiceKey("east", "shop", "web"), encode_export(EXPORT)) == EXPORT


K8S = dataclasses.replace(
    EXPORT, ports=(ServicePort("http", 80, app_protocol="kubernetes.io/h2c"),), endpoints=(),
    ip_families=("IPv6", "IPv4"), session_affinity="ClientIP", session_affinity_timeout=10,
    internal_traffic_policy="Local", traffic_distribution="PreferClose",
    exported_labels=(("team", "shop"), ("tier", "")), exported_annotations=(("example.com/owner", "a b c"),),
)


def test_kubernetes_fields_round_trip_and_are_left_out_when_unset() -> None:
    assert decode_export(ServiceKey("east", "shop", "web"), encode_export(K8S)) == K8S
    plain = json.loads(encode_export(EXPORT))
    for key in ("ipFamilies", "sessionAffinity", "internalTrafficPolicy", "trafficDistribution", "exportedLabels"):
        assert key not in plain
    assert "appProtocol" not in plain["ports"][0]


def test_a_record_of_an_agent_before_these_fields_reads_as_none() -> None:
    old = json.loads(encode_export(EXPORT))
    got = decode_export(ServiceKey("east", "shop", "web"), json.dumps(old).encode())
    assert (got.ip_families, got.session_affinity, got.exported_labels) == ((), None, None)


def _k8s_mutated(**changes: object) -> bytes:
    obj = json.loads(encode_export(K8S))
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_k8s_mutated(ipFamilies=["IPv4", "IPv4"]), "is not one or two distinct families"),
        (_k8s_mutated(ipFamilies="IPv4"), "ipFamilies is not a list of strings"),
        (_k8s_mutated(sessionAffinity="Sticky"), "sessionAffinity 'Sticky' is not None or ClientIP"),
        (_k8s_mutated(sessionAffinityTimeout=0), "is not 1..86400 seconds"),
        (_k8s_mutated(sessionAffinity="None"), "with ClientIP affinity"),
        (_k8s_mutated(internalTrafficPolicy="Node"), "internalTrafficPolicy 'Node' is not Cluster or Local"),
        (_k8s_mutated(trafficDistribution="prefer close"), "is not a policy name"),
        (_k8s_mutated(exportedLabels={"bad key": "x"}), "exportedLabels key 'bad key' is not a label key"),
        (_k8s_mutated(exportedLabels={"a": "not a value"}), "is not a label value"),
        (_k8s_mutated(exportedLabels={"a": 1}), "exportedLabels is not a map of strings"),
        (_k8s_mutated(exportedAnnotations={f"k{i}": "v" for i in range(65)}), "more than 64 entries"),
        (_k8s_mutated(exportedAnnotations={"k": "v" * 40000}), "larger than 32768 bytes"),
        (_k8s_mutated(ports=[{"name": "http", "port": 80, "appProtocol": "no spaces"}]), "is not a protocol name"),
    ],
)
def test_kubernetes_fields_are_validated(data: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        decode_export(ServiceKey("east", "shop", "web"), data)
    assert reason in str(err.value)


def test_keys_parse_the_layout() -> None:
    assert KEYS.parse("/meshfed/v1/sites/east") == SiteKey("east")
    assert KEYS.parse("/meshfed/v1/sites/east/services/shop/web") == ServiceKey("east", "shop", "web")
    assert KEYS.parse("/meshfed/v1/sites/east/services/shop/web/endpoints/3") == ChunkKey("east", "shop", "web", 3)
    assert KEYS.parse("/meshfed/v1/mesh/vips/services/shop/web") == VipKey("shop", "web")
    assert KEYS.parse("/meshfed/v1/mesh/vips/addresses/240.240.0.1") == ClaimKey("240.240.0.1")
    assert KEYS.parse("/meshfed/v1/mesh/policies/traffic/shop/web") is None  # not a record the catalog reads
    with pytest.raises(RecordError, match="does not fit the layout"):
        KEYS.parse("/meshfed/v1/mesh/vips/x")
    with pytest.raises(RecordError, match="not an IP address"):
        KEYS.parse("/meshfed/v1/mesh/vips/addresses/nope")
    with pytest.raises(RecordError, match="chunk index"):
        KEYS.parse("/meshfed/v1/sites/east/services/shop/web/endpoints/01")
    with pytest.raises(RecordError, match="does not fit the layout"):
        KEYS.parse("/meshfed/v1/sites/east/other/x")
    with pytest.raises(RecordError, match="not a DNS label"):
        KEYS.parse("/meshfed/v1/sites/East")


def _mutated(**changes: object) -> bytes:
    obj = json.loads(encode_export(EXPORT))
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", "value is not JSON"),
        (b"[]", "not a JSON object"),
        (_mutated(schema=2), "schema 2 is not supported"),
        (_mutated(kind="Site"), "kind 'Site' where 'ServiceExport' belongs"),
        (_mutated(site="west"), "record says site 'west' but its key says 'east'"),
        (_mutated(name="api"), "record says name 'api' but its key says 'web'"),
        (_mutated(type="LoadBalancer"), "type 'LoadBalancer' is not ClusterSetIP or Headless"),
        (_mutated(ports=[{"name": "http", "port": 70000}]), "ports[0].port 70000 is not in 1..65535"),
        (_mutated(ports=[{"name": "HTTP", "port": 80}]), "ports[0].name 'HTTP' is not a port name"),
        (_mutated(ports=[{"name": "a", "port": 80}, {"name": "a", "port": 81}]), "'a' is used twice"),
        (_mutated(endpoints=[{"addresses": ["10.0.0.300"]}]), "'10.0.0.300' is not an IP address"),
        (_mutated(endpoints=[{"addresses": []}]), "endpoints[0].addresses is empty"),
        (_mutated(endpoints=[{"addresses": ["10.0.0.1"], "hostname": "Web_0"}]), "is not a DNS label"),
        (_mutated(endpoints=[{"addresses": ["10.0.0.1"], "ready": "yes"}]), "ready is not a boolean"),
        (_mutated(exportedAt="yesterday"), "exportedAt is not a number"),
    ],
)
def test_rejections_name_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        decode_export(ServiceKey("east", "shop", "web"), data)
    assert reason in str(err.value)


def test_site_name_must_match_key() -> None:
    with pytest.raises(RecordError, match="names site 'east' but its key names site 'west'"):
        decode_site(SiteKey("west"), encode_site(SITE))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_record_error(data: bytes) -> None:
    for decode in (lambda: decode_site(SiteKey("east"), data),
                   lambda: decode_export(ServiceKey("east", "shop", "web"), data)):
        try:
            decode()
        except RecordError:
            pass


@given(st.dictionaries(st.sampled_from(["schema", "kind", "site", "namespace", "name", "type", "ports",
                                        "endpoints", "exportedAt", "network", "gateways", "locality", "ipFamilies",
                                        "sessionAffinity", "sessionAffinityTimeout", "internalTrafficPolicy",
                                        "trafficDistribution", "exportedLabels", "exportedAnnotations"]),
                       _json, max_size=10))
def test_arbitrary_json_only_raises_record_error(obj: dict[str, object]) -> None:
    obj = {"schema": 1, "kind": "ServiceExport", **obj}
    try:
        decode_export(ServiceKey("east", "shop", "web"), json.dumps(obj).encode())
    except RecordError:
        pass
