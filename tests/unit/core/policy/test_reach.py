"""What a gateway tells another site's prober: a service is closed to a site only if every stream of it would be."""

from __future__ import annotations

from typing import Any

import pytest

from federation.core.policy import access
from federation.core.policy.access import AccessState, Action, MeshAccess, Peer, decide
from federation.core.policy.reach import site_decision

WEST = Peer("west", "net-w", "spiffe://mesh.example/site/west/gateway/gw")
WEB = ("shop", "web")


def state(*rules: dict[str, Any], default: Action = Action.ALLOW, revoked: frozenset[str] = frozenset()
          ) -> AccessState:
    doc = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"namespace": "shop", "name": "web"},
           "spec": {"rules": list(rules)}}
    return AccessState({WEB: access.from_document(doc)} if rules else {}, MeshAccess(default), revoked)


def rule(action: str, **source: list[str]) -> dict[str, Any]:
    return {"name": "r", "action": action, "from": source}


W = "spiffe://mesh.example/site/west/"


@pytest.mark.parametrize(("st", "allowed", "reason"), [
    (state(), True, "allowed by the mesh default (Allow)"),
    (state(default=Action.DENY), False, "denied by the mesh default (Deny)"),
    (state(revoked=frozenset({"west"})), False, "site west is revoked by the operator"),
    (state(rule("Deny", sites=["west"])), False, "denied by rule r of shop/web"),
    (state(rule("Deny", networks=["net-w"])), False, "denied by rule r of shop/web"),
    (state(rule("Deny", identities=[W + "*"])), False, "denied by rule r of shop/web"),
    (state(rule("Deny", identities=[W + "ns/*"])), False, "denied by rule r of shop/web"),
    # A Deny naming one workload leaves the site's others: the site may still use the service.
    (state(rule("Deny", identities=[W + "ns/shop/sa/batch"])), True, "allowed by the mesh default (Allow)"),
    (state(rule("Deny", sites=["east"])), True, "allowed by the mesh default (Allow)"),
    (state(rule("Allow", sites=["east"])), False, "no Allow rule of shop/web matches site west or any of its workloads"),
    (state(rule("Allow", sites=["west"])), True, "allowed by rule r of shop/web"),
    # Only one of west's workloads is allowed: west's prober is told the truth for that workload, not FORBIDDEN.
    (state(rule("Allow", identities=[W + "ns/shop/sa/web"])), True, "allowed by rule r of shop/web"),
    (state(rule("Allow", identities=[W + "ns/shop/*"])), True, "allowed by rule r of shop/web"),
    (state(rule("Allow", identities=["spiffe://mesh.example/site/east/ns/shop/sa/web"])), False,
     "no Allow rule of shop/web matches site west or any of its workloads"),
    (state(rule("Allow", identities=[W + "gateway/gw"])), True, "allowed by rule r of shop/web"),
])
def test_a_site_is_refused_only_when_every_stream_of_it_would_be(st: AccessState, allowed: bool, reason: str) -> None:
    decision = site_decision(st, WEB, WEST)
    assert (decision.allowed, decision.reason) == (allowed, reason)
    if not allowed:  # never stricter than a stream: what the site is told matches what its streams would get
        assert not decide(st, WEB, WEST).allowed
        assert not decide(st, WEB, Peer("west", "net-w", WEST.identity, W + "ns/shop/sa/web")).allowed


def test_another_service_is_not_touched_by_the_policy() -> None:
    assert site_decision(state(rule("Deny", sites=["west"])), ("shop", "cart"), WEST).allowed
