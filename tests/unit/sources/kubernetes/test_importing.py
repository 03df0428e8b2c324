"""The import plan: ServiceImports, derived Services and EndpointSlices from the mesh view (pure)."""

from __future__ import annotations

import dataclasses
from typing import Any

from federation.core.endpoints import EndpointAllocator
from federation.core.records import Endpoint, EndpointPort, ServiceExport, ServicePort, ServiceType, Site
from federation.core.view import MeshView
from federation.sources.kubernetes.desired import (
    ENDPOINT_OF_LABEL,
    MCS_SERVICE_LABEL,
    SLICE_SERVICE_LABEL,
    SOURCE_CLUSTER_LABEL,
)
from federation.sources.kubernetes.importing import (
    Create,
    Delete,
    Owned,
    Patch,
    derived_name,
    plan_imports,
)
from tests.util import export, site

OWNED = ("multicluster.meshfed.io/managed-by", "meshfed")
HERE = site("here", network="net-a")


def egress(ns: str, name: str, port: str) -> tuple[str, int] | None:
    return ("10.244.0.7", 20000 + len(port))


def no_egress(ns: str, name: str, port: str) -> tuple[str, int] | None:
    return None


def view(*exports: ServiceExport, sites: tuple[Site, ...] = ()) -> MeshView:
    all_sites = {s.name: s for s in (HERE, site("near", "net-a"), site("far", "net-b"), *sites)}
    return MeshView(all_sites, {(e.site, e.namespace, e.name): e for e in exports})


def apply(ops: list[Any], owned: Owned) -> Owned:
    """What the API server would hold after the ops (enough for the plan's fields)."""
    state = {r: dict(owned.of(r)) for r in ("services", "serviceimports", "endpointslices")}
    for op in ops:
        if isinstance(op, Create):
            m = op.obj["metadata"]
            # The API server drops status on create where status is a subresource (ServiceImport).
            state[op.resource][(m["namespace"], m["name"])] = {k: v for k, v in op.obj.items() if k != "status"}
        elif isinstance(op, Delete):
            del state[op.resource][(op.namespace, op.name)]
        else:
            obj = dict(state[op.resource][(op.namespace, op.name)])
            for k, v in op.body.items():
                obj[k] = {**obj.get(k, {}), **v} if k == "metadata" else v
            state[op.resource][(op.namespace, op.name)] = obj
    return Owned(state["services"], state["serviceimports"], state["endpointslices"])


def creates(ops: list[Any], resource: str) -> list[dict[str, Any]]:
    return [op.obj for op in ops if isinstance(op, Create) and op.resource == resource]


def test_same_network_endpoints_are_used_directly() -> None:
    ops = plan_imports(view(export("near", addresses=("10.1.0.5", "10.1.0.6"))), HERE, Owned(), egress, OWNED)
    [svc] = creates(ops, "services")
    [imp] = creates(ops, "serviceimports")
    [sl] = creates(ops, "endpointslices")
    assert svc["metadata"]["name"] == derived_name("web")
    assert "selector" not in svc["spec"]
    assert svc["metadata"]["labels"][OWNED[0]] == OWNED[1]
    assert imp["spec"] == {"type": "ClusterSetIP", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                           "ips": [], "ipFamilies": []}  # until the derived Service has its ClusterIP
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == svc["metadata"]["name"]
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "agent.meshfed.io"
    assert sl["metadata"]["labels"]["multicluster.kubernetes.io/service-name"] == "web"
    assert sl["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"] == "near"
    assert [e["addresses"] for e in sl["endpoints"]] == [["10.1.0.5"], ["10.1.0.6"]]
    assert sl["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_other_network_goes_through_local_egress() -> None:
    ops = plan_imports(view(export("far", addresses=("10.9.0.5",))), HERE, Owned(), egress, OWNED)
    [sl] = creates(ops, "endpointslices")
    assert sl["endpoints"] == [{"addresses": ["10.244.0.7"], "conditions": {"ready": True}}]
    assert sl["ports"] == [{"name": "http", "port": 20004, "protocol": "TCP"}]


def test_no_egress_listener_means_no_remote_endpoints_but_import_stays() -> None:
    ops = plan_imports(view(export("far")), HERE, Owned(), no_egress, OWNED)
    assert creates(ops, "endpointslices") == []
    assert len(creates(ops, "serviceimports")) == 1


def test_endpoint_target_ports_split_slices() -> None:
    e = ServiceExport("near", "shop", "web", (ServicePort("http", 80),), endpoints=(
        Endpoint(("10.1.0.5",), (EndpointPort("http", 8080),)), Endpoint(("10.1.0.6",)), Endpoint(("fd00::6",))))
    ops = plan_imports(view(e), HERE, Owned(), egress, OWNED)
    slices = creates(ops, "endpointslices")
    assert sorted((s["addressType"], s["ports"][0]["port"]) for s in slices) == [
        ("IPv4", 80), ("IPv4", 8080), ("IPv6", 80)]
    assert len({s["metadata"]["name"] for s in slices}) == 3


def test_headless_import_keeps_hostnames() -> None:
    e = ServiceExport("near", "shop", "db", (ServicePort("pg", 5432),), type=ServiceType.HEADLESS,
                      endpoints=(Endpoint(("10.1.0.5",), hostname="db-0"),))
    ops = plan_imports(view(e), HERE, Owned(), egress, OWNED)
    [svc] = creates(ops, "services")
    assert svc["spec"]["clusterIP"] == "None"
    assert creates(ops, "endpointslices")[0]["endpoints"][0]["hostname"] == "db-0"
    assert creates(ops, "serviceimports")[0]["spec"]["type"] == "Headless"


def test_converged_state_plans_nothing_and_changes_patch_only_what_changed() -> None:
    v = view(export("near", addresses=("10.1.0.5",)))
    state = apply(plan_imports(v, HERE, Owned(), egress, OWNED), Owned())
    [status] = plan_imports(v, HERE, state, egress, OWNED)
    assert isinstance(status, Patch)
    assert (status.resource, status.subresource, status.body) == (
        "serviceimports", "status", {"status": {"clusters": [{"cluster": "near"}]}})
    state = apply([status], state)
    assert plan_imports(v, HERE, state, egress, OWNED) == []
    changed = view(export("near", addresses=("10.1.0.5",), ready=False))
    ops = plan_imports(changed, HERE, state, egress, OWNED)
    assert [(type(op).__name__, op.resource) for op in ops] == [("Patch", "endpointslices")]
    assert isinstance(ops[0], Patch)
    assert ops[0].body["endpoints"][0]["conditions"] == {"ready": False}


def test_allocated_cluster_ip_goes_into_serviceimport() -> None:
    v = view(export("near"))
    state = apply(plan_imports(v, HERE, Owned(), egress, OWNED), Owned())
    key = ("shop", derived_name("web"))
    svc = state.services[key]
    services = {key: {**svc, "spec": {**svc["spec"], "clusterIP": "10.96.7.7"}}}
    ops = [op for op in plan_imports(v, HERE, Owned(services, state.serviceimports, state.endpointslices), egress,
                                     OWNED) if not (isinstance(op, Patch) and op.subresource)]
    assert len(ops) == 1
    assert isinstance(ops[0], Patch)
    assert ops[0].body["spec"]["ips"] == ["10.96.7.7"]


def test_removed_import_deletes_only_owned_objects() -> None:
    state = apply(plan_imports(view(export("near")), HERE, Owned(), egress, OWNED), Owned())
    foreign = {"metadata": {"name": "web", "namespace": "other", "labels": {"app": "web"}}, "spec": {}}
    services = {**state.services, ("other", "web"): foreign}
    ops = plan_imports(view(), HERE, Owned(services, state.serviceimports, state.endpointslices), egress, OWNED)
    assert all(isinstance(op, Delete) for op in ops)
    assert [op.resource for op in ops] == ["endpointslices", "serviceimports", "services"]
    assert ("other", "web") not in {(op.namespace, op.name) for op in ops}  # type: ignore[union-attr]


def test_type_change_recreates_the_derived_service() -> None:
    state = apply(plan_imports(view(export("near")), HERE, Owned(), egress, OWNED), Owned())
    headless = export("near", type=ServiceType.HEADLESS)
    ops = plan_imports(view(headless), HERE, state, egress, OWNED)
    assert isinstance(ops[0], Delete)
    assert ops[0].resource == "services"
    assert creates(ops, "services")[0]["spec"]["clusterIP"] == "None"


def test_conflicting_site_is_left_out() -> None:
    ok = export("near", addresses=("10.1.0.5",))
    bad = ServiceExport("here", "shop", "web", (ServicePort("http", 9999),),
                        endpoints=(Endpoint(("10.1.0.9",)),), exported_at=99.0)
    ops = plan_imports(view(ok, bad), HERE, Owned(), egress, OWNED)
    assert [e["addresses"] for e in creates(ops, "endpointslices")[0]["endpoints"]] == [["10.1.0.5"]]


def k8s_export(site_name: str, at: float, **fields: Any) -> ServiceExport:
    base = dataclasses.replace(export(site_name, addresses=("10.1.0.5",)), exported_at=at, ip_families=("IPv4",),
                               session_affinity="ClientIP", session_affinity_timeout=10,
                               internal_traffic_policy="Cluster", traffic_distribution="PreferClose",
                               exported_labels=(("dummy-label", "true"),),
                               exported_annotations=(("dummy-annotation", "true"),))
    return dataclasses.replace(base, **fields)


def test_serviceimport_carries_the_exported_service_fields() -> None:
    v = view(k8s_export("near", 1))
    state = apply(plan_imports(v, HERE, Owned(), egress, OWNED), Owned())
    key = ("shop", derived_name("web"))
    svc = state.services[key]
    assert svc["spec"]["sessionAffinity"] == "ClientIP"  # kube-proxy keeps a client on one endpoint
    assert svc["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10}}
    allocated = {**svc, "spec": {**svc["spec"], "clusterIP": "10.96.7.7", "clusterIPs": ["10.96.7.7", "fd00::7"],
                                 "ipFamilies": ["IPv4", "IPv6"]}}
    state = Owned({key: allocated}, state.serviceimports, state.endpointslices)
    ops = [op for op in plan_imports(v, HERE, state, egress, OWNED) if not (isinstance(op, Patch) and op.subresource)]
    [patch] = ops
    assert isinstance(patch, Patch)
    state = apply(ops, state)
    imp = state.serviceimports[("shop", "web")]
    assert imp["spec"] == {
        "type": "ClusterSetIP", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "ips": ["10.96.7.7", "fd00::7"], "ipFamilies": ["IPv4", "IPv6"],
        "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}},
        "internalTrafficPolicy": "Cluster", "trafficDistribution": "PreferClose",
    }
    assert imp["metadata"]["labels"] == {"dummy-label": "true", OWNED[0]: OWNED[1]}
    assert imp["metadata"]["annotations"] == {"dummy-annotation": "true"}


def test_an_exported_label_that_goes_is_removed_from_the_serviceimport() -> None:
    v = view(k8s_export("near", 1))
    state = apply(plan_imports(v, HERE, Owned(), egress, OWNED), Owned())
    gone = view(k8s_export("near", 1, exported_labels=(), exported_annotations=(), session_affinity="None",
                           session_affinity_timeout=None))
    [patch] = [op for op in plan_imports(gone, HERE, state, egress, OWNED) if op.resource == "serviceimports"
               and isinstance(op, Patch) and not op.subresource]
    assert isinstance(patch, Patch)
    assert patch.body["metadata"]["labels"] == {"dummy-label": None, OWNED[0]: OWNED[1]}
    assert patch.body["metadata"]["annotations"] == {"dummy-annotation": None}
    assert patch.body["spec"]["sessionAffinityConfig"] is None


def test_headless_import_has_families_but_no_ips() -> None:
    e = dataclasses.replace(k8s_export("near", 1, type=ServiceType.HEADLESS), ip_families=("IPv6", "IPv4"))
    [imp] = creates(plan_imports(view(e), HERE, Owned(), egress, OWNED), "serviceimports")
    assert (imp["spec"]["ips"], imp["spec"]["ipFamilies"]) == ([], ["IPv6", "IPv4"])
    vm = ServiceExport("near", "shop", "db", (ServicePort("pg", 5432),), type=ServiceType.HEADLESS,
                       endpoints=(Endpoint(("fd00::5",)), Endpoint(("10.1.0.5",))))
    [imp] = creates(plan_imports(view(vm), HERE, Owned(), egress, OWNED), "serviceimports")
    assert imp["spec"]["ipFamilies"] == ["IPv6", "IPv4"]  # a VM export says nothing: from its addresses


def test_slices_per_source_site_carry_only_the_ports_that_site_serves() -> None:
    tcp, tcp2 = ServicePort("tcp", 42), ServicePort("tcp2", 4242)
    first = dataclasses.replace(export("near", addresses=("10.1.0.5",), ports=(tcp,)), exported_at=1.0)
    second = dataclasses.replace(export("far", addresses=("10.9.0.5",), ports=(tcp2,)), exported_at=2.0)
    other = site("near2", "net-a")
    third = dataclasses.replace(export("near2", addresses=("10.1.0.6",), ports=(ServicePort("tcp", 4242),)),
                                exported_at=3.0)
    ops = plan_imports(view(first, second, third, sites=(other,)), HERE, Owned(), egress, OWNED)
    [svc] = creates(ops, "services")
    assert [p["name"] for p in svc["spec"]["ports"]] == ["tcp", "tcp2"]  # the union
    by_site = {s["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"]: s
               for s in creates(ops, "endpointslices")}
    assert sorted(by_site) == ["far", "near"]  # near2's tcp is 4242 where the service's is 42: no traffic
    assert by_site["near"]["ports"] == [{"name": "tcp", "port": 42, "protocol": "TCP"}]
    assert by_site["far"]["ports"] == [{"name": "tcp2", "port": 20004, "protocol": "TCP"}]  # its egress listener
    assert by_site["far"]["endpoints"] == [{"addresses": ["10.244.0.7"], "conditions": {"ready": True}}]


def endpoint_listener(ns: str, name: str, port: str, site: str, host: str) -> tuple[str, int] | None:
    return ("10.244.0.7", 30000 + int(host.rsplit("-", 1)[1]))


def test_a_remote_headless_endpoint_is_a_slice_endpoint_with_its_hostname_and_a_service_of_its_own() -> None:
    e = ServiceExport("far", "shop", "db", (ServicePort("pg", 5432),), type=ServiceType.HEADLESS,
                      endpoints=(Endpoint(("10.2.0.5",), hostname="db-0"),
                                 Endpoint(("10.2.0.6",), hostname="db-1", ready=False)))
    v = view(e)
    table = EndpointAllocator(["10.96.240.0/20"], "here", "net-a").update(v)
    here = {r.hostname: r.address for r in table[("shop", "db")]}
    ops = plan_imports(v, HERE, Owned(), egress, OWNED, table, endpoint_listener)
    services = creates(ops, "services")
    derived = derived_name("db")
    mcs = [s for s in creates(ops, "endpointslices") if s["metadata"]["labels"].get(MCS_SERVICE_LABEL)]
    [sl] = mcs  # one MCS slice: one endpoint per remote pod, the service's own port
    assert sl["endpoints"] == [
        {"addresses": [here["db-0"]], "conditions": {"ready": True}, "hostname": "db-0"},
        {"addresses": [here["db-1"]], "conditions": {"ready": False}, "hostname": "db-1"},
    ]
    assert sl["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    assert sl["metadata"]["labels"][SOURCE_CLUSTER_LABEL] == "far"
    per = {s["spec"]["clusterIP"]: s for s in services if s["metadata"]["name"] != derived}
    assert set(per) == set(here.values())  # a ClusterIP Service at each address, no MCS label on it
    for s in per.values():
        assert MCS_SERVICE_LABEL not in s["metadata"]["labels"]
        assert s["metadata"]["labels"][ENDPOINT_OF_LABEL] == "db"
        assert s["spec"]["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    own = {s["metadata"]["labels"][SLICE_SERVICE_LABEL]: s for s in creates(ops, "endpointslices") if s not in mcs}
    by_host = {host: own[per[address]["metadata"]["name"]] for host, address in here.items()}
    assert by_host["db-1"]["endpoints"] == [{"addresses": ["10.244.0.7"], "conditions": {"ready": False}}]
    assert by_host["db-1"]["ports"] == [{"name": "pg", "port": 30001, "protocol": "TCP"}]  # its listener
    assert by_host["db-0"]["ports"] == [{"name": "pg", "port": 30000, "protocol": "TCP"}]
    state = apply(ops, Owned())
    assert [op for op in plan_imports(v, HERE, state, egress, OWNED, table, endpoint_listener)
            if not isinstance(op, Patch) or op.subresource != "status"] == []
    gone = plan_imports(view(), HERE, state, egress, OWNED, EndpointAllocator(["10.96.240.0/20"], "here", "net-a")
                        .update(view()), endpoint_listener)
    assert {(op.resource, op.name) for op in gone if isinstance(op, Delete)} >= {
        ("services", s["metadata"]["name"]) for s in per.values()}
