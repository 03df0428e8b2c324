"""AccessPolicy: the decision order (deny first, then allow, then the mesh default), the codec, the CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from federation.core.errors import PolicyError
from federation.core.policy import access
from federation.core.policy.access import AccessState, Action, MeshAccess, Peer, decide
from federation.sources.kubernetes.policies import convert_policies

DEPLOY = Path(__file__).resolve().parents[4] / "deploy" / "kubernetes"
EAST = Peer("east", "net-1", "spiffe://mesh.example/site/east/gateway/gw")
EDGE = Peer("edge", "dmz", "spiffe://mesh.example/site/edge/gateway/gw")


def doc(rules: list[dict[str, Any]], name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"namespace": "shop", "name": name},
            "spec": {"rules": rules}}


def state(*rules: dict[str, Any], default: Action = Action.ALLOW, revoked: frozenset[str] = frozenset()
          ) -> AccessState:
    policies = {("shop", "web"): access.from_document(doc(list(rules)))} if rules else {}
    return AccessState(policies, MeshAccess(default), revoked)


def test_without_policies_the_mesh_default_decides() -> None:
    assert decide(state(), ("shop", "web"), EAST).allowed
    d = decide(state(default=Action.DENY), ("shop", "web"), EAST)
    assert (d.allowed, d.rule) == (False, "default")


def test_a_matching_deny_wins_over_a_matching_allow() -> None:
    s = state({"name": "everyone", "action": "Allow"}, {"name": "no-edge", "action": "Deny", "from": {"sites": ["edge"]}})
    d = decide(s, ("shop", "web"), EDGE)
    assert (d.allowed, d.rule) == (False, "shop/web:no-edge")
    assert decide(s, ("shop", "web"), EAST).rule == "shop/web:everyone"


def test_allow_rules_lock_a_service_down_to_what_they_match_and_leave_others_alone() -> None:
    s = state({"name": "frontends", "action": "Allow", "from": {"networks": ["net-1"]}})
    assert decide(s, ("shop", "web"), EAST).allowed
    d = decide(s, ("shop", "web"), EDGE)
    assert (d.allowed, d.rule) == (False, "shop/web:no-allow-match")
    assert decide(s, ("shop", "db"), EDGE).allowed  # another service: the mesh default


def test_a_deny_only_policy_falls_back_to_the_default() -> None:
    s = state({"name": "no-edge", "action": "Deny", "from": {"sites": ["edge"]}}, default=Action.DENY)
    assert decide(s, ("shop", "web"), EAST).rule == "default"
    assert not decide(s, ("shop", "web"), EAST).allowed


def test_every_list_of_a_rule_must_match() -> None:
    s = state({"name": "east-gw", "action": "Allow", "from": {"sites": ["east"], "networks": ["other"]}})
    assert not decide(s, ("shop", "web"), EAST).allowed
    s = state({"name": "east-gw", "action": "Allow",
               "from": {"sites": ["*"], "identities": ["spiffe://mesh.example/site/east/*"]}})
    assert decide(s, ("shop", "web"), EAST).allowed
    assert not decide(s, ("shop", "web"), EDGE).allowed


def test_an_unknown_identity_matches_a_deny_and_never_an_allow() -> None:
    unknown = Peer("east", "net-1", None)
    allow = state({"name": "by-id", "action": "Allow", "from": {"identities": ["spiffe://mesh.example/ns/shop/sa/fe"]}})
    assert not decide(allow, ("shop", "web"), unknown).allowed
    deny = state({"name": "by-id", "action": "Deny", "from": {"identities": ["spiffe://mesh.example/ns/x/sa/y"]}})
    assert not decide(deny, ("shop", "web"), unknown).allowed
    assert decide(deny, ("shop", "web"), EAST).allowed  # a known identity that does not match: not denied


def test_a_revoked_site_is_denied_whatever_the_policies_say() -> None:
    s = state({"name": "everyone", "action": "Allow"}, revoked=frozenset({"east"}))
    d = decide(s, ("shop", "web"), EAST)
    assert (d.allowed, d.rule) == (False, "revoked")


@pytest.mark.parametrize(("rules", "message"), [
    ([{"name": "a", "action": "Maybe"}], "spec.rules[0].action: 'Maybe' is not one of Allow, Deny"),
    ([{"action": "Allow"}], "spec.rules[0].name: is required"),
    ([{"name": "a", "action": "Allow"}, {"name": "a", "action": "Deny"}], "spec.rules[1].name: 'a' is used twice"),
    ([{"name": "a", "action": "Allow", "from": {"sites": ["East!"]}}], "spec.rules[0].from.sites[0]"),
    ([{"name": "a", "action": "Allow", "from": {"identities": ["east"]}}], "is not a SPIFFE ID"),
    ([{"name": "a", "action": "Allow", "from": {"site": ["east"]}}], "spec.rules[0].from.site: unknown field"),
])
def test_a_bad_document_names_the_field_and_the_reason(rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        access.from_document(doc(rules))


def test_the_mesh_document_has_one_name() -> None:
    mesh = {"apiVersion": "meshfed.io/v1alpha1", "kind": "MeshAccessPolicy", "metadata": {"name": "default"},
            "spec": {"defaultAction": "Deny", "closeOnDeny": False}}
    assert access.mesh_from_document(mesh) == MeshAccess(Action.DENY, close_on_deny=False)
    with pytest.raises(PolicyError, match="named default"):
        access.mesh_from_document({**mesh, "metadata": {"name": "strict"}})


names = st.sampled_from(["east", "west", "edge", "*"])
rules = st.lists(st.fixed_dictionaries({
    "action": st.sampled_from(["Allow", "Deny"]),
    "from": st.fixed_dictionaries({}, optional={"sites": st.lists(names, max_size=3),
                                                "networks": st.lists(st.sampled_from(["net-1", "dmz"]), max_size=2)}),
}), max_size=6)


@given(rules)
def test_documents_round_trip_through_the_store(raw: list[dict[str, Any]]) -> None:
    named = [{"name": f"r{i}", **r} for i, r in enumerate(raw)]
    policy = access.from_document(doc(named))
    stored = access.canonical(access.encode(access.to_document(policy)))
    assert access.decode(("shop", "web"), stored) == policy


@given(rules, st.sampled_from([EAST, EDGE]))
def test_adding_a_deny_rule_never_allows_more(raw: list[dict[str, Any]], peer: Peer) -> None:
    named = [{"name": f"r{i}", **r} for i, r in enumerate(raw)]
    before = decide(state(*named), ("shop", "web"), peer)
    after = decide(state(*named, {"name": "extra", "action": "Deny", "from": {"sites": [peer.site]}}),
                   ("shop", "web"), peer)
    assert not after.allowed
    assert before.allowed or not after.allowed


def test_a_tombstone_removes_and_names_its_service() -> None:
    stored = access.canonical(access.tombstone("shop", "web"))
    assert access.decode(("shop", "web"), stored) is None
    with pytest.raises(PolicyError, match="does not name shop/db"):
        access.decode(("shop", "db"), stored)


def test_objects_and_stored_documents_match_the_crd_and_convert() -> None:
    crds = {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all((DEPLOY / "access-crds.yaml").read_text()) if d}
    schema = crds["AccessPolicy"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    obj = doc([{"name": "frontends", "action": "Allow", "from": {"sites": ["east"], "networks": ["net-1"],
                                                                   "identities": ["spiffe://mesh.example/site/east/*"]}},
               {"name": "no-edge", "action": "Deny", "from": {"sites": ["edge"]}, "description": "DMZ"}])
    obj["metadata"].update({"uid": "1", "resourceVersion": "7", "generation": 2})
    jsonschema.validate(obj, schema)
    jsonschema.validate(access.to_document(access.from_document(obj)), schema)
    out = convert_policies([obj, doc([{"name": "x", "action": "Nope"}], name="db")])
    assert out.policies[("shop", "web")] == access.from_document(obj)
    assert "is not one of Allow, Deny" in out.invalid[("shop", "db")]
    mesh_schema = crds["MeshAccessPolicy"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(access.mesh_to_document(MeshAccess(Action.DENY)), mesh_schema)


WEB = "spiffe://mesh.example/site/east/ns/shop/sa/web"


def test_a_workload_identity_matches_only_in_the_scope_of_the_site_that_vouched_for_it() -> None:
    allow = state({"name": "web", "action": "Allow", "from": {"identities": [WEB]}})
    east_web = Peer("east", "net-1", EAST.identity, access.workload_id("mesh.example", "east", "shop/web"))
    assert east_web.workload == WEB
    assert decide(allow, ("shop", "web"), east_web).rule == "shop/web:web"
    edge_web = Peer("edge", "dmz", EDGE.identity, access.workload_id("mesh.example", "edge", "shop/web"))
    d = decide(allow, ("shop", "web"), edge_web)  # the same ns/sa claimed by another site: not east's web
    assert (d.allowed, d.reason) == (False, f"no Allow rule of shop/web matches site edge ({edge_web.workload})")
    assert not decide(allow, ("shop", "web"), EAST).allowed  # east, workload unknown: never an Allow


def test_an_unknown_workload_matches_a_deny_that_could_name_it_and_no_other() -> None:
    for pattern in (WEB, "spiffe://mesh.example/site/east/ns/*", "spiffe://mesh.example/site/east/ns/shop/*"):
        deny = state({"name": "no-web", "action": "Deny", "from": {"identities": [pattern]}})
        assert decide(deny, ("shop", "web"), EAST).rule == "shop/web:no-web", pattern  # may be web: denied
        other = Peer("east", "net-1", EAST.identity, access.workload_id("mesh.example", "east", "shop/api"))
        assert decide(deny, ("shop", "web"), other).allowed == (pattern == WEB)  # a known other workload
    deny = state({"name": "no-edge-web", "action": "Deny",
                  "from": {"identities": ["spiffe://mesh.example/site/edge/ns/shop/sa/web"]}})
    assert decide(deny, ("shop", "web"), EAST).allowed  # cannot be one of edge's workloads
    gateways = state({"name": "no-gw", "action": "Deny",
                      "from": {"identities": ["spiffe://mesh.example/site/east/gateway/*"]}})
    assert not decide(gateways, ("shop", "web"), EAST).allowed  # the gateway's own identity is known
