"""deploy/kubernetes/ validated offline against the Kubernetes OpenAPI schemas (kubernetes-validate ships them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from federation.agent.settings import parse_settings
from federation.sources.kubernetes.settings import KubernetesSettings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
VERSION = "1.30.0"
"""ValidatingAdmissionPolicy is GA from 1.30, the oldest release the manifests support."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for _, d in documents() if d["kind"] == kind and name in (None, d.get("metadata", {}).get("name")))


@pytest.mark.parametrize(("file", "doc"), [d for d in documents() if d[1]["kind"] != "Kustomization"],
                         ids=lambda x: x if isinstance(x, str) else f"{x['kind']}/{x['metadata']['name']}")
def test_manifest_matches_the_openapi_schema(file: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    bad = by_kind("Deployment")
    bad = {**bad, "spec": {**bad["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = by_kind("Kustomization")
    assert sorted(kust["resources"]) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def test_configmap_is_a_valid_agent_config(tmp_path: Path) -> None:
    text = by_kind("ConfigMap", "meshfed-agent")["data"]["agent.yaml"]
    for name in ("ca.crt", "tls.crt", "tls.key"):  # the Secret the Deployment mounts there
        (tmp_path / name).write_text("x")
    text = text.replace("/etc/meshfed/etcd/", f"{tmp_path}/")
    cfg = parse_settings(yaml.safe_load(text), "configmap.yaml", {})
    assert cfg.site.kind == "kubernetes"
    assert cfg.admin.port == 15000
    k = cfg.kubernetes
    assert k.enabled
    assert not k.kubeconfig
    assert k.namespace == by_kind("Namespace")["metadata"]["name"]
    dns = cfg.dns
    assert dns.zone == "clusterset.local"
    gw = cfg.gateway
    assert gw.listen_port == 15443


def test_deployment_probes_ports_and_services_line_up() -> None:
    dep = by_kind("Deployment")
    [c] = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert ports["admin"] == (15000, "TCP")
    assert (c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]) == ("/readyz", "/healthz")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == by_kind("ServiceAccount")["metadata"]["name"]
    eastwest = by_kind("Service", "meshfed-eastwest")
    assert eastwest["spec"]["type"] == "LoadBalancer"
    assert [(p["port"], ports[p["targetPort"]][0]) for p in eastwest["spec"]["ports"]] == [(15443, 15443)]
    dns = by_kind("Service", "meshfed-dns")
    assert sorted((p["port"], p["protocol"]) for p in dns["spec"]["ports"]) == [(53, "TCP"), (53, "UDP")]
    assert all(ports[p["targetPort"]][1] == p["protocol"] for p in dns["spec"]["ports"])
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for svc in (eastwest, dns, by_kind("PodDisruptionBudget")):
        sel = svc["spec"]["selector"]
        assert (sel.get("matchLabels") or sel).items() <= labels.items()


def test_the_operator_key_secret_is_mounted_read_only_where_the_config_comment_points() -> None:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    [c] = spec["containers"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "operator-key"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "operator-key"]
    assert mount["readOnly"] is True
    assert volume["secret"]["defaultMode"] in (0o400, 0o600)  # what kubernetes.operator_key_dir requires
    assert volume["secret"]["optional"] is True  # a site that syncs no policies starts without it
    text = by_kind("ConfigMap", "meshfed-agent")["data"]["agent.yaml"]
    assert f"# operator_key_dir: {mount['mountPath']}" in text
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]  # 0440, the agent's group


def test_admission_policy_uses_the_owned_label() -> None:
    policy = by_kind("ValidatingAdmissionPolicy")
    assert repr(KubernetesSettings().owned_label) in str(policy["spec"]["variables"])
    sa = by_kind("ServiceAccount")["metadata"]
    assert f"system:serviceaccount:{sa['namespace']}:{sa['name']}" in policy["spec"]["matchConditions"][0]["expression"]
