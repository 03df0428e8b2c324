"""deploy/kubernetes/crds.yaml: the upstream MCS schema, and nothing the agent writes is pruned by it.

A real API server silently drops every field a CRD's structural schema does not declare. These tests
run what the agent writes (ServiceImports with every field, their status, ServiceExport conditions
with every reason) through the same pruning and validation (federation.devkit.apiserver.schema), for
both served versions, and the built-in objects it writes through the offline OpenAPI validator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from federation.core.records import Endpoint, Protocol, ServiceExport, ServicePort, ServiceType
from federation.core.view import CONFLICT_KINDS, Conflict, MeshView
from federation.devkit.apiserver.schema import prune, validate
from federation.devkit.objects import serviceexport
from federation.sources.kubernetes.conversion import Invalid, MeshState, export_conditions
from federation.sources.kubernetes.importing import Create, Owned, derived_name, plan_imports
from federation.sources.kubernetes.settings import KubernetesSettings
from tests.util import export, site

CRDS = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes" / "crds.yaml"
OWNED = (KubernetesSettings().owned_label, KubernetesSettings().owned_value)
VERSION = "1.30.0"

# The field paths and types of mcs-api v0.5.0's config/crd (kubernetes-sigs/mcs-api@ded161a), both versions.
UPSTREAM = {
    "ServiceExport": {
        "spec": "object", "spec.exportedAnnotations": "object", "spec.exportedLabels": "object",
        "status": "object", "status.conditions": "array", "status.conditions[].lastTransitionTime": "string",
        "status.conditions[].message": "string", "status.conditions[].observedGeneration": "integer",
        "status.conditions[].reason": "string", "status.conditions[].status": "string",
        "status.conditions[].type": "string",
    },
    "ServiceImport": {
        "spec": "object", "spec.internalTrafficPolicy": "string", "spec.ipFamilies": "array",
        "spec.ipFamilies[]": "string", "spec.ips": "array", "spec.ips[]": "string", "spec.ports": "array",
        "spec.ports[].appProtocol": "string", "spec.ports[].name": "string", "spec.ports[].port": "integer",
        "spec.ports[].protocol": "string", "spec.sessionAffinity": "string", "spec.sessionAffinityConfig": "object",
        "spec.sessionAffinityConfig.clientIP": "object", "spec.sessionAffinityConfig.clientIP.timeoutSeconds":
        "integer", "spec.trafficDistribution": "string", "spec.type": "string", "status": "object",
        "status.clusters": "array", "status.clusters[].cluster": "string", "status.conditions": "array",
        "status.conditions[].lastTransitionTime": "string", "status.conditions[].message": "string",
        "status.conditions[].observedGeneration": "integer", "status.conditions[].reason": "string",
        "status.conditions[].status": "string", "status.conditions[].type": "string",
    },
}


def crds() -> dict[str, dict[str, Any]]:
    return {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all(CRDS.read_text()) if d}


def schemas(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(v["name"], v["schema"]["openAPIV3Schema"]) for v in crds()[kind]["spec"]["versions"]]


def paths(schema: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, sub in (schema.get("properties") or {}).items():
        if not prefix and key in ("apiVersion", "kind", "metadata"):
            continue
        here = f"{prefix}{key}"
        out[here] = sub["type"]
        out.update(paths(sub, here + "."))
        if isinstance(sub.get("items"), dict):
            if sub["items"].get("type") != "object":
                out[here + "[]"] = sub["items"]["type"]
            out.update(paths(sub["items"], here + "[]."))
    return out


@pytest.mark.parametrize("kind", ["ServiceExport", "ServiceImport"])
def test_the_crds_have_the_upstream_fields_in_both_versions(kind: str) -> None:
    crd = crds()[kind]
    versions = {v["name"]: (v["served"], v["storage"]) for v in crd["spec"]["versions"]}
    assert versions == {"v1alpha1": (True, False), "v1beta1": (True, True)}
    for _, schema in schemas(kind):
        assert paths(schema) == UPSTREAM[kind]
    kubernetes_validate.validate(crd, VERSION, strict=True)


def rich_view() -> MeshView:
    """A service whose exports set every field the agent can put on a ServiceImport."""
    tcp = ServicePort("tcp", 42, Protocol.TCP, "kubernetes.io/h2c")
    full = dataclasses.replace(
        export("near", name="hello", addresses=("10.1.0.5",), ports=(tcp, ServicePort("udp", 42, Protocol.UDP))),
        exported_at=1.0, ip_families=("IPv4", "IPv6"), session_affinity="ClientIP", session_affinity_timeout=10,
        internal_traffic_policy="Cluster", traffic_distribution="PreferClose",
        exported_labels=(("dummy-label", "true"),), exported_annotations=(("example.com/owner", "team a"),))
    far = dataclasses.replace(full, site="far", endpoints=(Endpoint(("10.9.0.5",)),), exported_at=2.0)
    db = ServiceExport("near", "shop", "db", (ServicePort("pg", 5432),), ServiceType.HEADLESS,
                       (Endpoint(("10.1.0.6",), hostname="db-0"),), ip_families=("IPv4",))
    sites = {s.name: s for s in (site("here"), site("near"), site("far", network="net-b"))}
    return MeshView(sites, {(e.site, e.namespace, e.name): e for e in (full, far, db)})


def written_imports() -> list[dict[str, Any]]:
    """The ServiceImports the plan writes once the derived Services have dual-stack ClusterIPs."""
    view = rich_view()
    first = plan_imports(view, site("here"), Owned(), lambda *_: ("10.0.0.1", 20000), OWNED)
    services = {}
    for op in first:
        if isinstance(op, Create) and op.resource == "services":
            svc = op.obj
            if svc["spec"].get("clusterIP") != "None":
                svc = {**svc, "spec": {**svc["spec"], "clusterIPs": ["10.96.0.20", "fd00:10:96::20"],
                                       "clusterIP": "10.96.0.20", "ipFamilies": ["IPv4", "IPv6"]}}
            services[("shop", svc["metadata"]["name"])] = svc
    again = plan_imports(view, site("here"), Owned(services), lambda *_: ("10.0.0.1", 20000), OWNED)
    return [op.obj for op in again if isinstance(op, Create) and op.resource == "serviceimports"]


@pytest.mark.parametrize(("version", "schema"), schemas("ServiceImport"))
def test_every_field_of_a_serviceimport_survives_pruning(version: str, schema: dict[str, Any]) -> None:
    imports = written_imports()
    hello = next(i for i in imports if i["metadata"]["name"] == "hello")
    assert {"ips", "ipFamilies", "sessionAffinity", "sessionAffinityConfig", "internalTrafficPolicy",
            "trafficDistribution"} <= hello["spec"].keys()  # the case below really has every field
    assert hello["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"
    assert hello["status"]["clusters"] == [{"cluster": "far"}, {"cluster": "near"}]
    for obj in imports:
        obj = {**obj, "apiVersion": f"multicluster.x-k8s.io/{version}"}
        pruned, dropped = prune(obj, schema)
        assert dropped == []
        assert pruned == obj
        assert validate(obj, schema) == []


@pytest.mark.parametrize(("version", "schema"), schemas("ServiceExport"))
def test_every_serviceexport_condition_survives_pruning_and_validation(version: str, schema: dict[str, Any]) -> None:
    conflict = Conflict("east", "x" * 40000, CONFLICT_KINDS[0], CONFLICT_KINDS)  # every reason at once, long text
    for invalid, mesh in ((None, MeshState(True, True, conflict)), (None, MeshState()),
                          (Invalid("NoService", "gone"), MeshState(True, True)), (None, MeshState(True, True))):
        se = {**serviceexport(), "apiVersion": f"multicluster.x-k8s.io/{version}",
              "spec": {"exportedLabels": {"a": "b"}, "exportedAnnotations": {"c": "d"}},
              "status": {"conditions": export_conditions([], invalid, mesh, 1714557600.0, 3)}}
        pruned, dropped = prune(se, schema)
        assert dropped == []
        assert pruned == se
        assert validate(se, schema) == []


def test_the_pruning_check_can_fail() -> None:
    [(_, schema), *_] = schemas("ServiceImport")
    obj = {**written_imports()[0]}
    obj["spec"] = {**obj["spec"], "clusterSetIP": "10.0.0.1"}
    obj["status"] = {**obj["status"], "clusters": [{"cluster": "a", "weight": 1}]}
    pruned, dropped = prune(obj, schema)
    assert dropped == ["spec.clusterSetIP", "status.clusters[0].weight"]
    assert "clusterSetIP" not in pruned["spec"]
    assert validate({**obj, "spec": {**obj["spec"], "ips": ["a", "b", "c"]}}, schema)[0].startswith(
        "spec.ips: Too many: 3")


def test_the_derived_service_and_slices_pass_the_offline_validator() -> None:
    ops = plan_imports(rich_view(), site("here"), Owned(), lambda *_: ("10.0.0.1", 20000), OWNED)
    builtins = [op.obj for op in ops if isinstance(op, Create) and op.resource in ("services", "endpointslices")]
    assert {o["metadata"]["name"] for o in builtins if o["kind"] == "Service"} == {derived_name("hello"),
                                                                                   derived_name("db")}
    assert any(o["kind"] == "EndpointSlice" for o in builtins)
    for obj in builtins:
        kubernetes_validate.validate(obj, VERSION, strict=True)
