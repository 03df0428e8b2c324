"""`meshfed explain NAME`: what DNS answers for a name at a site and why, which routes the egress would try
in which order and why, which gateway, what the access policy says; with `live`, a real stream's timings.

`explain` is pure (the view, the addresses DNS serves here, the access state and the gateways' health come
in as arguments); `live` is the shell part that opens a tunnel. The traffic policy's step is
`federation.agent.trafficexplain`.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from federation.agent.trafficexplain import traffic_step
from federation.core.errors import ConfigError
from federation.core.policy.access import AccessState, Peer, decide
from federation.core.policy.model import TrafficPolicy
from federation.core.records import ServiceType
from federation.core.view import FederatedService, MeshView
from gateway.balancing import Direct, ViaGateway, endpoint_targets, find_port, routes
from gateway.preamble import Request
from gateway.tls import current


@dataclass(frozen=True, slots=True)
class Question:
    """What to explain: a service (and port) as seen from a site."""

    namespace: str
    name: str
    port: str | None
    from_site: str
    hostname: str | None = None
    qname: str = ""


def parse_name(name: str, zone: str, from_site: str, port: str | None) -> Question:
    """`ns/name`, `name.ns.svc.<zone>` or `host.name.ns.svc.<zone>`; ConfigError when it is neither."""
    if "/" in name:
        ns, _, svc = name.partition("/")
        return Question(ns, svc, port, from_site, qname=f"{svc}.{ns}.svc.{zone}")
    qname = name.rstrip(".").lower()
    suffix = f".svc.{zone.rstrip('.')}"
    if not qname.endswith(suffix):
        raise ConfigError(f"{name} is not in the federated zone {zone} (DNS forwards it): give NAMESPACE/NAME "
                          f"or NAME.NAMESPACE.svc.{zone}")
    labels = qname[: -len(suffix)].split(".")
    if len(labels) == 2:
        return Question(labels[1], labels[0], port, from_site, qname=qname)
    if len(labels) == 3:
        return Question(labels[2], labels[1], port, from_site, hostname=labels[0], qname=qname)
    raise ConfigError(f"{name}: expected NAME.NAMESPACE.svc.{zone} (or HOST.NAME.NAMESPACE.svc.{zone})")


def explain(view: MeshView, own_site: str, q: Question, addresses: Mapping[tuple[str, str], Any],
            access: AccessState, trust_domain: str, health: Mapping[str, str],
            unreachable: Collection[str] = (), policies: Mapping[tuple[str, str], TrafficPolicy] | None = None,
            state: Any | None = None, now: float = 0.0) -> dict[str, Any]:
    """The explanation, step by step. `addresses`: what DNS serves here (VIP or ClusterIP, by service);
    `health`: site -> ALIVE/DOWN (from the prober), for the gateway routes; `policies`: the traffic policies
    in force, `state` the egress's live state of the service (gateway.enforcing), at monotonic time `now`."""
    steps: list[dict[str, Any]] = []
    out: dict[str, Any] = {"name": q.qname, "service": f"{q.namespace}/{q.name}", "from": q.from_site, "steps": steps}
    svc = view.service(q.namespace, q.name)
    src = view.sites.get(q.from_site)
    if src is None:
        steps.append(_step("site", f"site {q.from_site} is not in the registry", ok=False))
        return out
    if svc is None:
        steps.append(_step("dns", f"NXDOMAIN: no site exports {q.namespace}/{q.name}", ok=False,
                           why="a name exists only while some site exports the service (meshfed registry ls)"))
        return out
    steps.append(_dns(view, own_site, q, svc, addresses, src.kind, unreachable))
    port = find_port(svc.ports, int(q.port) if q.port and q.port.isdigit() else q.port) if q.port else \
        (svc.ports[0] if svc.ports else None)
    if port is None:
        steps.append(_step("port", f"{q.namespace}/{q.name} has no port {q.port}: ports "
                           + ", ".join(f"{p.name}/{p.port}" for p in svc.ports), ok=False))
        return out
    steps.append(_step("port", f"{port.name} ({port.port}/{port.protocol.value})"))
    steps.append(_policy(view, q, src.network, access, trust_domain))
    steps.append(_routes(view, q, svc, port.name, health))
    steps.append(traffic_step(policies or {}, view, svc, port, q.from_site, own_site, state, now))
    out["port"] = port.name
    return out


def _step(what: str, answer: str, ok: bool = True, why: str = "", **extra: Any) -> dict[str, Any]:
    return {"step": what, "ok": ok, "answer": answer, "why": why, **extra}


def _dns(view: MeshView, own_site: str, q: Question, svc: FederatedService,
         addresses: Mapping[tuple[str, str], Any], kind: str, unreachable: Collection[str]) -> dict[str, Any]:
    key = (q.namespace, q.name)
    if svc.type is ServiceType.HEADLESS or q.hostname:
        ready = [(e.site, ep.hostname, ep.addresses[0]) for e in svc.exports for ep in e.endpoints
                 if ep.ready and ep.addresses and (q.hostname is None or ep.hostname == q.hostname)]
        answer = ", ".join(f"{a} ({s}{'/' + h if h else ''})" for s, h, a in ready) or "NODATA (no ready endpoint)"
        return _step("dns", answer, ok=bool(ready), why="a headless service: one record per ready endpoint of "
                     "every exporting site (no VIP)")
    if q.from_site == own_site:
        served = list(addresses.get(key, ()))
        why = ("a VM site: the mesh-wide VIP allocated in etcd (mesh/vips/services/"
               f"{q.namespace}/{q.name}), held on the VIP interface or captured" if kind == "vm"
               else "a Kubernetes site: the ClusterIP of the derived Service the agent made for the import")
        if unreachable and set(svc.sites) & set(unreachable):
            why += f"; sites whose gateway failed lately are answered last: {', '.join(sorted(unreachable))}"
        return _step("dns", ", ".join(str(a) for a in served) or "NODATA (no address yet: VIP allocation or "
                     "ClusterIP pending)", ok=bool(served), why=why)
    vip = view.vips.get(key)
    if kind == "vm":
        got = ", ".join(vip.addresses) if vip is not None else ""
        return _step("dns", got or "NODATA (no VIP allocated yet)", ok=bool(got),
                     why=f"{q.from_site} is a VM site: it answers the mesh-wide VIP from etcd")
    return _step("dns", "the ClusterIP of the derived Service at " + q.from_site + " (not known here)",
                 why=f"{q.from_site} is a Kubernetes site; ask it: meshfed explain there, or kubectl get svc")


def _policy(view: MeshView, q: Question, network: str, access: AccessState, trust_domain: str) -> dict[str, Any]:
    src = view.sites[q.from_site]
    gw = src.gateways[0].name if src.gateways else "gateway"
    peer = Peer(q.from_site, network, f"spiffe://{trust_domain}/site/{q.from_site}/gateway/{gw}")
    d = decide(access, (q.namespace, q.name), peer)
    return _step("access-policy", f"{'allowed' if d.allowed else 'DENIED'} for site {q.from_site} (rule {d.rule})",
                 ok=d.allowed, why=d.reason + " (checked at the egress of the client's site and again at the "
                 "gateway that receives the stream; meshfed policy check)")


def _routes(view: MeshView, q: Question, svc: FederatedService, port: str,
            health: Mapping[str, str]) -> dict[str, Any]:
    own = view.sites[q.from_site]
    listed = []
    for r in routes(view, q.from_site, q.namespace, q.name, port):
        if isinstance(r, Direct):
            listed.append({"kind": "direct", "site": r.site, "to": f"{r.target.address}:{r.target.port}",
                           "why": "same network" if r.site != q.from_site else "this site's own endpoint"})
        elif isinstance(r, ViaGateway):
            other = view.sites[r.site]
            tier = ("same zone" if other.locality.region == own.locality.region and other.locality.zone
                    == own.locality.zone and own.locality.zone else "same region"
                    if own.locality.region and other.locality.region == own.locality.region else "another region")
            listed.append({"kind": "gateway", "site": r.site, "to": f"{r.gateway.address}:{r.gateway.port}",
                           "gateway": r.gateway.name, "health": health.get(r.site, "not probed"),
                           "why": f"network {other.network}, {tier}"})
    left_out = []
    for e in svc.exports:
        site = view.sites.get(e.site)
        p = find_port(e.ports, port)
        if site is None:
            left_out.append(f"{e.site}: no site record")
        elif p is None or not svc.serves(e.site, port):
            left_out.append(f"{e.site}: exports port {port} differently (MCS conflict: its traffic goes elsewhere)")
        elif not endpoint_targets(e, p):
            left_out.append(f"{e.site}: no ready endpoint")
        elif site.network != own.network and not site.gateways:
            left_out.append(f"{e.site}: on network {site.network} without a gateway")
    return _step("routes", f"{len(listed)} route(s), tried in this order until one accepts (at most 4 per "
                 "connection)" if listed else "no route: a client would be reset", ok=bool(listed),
                 why="endpoints on our own network first (direct connect), then gateways of other sites: same "
                 "zone, then same region, then any; rotated per connection within each tier",
                 routes=listed, leftOut=left_out)


async def live(prober: Any, view: MeshView, q: Question, port: str) -> dict[str, Any]:
    """A real stream through the first gateway route (handshake and answer timed), from this site."""
    for r in routes(view, q.from_site, q.namespace, q.name, port):
        if isinstance(r, ViaGateway):
            t0 = time.perf_counter()
            result = await prober.stream(r.site, r.gateway, Request(q.namespace, q.name, port, q.hostname))
            took = time.perf_counter() - t0
            return _step("live", f"{'stream OK' if result.ok else 'FAILED: ' + result.reason} through "
                         f"{r.site} {r.gateway.address}:{r.gateway.port}", ok=result.ok,
                         why="a fresh mTLS tunnel, the identity of that site's gateway checked, then a stream request",
                         handshakeMs=_ms(result.handshake), answerMs=_ms(result.rtt), totalMs=_ms(took))
        if isinstance(r, Direct):
            return _step("live", f"the first route is direct to {r.target.address}:{r.target.port}: no tunnel to "
                         "time", why="same network")
    return _step("live", "no route to try", ok=False)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def explain_document(own_site: str, zone: str, view: MeshView, plane: Any,
                           query: Mapping[str, str]) -> dict[str, Any]:
    """The /explain document: `?name=` (required), `?from=`, `?port=`, `?live=1`; ConfigError for a bad one."""
    unknown = sorted(set(query) - {"name", "from", "port", "live"})
    if unknown or not query.get("name"):
        raise ConfigError(f"/explain takes name (required), from, port, live; got {', '.join(query) or 'nothing'}")
    q = parse_name(query["name"], zone, query.get("from") or own_site, query.get("port") or None)
    egress = plane.egress if plane is not None else None
    access = plane.access.get() if plane is not None and plane.access is not None else AccessState()
    trust = plane.certs.trust if plane is not None and plane.certs is not None else None
    domain = current(trust).trust_domain if trust is not None else "cluster.local"
    prober = plane.prober if plane is not None else None
    health = {k[0]: st.describe(0.0, None, [])["state"] for k, st in prober.states.items()} if prober else {}
    enforcer = egress.enforcer if egress is not None else None
    policies = enforcer.policies.get() if enforcer is not None and enforcer.policies is not None else {}
    out = explain(view, own_site, q, plane.addresses.get() if plane is not None else {}, access, domain, health,
                  egress.unreachable.get() if egress is not None else (), policies,
                  enforcer.state(q.namespace, q.name) if enforcer is not None else None, time.monotonic())
    if query.get("live") in ("1", "true", "yes") and "port" in out:
        if prober is None or q.from_site != own_site:
            out["steps"].append(_step("live", "not run: only from this site, and only with a gateway", ok=False))
        else:
            out["steps"].append(await live(prober, view, q, out["port"]))
    return out
