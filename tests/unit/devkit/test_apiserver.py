"""The development API server's pure parts: patches, selectors, schemas, tables, protobuf bodies, versions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.devkit.apiserver import protobuf
from federation.devkit.apiserver.patching import PatchError, json_patch, merge_patch, strategic_merge_patch
from federation.devkit.apiserver.resources import CrdError, from_crd, version_rank
from federation.devkit.apiserver.schema import prune, validate
from federation.devkit.apiserver.selectors import SelectorError, field_selector, label_selector
from federation.devkit.apiserver.tables import human_duration, jsonpath, wants_table
from federation.devkit.serviceproxy import desired

SVC = {"metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
       "spec": {"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}], "selector": {"app": "web"}}}


def test_strategic_merge_patch_as_kubectl_apply_sends_it() -> None:
    # kubectl apply, port 80 changed to 8080: the list is merged by port, the old entry deleted, order set.
    patch = {"spec": {"$setElementOrder/ports": [{"port": 8080}, {"port": 9090}],
                      "ports": [{"name": "http", "port": 8080}, {"$patch": "delete", "port": 80}]}}
    out = strategic_merge_patch(SVC, patch)
    assert out["spec"]["ports"] == [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]
    assert out["spec"]["selector"] == {"app": "web"}
    assert strategic_merge_patch(SVC, {"spec": {"selector": {"$patch": "replace", "v": "2"}}})["spec"][
        "selector"] == {"v": "2"}
    assert strategic_merge_patch(SVC, {"metadata": {"labels": {"tier": None}}})["metadata"]["labels"] == {"app": "web"}
    kept = strategic_merge_patch(SVC, {"spec": {"$retainKeys": ["ports"], "ports": SVC["spec"]["ports"]}})
    assert list(kept["spec"]) == ["ports"]
    with pytest.raises(PatchError, match="merge key: port"):
        strategic_merge_patch(SVC, {"spec": {"ports": [{"name": "x"}]}})
    assert SVC["spec"]["ports"][0]["port"] == 80  # the input is never changed


def test_merge_and_json_patches() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}
    doc = {"spec": {"ips": ["10.0.0.1"]}}
    out = json_patch(doc, [{"op": "add", "path": "/spec/ips/-", "value": "fd00::1"},
                           {"op": "replace", "path": "/spec/ips/0", "value": "10.0.0.2"},
                           {"op": "test", "path": "/spec/ips/1", "value": "fd00::1"}])
    assert out == {"spec": {"ips": ["10.0.0.2", "fd00::1"]}}
    with pytest.raises(PatchError, match="does not exist"):
        json_patch(doc, [{"op": "remove", "path": "/spec/nope"}])


def test_label_and_field_selectors() -> None:
    assert label_selector("app=web,tier in (front, back)")(SVC)
    assert label_selector("!missing,app")(SVC)
    assert not label_selector("tier notin (front)")(SVC)
    assert not label_selector("app!=web")(SVC)
    assert field_selector("metadata.name=web")(SVC)
    assert not field_selector("metadata.name!=web")(SVC)
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.type"):
        field_selector("spec.type=ClusterIP")
    with pytest.raises(SelectorError):
        label_selector("app in web")


SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "metadata": {"type": "object"},
    "spec": {"type": "object", "required": ["type"], "properties": {
        "type": {"type": "string", "enum": ["ClusterSetIP", "Headless"]},
        "ips": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }}}}


def test_pruning_keeps_metadata_and_what_the_schema_declares() -> None:
    obj = {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "labels": {"k": "v"}},
           "spec": {"type": "Headless", "nope": 1, "extra": {"anything": [1]}, "labels": {"a": "b"}}, "status": {}}
    pruned, dropped = prune(obj, SCHEMA)
    assert dropped == ["spec.nope", "status"]
    assert pruned["metadata"] == obj["metadata"]
    assert pruned["spec"] == {"type": "Headless", "extra": {"anything": [1]}, "labels": {"a": "b"}}


def test_validation_words_errors_as_the_api_server() -> None:
    assert validate({"spec": {"type": "Headless"}}, SCHEMA) == []
    errors = validate({"spec": {"type": "LoadBalancer", "ips": ["a", "b", "c"], "labels": {"a": 1}}}, SCHEMA)
    assert errors[0].startswith("spec.type: Unsupported value: 'LoadBalancer'")
    assert any(e.startswith("spec.ips: Too many: 3: must have at most 2 items") for e in errors)
    assert any(e.startswith("spec.labels.a: Invalid value") for e in errors)
    assert validate({"spec": {}}, SCHEMA) == ["spec.type: Required value"]


def test_tables_jsonpath_and_ages() -> None:
    conditions = {"status": {"conditions": [{"type": "Valid", "status": "True"}, {"type": "Ready", "status": "False"}]}}
    assert jsonpath(conditions, '.status.conditions[?(@.type=="Ready")].status') == ["False"]
    assert jsonpath(conditions, ".status.conditions[*].type") == ["Valid", "Ready"]
    assert jsonpath(conditions, ".status.conditions[-1].type") == ["Ready"]
    assert jsonpath(conditions, ".spec.nothing") == []
    assert [human_duration(s) for s in (5, 150, 700, 3 * 3600 + 60, 30 * 3600, 3 * 86400, 900 * 86400)] == [
        "5s", "2m30s", "11m", "3h1m", "30h", "3d", "2y170d"]
    assert wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not wants_table("application/json")


def _field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def test_protobuf_service_as_kubectl_create_sends_it() -> None:
    port = _field(1, b"http") + _field(2, b"TCP") + _field(3, 80) + _field(4, _field(1, 0) + _field(2, 8080))
    spec = _field(1, port) + _field(2, _field(1, b"app") + _field(2, b"web")) + _field(4, b"ClusterIP")
    raw = _field(1, _field(1, b"web") + _field(11, _field(1, b"app") + _field(2, b"web"))) + _field(2, spec)
    body = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Service")) + _field(2, raw)
    assert protobuf.decode(body) == {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                 "selector": {"app": "web"}, "type": "ClusterIP"}}
    with pytest.raises(protobuf.ProtobufError, match="kind 'Pod'"):
        protobuf.decode(protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Pod")))


@given(st.binary(max_size=200))
def test_protobuf_bytes_only_raise_protobuf_error(data: bytes) -> None:
    for body in (data, protobuf.MAGIC + data):
        try:
            protobuf.decode(body)
        except protobuf.ProtobufError:
            pass


def test_versions_and_crds() -> None:
    assert sorted(["v1alpha1", "v1", "v1beta1", "v2beta1", "v1alpha2"], key=version_rank) == [
        "v1", "v2beta1", "v1beta1", "v1alpha2", "v1alpha1"]
    with pytest.raises(CrdError, match=r"must be spec\.names\.plural"):
        from_crd({"metadata": {"name": "x"}, "spec": {"group": "g.io", "names": {"plural": "ps", "kind": "P"}}})


def test_the_service_proxy_sends_each_port_to_its_slices_ready_endpoints() -> None:
    svc = {"metadata": {"namespace": "ns", "name": "web"},
           "spec": {"clusterIPs": ["127.96.0.10"], "sessionAffinity": "ClientIP",
                    "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}
    sl = {"metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"name": "http", "port": 8080}],
          "endpoints": [{"addresses": ["127.0.0.5"]}, {"addresses": ["127.0.0.6"], "conditions": {"ready": False}}]}
    assert desired([svc], [sl]) == {("127.96.0.10", 80): ([("127.0.0.5", 8080)], True)}


def test_a_schema_pattern_ending_in_dollar_refuses_a_trailing_newline_as_go_does() -> None:
    schema = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ms|h|m|s))+$"}
    assert validate("5s", schema) == []
    assert validate("5s\n", schema) != []  # Python's `$` alone would take it; the real apiserver does not
    assert validate("a$", {"type": "string", "pattern": r"^a\$$"}) == []  # an escaped `$` stays a dollar sign
