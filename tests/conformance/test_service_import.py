"""Port of kubernetes-sigs/mcs-api conformance/service_import.go (@ded161a), on both topologies.

Each test names the upstream spec it ports; cluster c0 is the exporter, as upstream's clients[0].
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from tests.conformance.harness import Driver, hello_export, hello_service


def start(t: Driver, service: dict[str, Any] | None = None, export: dict[str, Any] | None = None,
          auto_export: bool = True) -> dict[str, Any]:
    """newTestDriver's JustBeforeEach: the hello service on cluster[0], exported unless told otherwise."""
    svc = t.deploy_hello(t.c0, service or hello_service())
    if auto_export:
        t.export(t.c0, export)
    return svc


def has_all(actual: dict[str, str] | None, expected: dict[str, str]) -> bool:
    return all((actual or {}).get(k) == v for k, v in expected.items())


def has_none(actual: dict[str, str] | None, expected: dict[str, str]) -> bool:
    return not any((actual or {}).get(k) == v for k, v in expected.items())


def test_a_serviceimport_exists_as_long_as_one_cluster_exports(t: Driver) -> None:
    """[Required] A ServiceImport should only exist as long as there's at least one exporting cluster."""
    start(t)
    t.await_import(t.c0)
    t.deploy_hello(t.c1, hello_service())
    t.export(t.c1)
    t.ensure_import(t.c0)
    t.unexport(t.c0)
    t.ensure_import(t.c0)  # still exported by c1
    t.unexport(t.c1)
    t.await_no_import(t.c0)


def test_only_exported_labels_and_annotations_are_propagated(t: Driver) -> None:
    """[Optional, ExportedLabels] Only labels and annotations specified as exported in the ServiceExport should
    be propagated to the ServiceImport."""
    svc = start(t, export=hello_export(exportedAnnotations={"dummy-annotation": "true"},
                                      exportedLabels={"dummy-label": "true"}))

    def verify(si: dict[str, Any]) -> None:
        meta = si["metadata"]
        assert has_all(meta.get("annotations"), {"dummy-annotation": "true"})
        assert has_none(meta.get("annotations"), svc["metadata"]["annotations"])
        assert has_all(meta.get("labels"), {"dummy-label": "true"})
        assert has_none(meta.get("labels"), svc["metadata"]["labels"])

    t.await_import(t.c0, verify)


def test_conflicting_exported_labels_report_a_conflict_on_each_export(t: Driver) -> None:
    """[Optional, ExportedLabels] A service exported on two clusters with conflicting annotations and labels should
    apply the conflict resolution policy and report a Conflict condition on each ServiceExport."""
    t.deploy_hello(t.c0, hello_service())
    first = {"dummy-annotation": "true"}, {"dummy-label": "true"}
    second = {"dummy-annotation2": "true"}, {"dummy-label2": "true"}
    t.two_clusters(hello_service(),
                   hello_export(exportedAnnotations=first[0], exportedLabels=first[1]),
                   hello_export(exportedAnnotations=second[0], exportedLabels=second[1]))
    t.await_condition(t.c0, "Conflict", "True")
    t.await_condition(t.c1, "Conflict", "True")

    def verify(si: dict[str, Any]) -> None:
        meta = si["metadata"]
        assert has_all(meta.get("annotations"), first[0])
        assert has_none(meta.get("annotations"), second[0])
        assert has_all(meta.get("labels"), first[1])
        assert has_none(meta.get("labels"), second[1])

    t.await_import(t.c0, verify)


def test_exporting_a_clusterip_service_creates_a_clustersetip_import_everywhere(t: Driver) -> None:
    """[Required, ClusterIP] Exporting a ClusterIP service should create a ServiceImport of type ClusterSetIP in
    the service's namespace in each cluster. Unexporting should delete the ServiceImport."""
    start(t)
    t.await_condition(t.c0, "Valid", "True")
    for c in t.mesh.clusters:
        assert t.await_import(c)["spec"]["type"] == "ClusterSetIP"
    t.unexport(t.c0)
    for c in t.mesh.clusters:
        t.await_no_import(c)


def test_session_affinity_matches_the_exported_service(t: Driver) -> None:
    """[Required] The SessionAffinity for a ClusterSetIP ServiceImport should match the exported service's
    SessionAffinity."""
    svc = start(t)

    def verify(si: dict[str, Any]) -> None:
        assert si["spec"].get("sessionAffinity") == svc["spec"]["sessionAffinity"] == "ClientIP"
        assert si["spec"].get("sessionAffinityConfig") == svc["spec"]["sessionAffinityConfig"]

    t.await_import(t.c0, verify)


def test_internal_traffic_policy_matches_the_exported_service(t: Driver) -> None:
    """[Required] The InternalTrafficPolicy for a ClusterSetIP ServiceImport should match the exported service's
    InternalTrafficPolicy."""
    svc = start(t, hello_service(internalTrafficPolicy="Cluster"))
    t.await_import(t.c0, lambda si: si["spec"].get("internalTrafficPolicy") == svc["spec"]["internalTrafficPolicy"]
                   or _fail(f"internalTrafficPolicy {si['spec'].get('internalTrafficPolicy')!r}"))


def test_traffic_distribution_matches_the_exported_service(t: Driver) -> None:
    """[Required] The TrafficDistribution for a ClusterSetIP ServiceImport should match the exported service's
    TrafficDistribution."""
    start(t, hello_service(trafficDistribution="PreferClose"))
    t.await_import(t.c0, lambda si: si["spec"].get("trafficDistribution") == "PreferClose"
                   or _fail(f"trafficDistribution {si['spec'].get('trafficDistribution')!r}"))


def test_an_ip_is_allocated_for_each_ip_family(t: Driver) -> None:
    """[Required] An IP should be allocated for a ClusterSetIP ServiceImport for each IP family."""
    start(t)
    si = t.await_import(t.c0, lambda si: si["spec"].get("ips") or _fail("no ips"))
    ips, families = si["spec"]["ips"], si["spec"]["ipFamilies"]
    assert len(ips) == len(families)
    for ip, family in zip(ips, families, strict=True):
        assert f"IPv{ipaddress.ip_address(ip).version}" == family


def test_ports_match_the_exported_service(t: Driver) -> None:
    """[Required] The ports for a ClusterSetIP ServiceImport should match those of the exported service."""
    svc = start(t)
    want = mcs_ports(svc["spec"]["ports"])
    t.await_import(t.c0, lambda si: mcs_ports(si["spec"]["ports"]) == want or _fail(f"ports {si['spec']['ports']}"))


def test_two_clusters_expose_the_union_of_ports_and_raise_a_conflict(t: Driver) -> None:
    """[Required] A ClusterIP service exported on two clusters should expose the union of the constituent service
    ports and raise a conflict."""
    svc = t.deploy_hello(t.c0, hello_service())
    stcp = {"name": "stcp", "port": 142, "protocol": "SCTP"}
    t.two_clusters(hello_service(ports=[svc["spec"]["ports"][0], stcp]))
    t.await_condition(t.c0, "Conflict", "True")
    t.await_condition(t.c1, "Conflict", "True")
    want = mcs_ports([*svc["spec"]["ports"], stcp])
    t.await_import(t.c0, lambda si: mcs_ports(si["spec"]["ports"]) == want or _fail(f"ports {si['spec']['ports']}"))


def test_two_clusters_with_conflicting_ports_keep_the_oldest_and_report_a_conflict(t: Driver) -> None:
    """[Required] A ClusterIP service exported on two clusters with conflicting ports should apply the conflict
    resolution policy and report a Conflict condition on each ServiceExport."""
    svc = t.deploy_hello(t.c0, hello_service())
    t.two_clusters(hello_service(ports=[{**svc["spec"]["ports"][0], "port": 43}]))
    t.await_condition(t.c0, "Conflict", "True")
    t.await_condition(t.c1, "Conflict", "True")
    want = mcs_ports(svc["spec"]["ports"])
    t.await_import(t.c0, lambda si: mcs_ports(si["spec"]["ports"]) == want or _fail(f"ports {si['spec']['ports']}"))
    assert "PortConflict" in t.condition(t.c1, "Conflict")["reason"]  # type: ignore[index]


def test_exporting_a_headless_service_creates_a_headless_import_everywhere(t: Driver) -> None:
    """[Required, Headless] Exporting a headless service should create a ServiceImport of type Headless in the
    service's namespace in each cluster. Unexporting should delete the ServiceImport."""
    start(t, hello_service(clusterIP="None"))
    for c in t.mesh.clusters:
        assert t.await_import(c)["spec"]["type"] == "Headless"
    t.unexport(t.c0)
    for c in t.mesh.clusters:
        t.await_no_import(c)


def test_no_clusterset_ip_for_a_headless_import(t: Driver) -> None:
    """[Required, Headless] No clusterset IP should be allocated for a Headless ServiceImport."""
    start(t, hello_service(clusterIP="None"))
    t.await_import(t.c0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert not (t.get_import(t.c0) or {}).get("spec", {}).get("ips")
        time.sleep(1)


def test_exporting_an_externalname_service_is_not_valid(t: Driver) -> None:
    """[Required, ExternalName] Exporting an ExternalName service should set ServiceExport Valid condition to
    False."""
    spec = {k: v for k, v in hello_service()["spec"].items() if k != "ipFamilyPolicy"}
    start(t, {**hello_service(), "spec": {**spec, "type": "ExternalName", "externalName": "example.com"}})
    t.await_condition(t.c0, "Valid", "False")
    t.ensure_no_import(t.c0)


def test_conflicting_headlessness_keeps_the_oldest_type_and_reports_a_conflict(t: Driver) -> None:
    """[Required] A service exported on two clusters with conflicting headlessness should apply the conflict
    resolution policy and report a Conflict condition on the ServiceExport."""
    t.deploy_hello(t.c0, hello_service())
    t.two_clusters(hello_service(clusterIP="None"))
    t.await_condition(t.c0, "Conflict", "True")
    t.await_condition(t.c1, "Conflict", "True")
    for c in t.mesh.clusters:
        assert t.await_import(c)["spec"]["type"] == "ClusterSetIP"


def mcs_ports(ports: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """toMCSPorts/sortMCSPorts: name, protocol, port and appProtocol, by name."""
    return sorted((p.get("name", "").lower(), p.get("protocol", "TCP"), p["port"], p.get("appProtocol"))
                  for p in ports)


def _fail(why: str) -> bool:
    raise AssertionError(why)
