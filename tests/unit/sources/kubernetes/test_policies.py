"""TrafficPolicy objects as the API server returns them, converted to policies; the Accepted condition;
the objects and the stored documents match the CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from federation.core.policy.codec import from_document, to_document
from federation.sources.kubernetes.policies import convert_policies, policy_conditions

DEPLOY = Path(__file__).resolve().parents[4] / "deploy" / "kubernetes"
DOCS = Path(__file__).resolve().parents[4] / "docs" / "traffic.md"


def crd_schema() -> dict[str, Any]:
    """The CRD's schema as JSON Schema (OpenAPI's `nullable: true` becomes a null type, as the API server reads it)."""
    [crd] = [d for d in yaml.safe_load_all((DEPLOY / "policy-crds.yaml").read_text()) if d]
    assert crd["spec"]["names"]["kind"] == "TrafficPolicy"
    return _nullable(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])  # type: ignore[no-any-return]


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        out = {"anyOf": [{"type": "null"}, out]}
    return out


def from_server(spec: dict[str, Any], name: str = "web") -> dict[str, Any]:
    """An object shaped like `kubectl get trafficpolicy web -o json` returns it."""
    return {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": "0b0c", "resourceVersion": "4711", "generation": 3,
                     "creationTimestamp": "2024-05-01T10:00:00Z", "annotations": {"a": "b"},
                     "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "spec": spec,
        "status": {"conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "2024-05-01T10:00:00Z"}]},
    }


def test_objects_convert_and_one_invalid_object_does_not_hide_the_others() -> None:
    good = from_server({"split": [{"weight": 90, "site": "east"}, {"weight": 10, "site": "west"}]})
    bad = from_server({"split": [{"weight": 90, "site": "east"}]}, name="db")
    out = convert_policies([good, bad, "junk"])  # type: ignore[list-item]
    assert list(out.policies) == [("shop", "web")]
    assert out.policies[("shop", "web")] == from_document(good)
    assert out.invalid == {("shop", "db"): "spec.split: weights sum to 90, not 100"}


def test_the_accepted_condition_keeps_its_transition_time() -> None:
    [ok] = policy_conditions([], None, 1714557600.0, generation=3)
    assert (ok["status"], ok["reason"], ok["observedGeneration"]) == ("True", "Accepted", 3)
    [again] = policy_conditions([ok], None, 1714557999.0)
    assert again["lastTransitionTime"] == ok["lastTransitionTime"]
    [bad] = policy_conditions([ok], "spec.split: weights sum to 90, not 100", 1714557999.0)
    assert (bad["status"], bad["reason"]) == ("False", "Invalid")
    assert bad["lastTransitionTime"] != ok["lastTransitionTime"]
    jsonschema.validate({"conditions": [bad]}, crd_schema()["properties"]["status"])


def test_stored_documents_and_the_docs_examples_match_the_crd_schema() -> None:
    schema = crd_schema()
    examples = [d for block in DOCS.read_text().split("```yaml")[1:]
                for d in yaml.safe_load_all(block.split("```")[0]) if d and d.get("kind") == "TrafficPolicy"]
    assert len(examples) >= 3
    for example in examples:
        policy = from_document(example)  # every example in the docs is a valid policy
        jsonschema.validate(example, schema)
        jsonschema.validate(to_document(policy), schema)  # the full form `meshfed policy get` prints, too


def test_the_crd_schema_knows_every_field_the_codec_writes() -> None:
    schema = crd_schema()["properties"]["spec"]["properties"]
    full = to_document(from_document(from_server({
        "split": [{"weight": 100, "site": "east", "labels": {"version": "v2"}}],
        "locality": {"failover": [{"from": "eu", "to": "us"}], "distribute": [{"from": "eu", "to": {"eu": 100}}]},
        "faults": [{"delay": {"fixed": "1s", "percent": 1}, "abort": {"kind": "Reset", "percent": 1}}],
        "partition": {"mode": "StopAfter", "after": "5m"},
        "ports": [{"port": "http", "retries": {"attempts": 1}}],
    })))["spec"]

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return  # kept as written; the agent validates it (ports entries)
        if isinstance(value, dict) and "properties" in node:
            for k, v in value.items():
                assert k in node["properties"], f"{path}.{k} is not in the CRD schema (the API server would prune it)"
                walk(v, node["properties"][k], f"{path}.{k}")
        elif isinstance(value, list) and "items" in node:
            for i, v in enumerate(value):
                walk(v, node["items"], f"{path}[{i}]")

    walk(full, {"properties": schema}, "spec")
    assert set(schema) - set(full) == {"ingress"}


def test_pruned_or_defaulted_objects_from_the_server_still_convert() -> None:
    obj = from_server({})
    del obj["spec"]
    converted = convert_policies([copy.deepcopy(obj)])
    assert converted.policies[("shop", "web")].rules.retries.attempts == 3
