"""Endpoint labels in the registry record: optional, validated like Kubernetes labels, and carried by the
Kubernetes and VM sources."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.codec import decode_export, encode_export
from federation.core.errors import RecordError
from federation.core.keys import ServiceKey
from federation.core.records import Endpoint, ServiceExport, ServicePort, labels_of, validate_export
from federation.devkit.objects import endpoint, endpointslice, meta, service, serviceexport
from federation.sources.kubernetes.conversion import ENDPOINT_LABELS_ANNOTATION, convert
from federation.sources.vm.checking import CheckState
from federation.sources.vm.checking import convert as vm_convert
from federation.sources.vm.settings import PortSettings, VmServiceSettings

KEY = ServiceKey("east", "shop", "web")


def export_with(labels: dict[str, str]) -> ServiceExport:
    return ServiceExport("east", "shop", "web", (ServicePort("http", 80),),
                         endpoints=(Endpoint(("10.0.0.1",), labels=labels_of(labels)),))


def test_labels_round_trip_and_records_without_them_still_read() -> None:
    e = export_with({"version": "v2", "app.kubernetes.io/part-of": "shop"})
    assert decode_export(KEY, encode_export(e)) == e
    assert e.endpoints[0].label("version") == "v2"
    old = json.loads(encode_export(export_with({})))
    assert "labels" not in old["endpoints"][0]  # a record without labels is what older agents write
    assert decode_export(KEY, json.dumps(old).encode()).endpoints[0].labels == ()


@pytest.mark.parametrize(("labels", "reason"), [
    ({"Bad Key": "x"}, "name must be 1-63"),
    ({"-x": "x"}, "name must be 1-63"),
    ({"UPPER.example/x": "x"}, "prefix 'UPPER.example' is not a DNS subdomain"),
    ({"version": "v2!"}, "must be at most 63"),
    ({"version": "a" * 64}, "must be at most 63"),
    ({f"k{i}": "v" for i in range(17)}, "at most 16"),
])
def test_bad_labels_are_refused_with_the_field(labels: dict[str, str], reason: str) -> None:
    obj = json.loads(encode_export(export_with({})))
    obj["endpoints"][0]["labels"] = labels
    with pytest.raises(RecordError, match=r"endpoints\[0\]\.labels") as info:
        decode_export(KEY, json.dumps(obj).encode())
    assert reason in str(info.value)


def test_labels_that_are_not_a_mapping_of_strings_are_refused() -> None:
    obj = json.loads(encode_export(export_with({})))
    for bad in (["version"], {"version": 2}, "v2"):
        obj["endpoints"][0]["labels"] = bad
        with pytest.raises(RecordError, match="labels is not a mapping of strings"):
            decode_export(KEY, json.dumps(obj).encode())


@given(st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9._-]{0,20}[a-z0-9]\Z"),
                       st.from_regex(r"\A([A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?)?\Z"), max_size=16))
def test_any_valid_labels_round_trip(labels: dict[str, str]) -> None:
    e = export_with(labels)
    validate_export(e)
    assert decode_export(KEY, encode_export(e)) == e


def pod(name: str, labels: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta("shop", name, labels=labels)}


def test_kubernetes_endpoints_carry_the_pod_labels_the_serviceexport_names() -> None:
    se = serviceexport()
    se["metadata"]["annotations"] = {ENDPOINT_LABELS_ANNOTATION: "version, track,Bad Key"}
    pods = [pod("pod-10.0.0.1", {"version": "v1", "track": "stable", "app": "web", "pod-template-hash": "x"}),
            pod("pod-10.0.0.2", {"version": "v2", "track": "bad value!"})]
    slices = [endpointslice(endpoints=[endpoint("10.0.0.1"), endpoint("10.0.0.2"), endpoint("10.0.0.3")])]
    [e] = convert([service()], slices, [se], "east", pods=pods)
    validate_export(e)
    assert [x.labels for x in e.endpoints] == [
        (("track", "stable"), ("version", "v1")),  # only the named keys, never app or pod-template-hash
        (("version", "v2"),),  # an invalid value is dropped, the endpoint kept
        (),  # no such pod (yet): no labels
    ]


def test_kubernetes_endpoints_carry_no_labels_unless_asked() -> None:
    pods = [pod("pod-10.244.1.5", {"version": "v1"})]
    [e] = convert([service()], [endpointslice()], [serviceexport()], "east", pods=pods)
    assert e.endpoints[0].labels == ()


def test_vm_service_labels_become_endpoint_labels() -> None:
    svc = VmServiceSettings("shop", "web", (PortSettings("http", 8080),), labels=labels_of({"version": "v2"}))
    [e] = vm_convert("vm-a", [svc], {("shop", "web"): "198.18.0.2"}, {("shop", "web"): CheckState()})
    assert e.endpoints[0].labels == (("version", "v2"),)


def test_vm_config_labels_are_read_and_bad_ones_refused_with_the_field() -> None:
    from federation.core.errors import ConfigError
    from federation.core.settings import read
    from federation.sources.vm.settings import VmSettings

    service = {"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 8080}]}
    s = read(VmSettings, {"services": [{**service, "labels": {"version": "v2", "track": "canary"}}]}, "vm")
    assert s.services[0].labels == (("track", "canary"), ("version", "v2"))
    assert read(VmSettings, {"services": [service]}, "vm").services[0].labels == ()
    for bad, reason in (({"version": "v2!"}, "must be at most 63"), (["version"], "must be a mapping"),
                        ({"version": 2}, "must be a mapping")):
        with pytest.raises(ConfigError, match=r"vm\.services\[0\]\.labels: ") as info:
            read(VmSettings, {"services": [{**service, "labels": bad}]}, "vm")
        assert reason in str(info.value)
