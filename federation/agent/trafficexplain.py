"""`meshfed explain`'s traffic-policy step: which TrafficPolicy applies to a service port (or the defaults,
when it has none), what it does to a new connection from a site (split, locality, ejection, circuit breaker,
timeouts, retries, faults), and the live state of this agent's egress for the service (what is ejected now,
breaker counts, retry budget). Pure: the policies, the egress's state of the service and the monotonic time
come in as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from federation.core.policy.model import DEFAULT_RULES, FaultRule, Rules, SplitTarget, TrafficPolicy
from federation.core.policy.sections import (
    write_circuit_breaker,
    write_faults,
    write_retries,
    write_split,
    write_timeouts,
)
from federation.core.policy.units import format_duration
from federation.core.records import ServicePort
from federation.core.view import FederatedService, MeshView
from gateway.policy.breaker import limits_text


def traffic_step(policies: Mapping[tuple[str, str], TrafficPolicy], view: MeshView, svc: FederatedService,
                 port: ServicePort, from_site: str, own_site: str, state: Any | None, now: float) -> dict[str, Any]:
    """The step: the policy in force for `port` of `svc`, its effect on clients of `from_site`, and (for this
    agent's own site) `state`, the egress's live ejections, breaker and budget for the service (or None)."""
    name = f"{svc.namespace}/{svc.name}"
    policy = policies.get((svc.namespace, svc.name))
    if policy is None:
        rules, entry = DEFAULT_RULES, None
        answer = f"defaults (no TrafficPolicy for {name}): every default rule, as an empty spec has"
    else:
        rules = policy.rules_for(port.name, port.port)
        entry = next((p.port for p in policy.ports if p.rules is rules), None)
        answer = f"TrafficPolicy {name} applies" + (f", with its entry for port {entry}" if entry is not None
                                                     else f" (no entry for port {port.name}: the service's rules)")
    details = [*_split(rules.split, svc, from_site), _locality(rules), _outliers(rules)]
    extra: dict[str, Any] = {
        "policy": name if policy is not None else None, "defaults": policy is None, "portEntry": entry,
        "split": write_split(rules.split),
        "timeouts": write_timeouts(rules.timeouts), "circuitBreaker": write_circuit_breaker(rules.circuit_breaker),
        "retries": write_retries(rules.retries),
    }
    live: dict[str, Any] | None = None
    if from_site != own_site:
        details.append(f"live state: kept by each site's egress; run meshfed explain on {from_site}'s agent")
    elif state is None:
        details.append("live state: no client of this service through this egress yet: nothing ejected, "
                       "breaker at 0")
        live = {"ejected": [], "connections": 0, "pending": 0}
    else:
        lines, live = _live(state, now)
        details += lines
    mine = state if from_site == own_site else None
    details += [_breaker(rules, mine), _timeouts(rules), _retries(rules, mine)]
    faults = [(i, f) for i, f in enumerate(rules.faults) if not f.source_sites or from_site in f.source_sites]
    details += _faults(faults, from_site)
    extra["faults"] = [{"rule": i + 1, **write_faults((f,))[0]} for i, f in faults]
    extra["live"] = live
    why = "the egress orders the routes by " + ("this policy" if policy is not None else "the default rules (meshfed "
                                                "policy apply -f FILE sets others; docs/traffic.md)")
    return _step(answer, why=why + " (split, then locality and health), not in the order above; changes apply to new "
                 "connections within a second", details=details, **extra)


def _step(answer: str, why: str, **extra: Any) -> dict[str, Any]:
    return {"step": "traffic-policy", "ok": True, "answer": answer, "why": why, **extra}


def _selector(t: SplitTarget) -> str:
    parts = ([f"site {t.site}"] if t.site else []) + (
        ["labels " + ",".join(f"{k}={v}" for k, v in t.labels)] if t.labels else [])
    return " and ".join(parts)


def _split(targets: tuple[SplitTarget, ...], svc: FederatedService, from_site: str) -> list[str]:
    if not targets:
        return ["split: none (every endpoint may serve, nearest first)"]
    out = []
    for t in targets:
        by_site: dict[str, int] = {}
        for e in svc.exports:
            if t.site is not None and e.site != t.site:
                continue
            n = sum(1 for ep in e.endpoints if ep.ready and all(ep.label(k) == v for k, v in t.labels))
            if n:
                by_site[e.site] = n
        where = ", ".join(f"{s} {n}" for s, n in sorted(by_site.items()))
        got = f"{sum(by_site.values())} ready endpoint(s) ({where})" if by_site else \
            "no ready endpoint: its share goes to the other targets"
        via = "; through a gateway its labels go in the stream request" if t.labels and any(
            s != from_site for s in by_site) else ""
        out.append(f"split: {t.weight:g}% to {_selector(t)}: {got}{via}")
    return out


def _locality(rules: Rules) -> str:
    loc = rules.locality
    rules_text = "".join(f"; from {r.from_region} to {r.to_region}" for r in loc.failover)
    return f"locality: failover by {', '.join(loc.failover_priority) or 'nothing'}, spill {loc.spill.value}{rules_text}"


def _outliers(rules: Rules) -> str:
    o = rules.outlier_detection
    if not o.enabled:
        return "ejection: off"
    return (f"ejection: an endpoint after {o.consecutive_connect_failures} connect failures, a gateway after "
            f"{o.consecutive_gateway_errors} errors, for {format_duration(o.base_ejection_time)} x ejections "
            f"(at most {format_duration(o.max_ejection_time)}), at most {o.max_ejection_percent:g}% of endpoints")


def _live(state: Any, now: float) -> tuple[list[str], dict[str, Any]]:
    ejected = []
    for kind, key, left, count in sorted(state.outliers.ejections(now), key=lambda e: (e[0], str(e[1]))):
        what = f"gateway {key[1]} of {key[0]}" if kind == "gateway" else f"endpoint {key[1]}:{key[2]} of {key[0]}"
        ejected.append({"kind": kind, "what": what, "secondsLeft": round(left, 1), "ejections": count})
    b = state.breaker
    live = {"ejected": ejected, "connections": b.connections, "pending": b.pending,
            "siteConnections": dict(b.site_connections), "sitePending": dict(b.site_pending),
            "rejected": {v.value: n for v, n in b.rejected.items()},
            "retrying": state.budget.retrying, "retriesAllowed": state.budget.allowance()}
    lines = [f"ejected now: {e['what']} ({e['secondsLeft']:.0f}s left, ejection {e['ejections']})" for e in ejected]
    return lines or ["ejected now: nothing"], live


def _breaker(rules: Rules, state: Any | None) -> str:
    cb = rules.circuit_breaker
    text = f"circuit breaker: service {limits_text(cb.service)}; per site {limits_text(cb.per_site)}"
    if state is not None:
        b = state.breaker
        sites = ", ".join(f"{s} {n}" for s, n in sorted(b.site_connections.items()))
        rejected = ", ".join(f"{v.value} {n}" for v, n in sorted(b.rejected.items()))
        text += f"; now {b.connections} open, {b.pending} pending" + (f" ({sites})" if sites else "") + (
            f"; rejected since start: {rejected}" if rejected else "")
    return text


def _timeouts(rules: Rules) -> str:
    t = rules.timeouts
    most = "none" if t.max_connection_duration is None else format_duration(t.max_connection_duration)
    return (f"timeouts: connect {format_duration(t.connect)} in all, {format_duration(t.connect_per_try)} per try, "
            f"idle {format_duration(t.idle)}, max duration {most}")


def _retries(rules: Rules, state: Any | None) -> str:
    r = rules.retries
    text = (f"retries: {r.attempts} attempt(s) in all, before the first byte; backoff "
            f"{format_duration(r.backoff.base)}..{format_duration(r.backoff.max)}, budget {r.budget.percent:g}% of "
            f"connections in progress (at least {r.budget.min_retries})")
    if state is not None:
        text += f"; now {state.budget.retrying} retrying"
    return text


def _faults(faults: list[tuple[int, FaultRule]], from_site: str) -> list[str]:
    if not faults:
        return [f"faults: none for clients of {from_site}"]
    out = []
    for i, f in faults:
        what = [*([f"delay {format_duration(f.delay.fixed)} on {f.delay.percent:g}%"] if f.delay else []),
                *([f"abort ({f.abort.kind.value}) {f.abort.percent:g}%"] if f.abort else [])]
        to = ", ".join(f.destination_sites) if f.destination_sites else "any site"
        out.append(f"fault rule {i + 1} for clients of {from_site}, routed to {to}: {' and '.join(what)}")
    return out
