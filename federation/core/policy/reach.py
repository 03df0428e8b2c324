"""May any stream of a site reach a service? What a gateway tells another site's prober. Pure.

A health query comes from a peer site's prober, not from a workload: the gateway knows the site (its
verified certificate) but not which of its workloads will open streams. `access.decide` with no workload
is conservative for a stream (an unknown workload matches a Deny that could name it, and no Allow that
names workloads), which would mark a service forbidden for a whole site that some workloads may use. So
a site is refused here only when every stream from it would be: it is revoked, a Deny rule covers the
site whatever the workload, or no Allow rule could match it or any of its workloads (or the mesh
default denies and no rule allows).
"""

from __future__ import annotations

from dataclasses import replace

from federation.core.policy.access import (
    AccessState,
    Action,
    Decision,
    Peer,
    ServiceId,
    Source,
    could_name,
    decide,
    workload_scope,
)


def site_decision(state: AccessState, service: ServiceId, peer: Peer) -> Decision:
    """Allowed when some stream from `peer.site` (a workload of it, or none named) could be allowed to `service`."""
    policy = state.policies.get(service)
    if peer.site in state.revoked or policy is None:
        return decide(state, service, replace(peer, workload=None))
    where = f"{service[0]}/{service[1]}"
    scope = workload_scope(peer.identity, peer.site) if peer.identity else None
    for rule in policy.rules:
        if rule.action is Action.DENY and _covers_site(rule.source, peer, scope):
            return Decision(False, f"{where}:{rule.name}", f"denied by rule {rule.name} of {where}")
    allows = [r for r in policy.rules if r.action is Action.ALLOW]
    for rule in allows:
        if _may_match(rule.source, peer, scope):
            return Decision(True, f"{where}:{rule.name}", f"allowed by rule {rule.name} of {where}")
    if allows:
        return Decision(False, f"{where}:no-allow-match",
                        f"no Allow rule of {where} matches site {peer.site} or any of its workloads")
    return decide(replace(state, policies={}), service, peer)  # the mesh default


def _place(source: Source, peer: Peer) -> bool:
    """The rule's sites and networks take `peer`'s."""
    return ((not source.sites or "*" in source.sites or peer.site in source.sites)
            and (not source.networks or "*" in source.networks or peer.network in source.networks))


def _covers_site(source: Source, peer: Peer, scope: str | None) -> bool:
    """A Deny rule that denies every stream of the site: no identities, or a `*` over all its workloads."""
    if not _place(source, peer):
        return False
    return not source.identities or (scope is not None and any(
        p.endswith("*") and scope.startswith(p[:-1]) for p in source.identities))


def _may_match(source: Source, peer: Peer, scope: str | None) -> bool:
    """An Allow rule that matches the site's gateway identity or could match one of its workloads."""
    if not _place(source, peer):
        return False
    if not source.identities:
        return True
    ident = peer.identity or ""
    return any((ident.startswith(p[:-1]) if p.endswith("*") else ident == p)
               or (scope is not None and could_name(p, scope)) for p in source.identities)
