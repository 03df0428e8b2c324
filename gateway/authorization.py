"""Access decisions where streams are admitted: the east-west gateway (every stream, from the peer's verified
certificate) and the egress (direct same-network routes, where the client's site is this one).

The decision is `federation.core.policy.access.decide` on the `AccessState` in force; this adds what an
operator sees: a counter per enforcement point and rule, and a log line naming source, service and rule,
at most once a minute per (source site, service, rule), however often the peer retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from federation.core.policy.access import AccessState, Decision, Peer, decide, workload_id
from federation.core.policy.reach import site_decision
from federation.core.view import MeshView
from federation.runtime.values import Readable, Value, follow
from gateway.refusals import Throttle

log = logging.getLogger(__name__)


def site_peer(view: MeshView, site: str, trust_domain: str, gateway: str, workload: str | None = None) -> Peer:
    """This site as the source of its own clients' streams: its network, the identity its gateway shows, and
    the client's workload (`ns/sa`) where the site knows it."""
    own = view.sites.get(site)
    return Peer(site, own.network if own is not None else "", f"spiffe://{trust_domain}/site/{site}/gateway/{gateway}",
                workload_id(trust_domain, site, workload) if workload else None)


def vouched(gateway_identity: str, site: str, workload: str | None) -> str | None:
    """The SPIFFE ID of the workload `ns/sa` a peer gateway named, in the scope of its own verified `site` only:
    whatever it claims, a site can vouch for its own workloads and never for another site's."""
    if workload is None:
        return None
    return workload_id(gateway_identity.removeprefix("spiffe://").split("/", 1)[0], site, workload)

_NO_POLICIES: Readable[AccessState] = Value(AccessState(), name="no access policies")


class Authorizer:
    """Decides and reports access for one enforcement point (`gateway` or `egress`)."""

    def __init__(self, access: Readable[AccessState] | None, point: str, registry: CollectorRegistry) -> None:
        self.access = access or _NO_POLICIES
        """The access state in force (no policies, mesh default allow, when the agent reads none)."""
        self.point = point
        self.denied = Counter(f"meshfed_{point}_denied_total", f"Streams the {point} refused by access policy, "
                              "by rule", ["rule"], registry=registry)
        self.closed = Counter(f"meshfed_{point}_denied_closed_total", f"Established streams the {point} closed "
                              "because a changed access policy denies them, by rule", ["rule"], registry=registry)
        self._throttle = Throttle(60.0, 4096)

    @property
    def state(self) -> AccessState:
        """The access state in force now."""
        return self.access.get()

    def revoked(self, site: str) -> bool:
        """Whether the operator revoked `site`."""
        return site in self.access.get().revoked

    def check(self, service: tuple[str, str], peer: Peer, *, where: str = "") -> Decision:
        """The decision for a new stream; a denial is counted and logged (rate limited)."""
        decision = decide(self.access.get(), service, peer)
        if not decision.allowed:
            self.denied.labels(decision.rule).inc()
            self._throttle.log(log, logging.WARNING, ("denied", peer.site, service, decision.rule),
                               "%s denied a stream from site %s%s to %s/%s: %s (rule %s)", self.point, peer.site,
                               f" ({peer.workload or peer.identity})" if peer.identity else "", *service,
                               decision.reason, decision.rule)
        return decision

    def site_refusal(self, view: MeshView, site: str, identity: str) -> Callable[[tuple[str, str]], str | None]:
        """For a health query from `site` (its gateway's `identity`): why a service is closed to every stream the
        site could open, or None (federation.core.policy.reach); not counted as a refused stream."""
        own = view.sites.get(site)
        peer, state = Peer(site, own.network if own is not None else "", identity), self.state

        def refusal(service: tuple[str, str]) -> str | None:
            decision = site_decision(state, service, peer)
            return None if decision.allowed else f"{decision.reason} (rule {decision.rule})"
        return refusal

    def recheck(self, service: tuple[str, str], peer: Peer) -> Decision:
        """The decision for an established stream after a change (not counted as a refusal)."""
        return decide(self.access.get(), service, peer)

    async def enforce(self, streams: Callable[[], Iterable[tuple[Any, tuple[str, str], str | None]]],
                      peer: Callable[[str | None], Peer]) -> None:
        """Close, on every change of the access state, the `streams()` (relay, service, workload) whose source
        `peer(workload)` it now denies (unless the mesh lets established streams finish), until cancelled."""
        async for _ in follow(self.access):
            if not self.state.mesh.close_on_deny:
                continue
            by_service: dict[tuple[tuple[str, str], str], list[Any]] = {}
            for relay, service, workload in list(streams()):
                by_service.setdefault((service, workload or ""), []).append(relay)
            for (service, workload), relays in sorted(by_service.items()):
                source = peer(workload or None)
                decision = self.recheck(service, source)
                if not decision.allowed:
                    self.closing(decision, source, service, len(relays))
                    for relay in relays:
                        relay.finish(clean=False)

    def closing(self, decision: Decision, peer: Peer, service: tuple[str, str], count: int) -> None:
        """Report `count` established streams closed by `decision`."""
        self.closed.labels(decision.rule).inc(count)
        self._throttle.log(log, logging.WARNING, ("closed", peer.site, service, decision.rule),
                           "%s closing %d established stream(s) from site %s%s to %s/%s: now %s (rule %s)",
                           self.point, count, peer.site, f" ({peer.workload})" if peer.workload else "", *service,
                           decision.reason, decision.rule)
