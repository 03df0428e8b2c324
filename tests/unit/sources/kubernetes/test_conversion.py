"""Kubernetes objects to registry exports, and ServiceExport status conditions (pure)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.records import Endpoint, EndpointPort, Locality, Protocol, ServicePort, ServiceType
from federation.core.view import Conflict
from federation.devkit.objects import endpoint, endpointslice, service, serviceexport
from federation.sources.kubernetes.conversion import (
    Invalid,
    MeshState,
    convert,
    convert_all,
    export_conditions,
    format_time,
    parse_time,
    same_conditions,
)

OWNED = ("multicluster.meshfed.io/managed-by", "meshfed")
LOC = Locality("eu-west", "z0")


def test_exported_service_becomes_a_registry_export() -> None:
    exports = convert([service()], [endpointslice()], [serviceexport()], "east", LOC)
    assert len(exports) == 1
    e = exports[0]
    assert (e.site, e.namespace, e.name, e.type) == ("east", "shop", "web", ServiceType.CLUSTER_SET_IP)
    assert e.ports == (ServicePort("http", 80, Protocol.TCP),)
    assert e.endpoints == (
        Endpoint(("10.244.1.5",), (EndpointPort("http", 8080),), ready=True, locality=Locality("eu-west", "z1")),
    )
    assert e.exported_at == parse_time("2024-05-01T10:00:00Z") == 1714557600.0


def test_service_without_serviceexport_is_not_exported() -> None:
    assert convert([service()], [endpointslice()], [], "east") == []


def test_readiness_follows_conditions_and_nil_ready_means_ready() -> None:
    eps = [endpoint("10.0.0.1", ready=False), endpoint("10.0.0.2", ready=None),
           endpoint("10.0.0.3", ready=True, terminating=True)]
    [e] = convert([service()], [endpointslice(endpoints=eps)], [serviceexport()], "east")
    assert [(x.addresses[0], x.ready) for x in e.endpoints] == [
        ("10.0.0.1", False), ("10.0.0.2", True), ("10.0.0.3", False)]


def test_headless_keeps_hostnames_and_drops_duplicates() -> None:
    eps = [endpoint("10.0.0.1", hostname="db-0"), endpoint("10.0.0.2", hostname="db-0"),
           endpoint("10.0.0.3", hostname="Not_A_Label")]
    [e] = convert([service(name="db", headless=True)], [endpointslice(service_name="db", endpoints=eps)],
                  [serviceexport(name="db")], "east")
    assert e.type is ServiceType.HEADLESS
    assert [x.hostname for x in e.endpoints] == ["db-0", None, None]


def test_endpoints_from_several_slices_are_merged_without_duplicates() -> None:
    slices = [endpointslice(name="web-1", endpoints=[endpoint("10.0.0.1")]),
              endpointslice(name="web-2", endpoints=[endpoint("10.0.0.1"), endpoint("10.0.0.2")]),
              endpointslice(name="web-3", endpoints=[endpoint("web.example")], address_type="FQDN"),
              endpointslice(service_name="other")]
    [e] = convert([service()], slices, [serviceexport()], "east")
    assert [x.addresses for x in e.endpoints] == [("10.0.0.1",), ("10.0.0.2",)]


def test_unnamed_single_port_gets_a_name() -> None:
    svc = service(ports=[{"port": 53, "protocol": "UDP", "targetPort": 5353}])
    sl = endpointslice(ports=[{"name": "", "port": 5353, "protocol": "UDP"}])
    [e] = convert([svc], [sl], [serviceexport()], "east")
    assert e.ports == (ServicePort("udp-53", 53, Protocol.UDP),)
    assert e.endpoints[0].ports == (EndpointPort("udp-53", 5353),)


def test_invalid_exports_say_why() -> None:
    out = convert_all(
        [service(name="ext", type="ExternalName"), service(name="bad", ports=[{"name": "x", "port": 0}])],
        [],
        [serviceexport(name="ext"), serviceexport(name="gone"), serviceexport(name="bad")],
        "east",
    )
    assert out.exports == []
    assert out.invalid[("shop", "gone")].reason == "NoService"
    assert out.invalid[("shop", "ext")].reason == "InvalidServiceType"
    assert out.invalid[("shop", "bad")].reason == "InvalidService"
    assert "not in 1..65535" in out.invalid[("shop", "bad")].message


def test_owned_derived_services_are_never_exported() -> None:
    svc = service(labels={OWNED[0]: OWNED[1]})
    assert convert([svc], [], [serviceexport()], "east", owned=OWNED) == []


IN_MESH = MeshState(synced=True, exported=True)


def test_conditions_valid_ready_and_no_conflict() -> None:
    conds = export_conditions([], None, IN_MESH, now=1714557600.0, generation=2)
    by = {c["type"]: c for c in conds}
    assert [c["type"] for c in conds] == ["Valid", "Ready", "Conflict"]
    assert by["Valid"]["status"] == "True"
    assert (by["Ready"]["status"], by["Ready"]["reason"]) == ("True", "Exported")
    assert by["Conflict"] == {"type": "Conflict", "status": "False", "reason": "NoConflicts",
                              "message": by["Conflict"]["message"], "lastTransitionTime": "2024-05-01T10:00:00Z",
                              "observedGeneration": 2}


def test_conditions_conflict_reason_follows_kinds_of_disagreement() -> None:
    ports = export_conditions([], None, MeshState(True, True, Conflict("east", "ports differ", "ports", ("ports",))), 0)
    types = export_conditions([], None, MeshState(True, True, Conflict("east", "type x", "type", ("type",))), 0)
    both = export_conditions([], None, MeshState(True, True, Conflict("e", "x", "labels", ("labels", "annotations"))), 0)
    assert (ports[2]["status"], ports[2]["reason"], ports[2]["message"]) == ("True", "PortConflict", "ports differ")
    assert types[2]["reason"] == "TypeConflict"
    assert both[2]["reason"] == "LabelsConflict,AnnotationsConflict"  # mcs-api: reasons joined by commas


def test_conditions_pending_until_the_export_is_in_the_registry_and_failed_for_invalid() -> None:
    for mesh in (MeshState(), MeshState(synced=True)):
        pending = export_conditions([], None, mesh, now=0)
        assert [(c["status"], c["reason"]) for c in pending[1:]] == [("Unknown", "Pending"), ("Unknown", "Pending")]
    invalid = export_conditions([], Invalid("NoService", "no svc"), IN_MESH, now=0)
    assert [(c["status"], c["reason"]) for c in invalid] == [("False", "NoService"), ("False", "Failed"),
                                                             ("Unknown", "Pending")]


def test_transition_time_kept_while_status_unchanged() -> None:
    first = export_conditions([], None, IN_MESH, now=1000.0)
    again = export_conditions(first, None, IN_MESH, now=2000.0)
    assert again == first
    assert same_conditions(first, again)
    flipped = export_conditions(first, None, MeshState(True, True, Conflict("a", "type x", "type", ("type",))),
                                now=2000.0)
    assert flipped[2]["lastTransitionTime"] == format_time(2000.0)
    assert flipped[0]["lastTransitionTime"] == format_time(1000.0)
    assert not same_conditions(first, flipped)


def test_service_fields_and_exported_metadata_are_carried() -> None:
    svc = service(ports=[{"name": "tcp", "port": 42, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}])
    svc["spec"].update({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
                        "ipFamilies": ["IPv6", "IPv4"], "internalTrafficPolicy": "Local",
                        "trafficDistribution": "PreferClose"})
    se = {**serviceexport(), "spec": {"exportedLabels": {"tier": "front"}, "exportedAnnotations": {"a/b": "c"}}}
    [e] = convert([svc], [], [se], "east")
    assert e.ports == (ServicePort("tcp", 42, Protocol.TCP, "kubernetes.io/h2c"),)
    assert (e.session_affinity, e.session_affinity_timeout) == ("ClientIP", 10)
    assert e.ip_families == ("IPv6", "IPv4")
    assert (e.internal_traffic_policy, e.traffic_distribution) == ("Local", "PreferClose")
    assert (e.exported_labels, e.exported_annotations) == ((("tier", "front"),), (("a/b", "c"),))
    [plain] = convert([service()], [], [serviceexport()], "east")
    assert (plain.exported_labels, plain.session_affinity, plain.traffic_distribution) == ((), "None", None)


def test_bad_exported_labels_make_the_serviceexport_invalid() -> None:
    se = {**serviceexport(), "spec": {"exportedLabels": {"not a key": "x"}}}
    out = convert_all([service()], [], [se], "east")
    invalid = out.invalid[("shop", "web")]
    assert invalid.reason == "InvalidServiceExport"
    assert "spec.exportedLabels key 'not a key' is not a label key" in invalid.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(["", "None", "TCP", "x", "10.0.0.1", "web",
                                                                            "shop", "IPv4", "db-0", "2024-05-01T10:00:00Z"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(
        ["metadata", "name", "namespace", "labels", "spec", "ports", "port", "protocol", "clusterIP", "type",
         "endpoints", "addresses", "conditions", "ready", "hostname", "zone", "addressType", "creationTimestamp",
         "kubernetes.io/service-name"]), children, max_size=5),
    max_leaves=20,
)


@given(st.lists(json_values, max_size=3), st.lists(json_values, max_size=3), st.lists(json_values, max_size=3))
@settings(max_examples=300, deadline=None)
def test_malformed_objects_never_raise(services: list[Any], slices: list[Any], exports: list[Any]) -> None:
    services = [*services, service()]
    slices = [*slices, endpointslice()]
    exports = [*exports, serviceexport()]
    out = convert_all(services, slices, exports, "east")  # type: ignore[arg-type]
    for conds in (exports, [e for e in exports if isinstance(e, dict)]):
        export_conditions(conds, None, IN_MESH, 0.0)  # type: ignore[arg-type]
        same_conditions(conds, conds)  # type: ignore[arg-type]
    assert all(e.site == "east" for e in out.exports)
