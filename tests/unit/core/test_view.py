"""The MCS conflict rules of `resolve`: union of ports, the oldest export wins, every export is told."""

from __future__ import annotations

import dataclasses

from federation.core.records import Protocol, ServiceExport, ServicePort, ServiceType
from federation.core.view import resolve
from tests.util import export

TCP42, UDP42 = ServicePort("tcp", 42), ServicePort("udp", 42, Protocol.UDP)


def k8s(site: str, at: float, **fields: object) -> ServiceExport:
    base = dataclasses.replace(export(site, ports=(TCP42, UDP42)), exported_at=at, ip_families=("IPv4",),
                               session_affinity="ClientIP", session_affinity_timeout=10,
                               internal_traffic_policy="Cluster", exported_labels=(), exported_annotations=())
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_agreeing_exports_have_no_conflict_and_carry_their_fields() -> None:
    svc = resolve([k8s("c0", 1), k8s("c1", 2)])
    assert svc.conflicts == ()
    assert svc.ports == (TCP42, UDP42)
    assert svc.serving == {"tcp": frozenset({"c0", "c1"}), "udp": frozenset({"c0", "c1"})}
    assert (svc.session_affinity, svc.session_affinity_timeout, svc.internal_traffic_policy) == ("ClientIP", 10,
                                                                                                 "Cluster")
    assert svc.ip_families == ("IPv4",)


def test_union_of_ports_with_a_conflict_on_both() -> None:
    # upstream service_import.go: "should expose the union of the constituent service ports and raise a conflict"
    stcp = ServicePort("stcp", 142, Protocol.SCTP)
    svc = resolve([k8s("c1", 2, ports=(TCP42, stcp)), k8s("c0", 1)])
    assert sorted(svc.ports, key=lambda p: p.name) == [stcp, TCP42, UDP42]
    assert svc.serving == {"tcp": frozenset({"c0", "c1"}), "udp": frozenset({"c0"}), "stcp": frozenset({"c1"})}
    assert {c.site: c.kinds for c in svc.conflicts} == {"c0": ("ports",), "c1": ("ports",)}
    assert "stcp/142/SCTP come from other sites" in svc.conflict_of("c0").reason  # type: ignore[union-attr]


def test_a_port_name_with_another_number_gets_no_traffic() -> None:
    # connectivity.go: same port name, different numbers: only the cluster that exposes the port gets traffic
    svc = resolve([k8s("c0", 1), k8s("c1", 2, ports=(ServicePort("tcp", 4242),))])
    assert svc.ports == (TCP42, UDP42)
    assert svc.serves("c0", "tcp")
    assert not svc.serves("c1", "tcp")
    c1 = svc.conflict_of("c1")
    assert c1 is not None
    assert "ports tcp/4242/TCP differ from tcp/42/TCP exported first by c0" in c1.reason
    assert svc.conflict_of("c0") is not None


def test_type_conflict_keeps_the_oldest_type_and_tells_both() -> None:
    svc = resolve([k8s("c1", 2, type=ServiceType.HEADLESS), k8s("c0", 1)])
    assert svc.type is ServiceType.CLUSTER_SET_IP
    assert svc.sites == ("c0",)
    assert {c.site: c.kind for c in svc.conflicts} == {"c0": "type", "c1": "type"}
    assert "not used" in svc.conflict_of("c1").reason  # type: ignore[union-attr]


def test_labels_and_annotations_come_from_the_oldest_and_conflict() -> None:
    a = k8s("c0", 1, exported_labels=(("dummy-label", "true"),), exported_annotations=(("dummy-annotation", "true"),))
    b = k8s("c1", 2, exported_labels=(("dummy-label2", "true"),), exported_annotations=(("dummy-annotation2", "x"),))
    svc = resolve([b, a])
    assert svc.labels == (("dummy-label", "true"),)
    assert svc.annotations == (("dummy-annotation", "true"),)
    assert {c.site: c.kinds for c in svc.conflicts} == {"c0": ("labels", "annotations"),
                                                       "c1": ("labels", "annotations")}


def test_a_site_that_cannot_express_a_field_neither_sets_nor_contradicts_it() -> None:
    vm = dataclasses.replace(export("vm", ports=(TCP42, UDP42)), exported_at=0.5)  # oldest, but no k8s fields
    svc = resolve([vm, k8s("c0", 1, traffic_distribution="PreferClose")])
    assert svc.conflicts == ()
    assert (svc.session_affinity, svc.traffic_distribution) == ("ClientIP", "PreferClose")
    other = resolve([vm, k8s("c0", 1), k8s("c1", 2, session_affinity="None", session_affinity_timeout=None)])
    assert {c.site: c.kinds for c in other.conflicts} == dict.fromkeys(("vm", "c0", "c1"), ("sessionAffinity",))
    assert other.session_affinity == "ClientIP"
