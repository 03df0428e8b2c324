"""What `meshfed status` shows (the admin endpoint's /status): this site's registry link, gateway, DNS,
VIP interface, exports with their checks, and imports with the route to each site."""

from __future__ import annotations

import datetime as dt
from typing import Any

from federation.agent.dataplane import DataPlane
from federation.agent.identity import Identity
from federation.agent.selection import EVERYTHING, Selection
from federation.agent.settings import AgentSettings
from federation.registry.link import Links
from federation.registry.mirror import Mirror
from federation.registry.publisher import Publisher
from gateway.destinations import Captured

WARN_ROOT = dt.timedelta(days=60)
"""Linkerd's `linkerd check` warns 60 days ahead of a trust anchor's expiry: time for a rotation."""
WARN_SITE_CA = dt.timedelta(days=30)
"""A site intermediate is replaced by hand (a new one from the root, or a join token): a month's notice."""


def expiries(plane: DataPlane | None, identity: Identity | None, now: dt.datetime) -> list[dict[str, Any]]:
    """Every certificate this agent depends on, when it expires, and a warning well before it does.

    Roots and intermediates are replaced by the operator, so they are warned about weeks ahead; the gateway
    leaf and the registry signer renew on their own at half life, so a warning means renewal is failing."""
    out: list[dict[str, Any]] = []

    def add(what: str, cert: Any, warn_within: dt.timedelta | None, renews: bool = False) -> None:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        left = end - now
        if renews:
            warn_within = (end - start) / 2 - (end - start) / 10  # past half life by a tenth: renewal is stuck
        warning = None
        if left <= dt.timedelta(0):
            warning = f"{what} EXPIRED at {end:%Y-%m-%d %H:%M}Z"
        elif warn_within is not None and left <= warn_within:
            warning = (f"{what} expires in {_human(left)} ({end:%Y-%m-%d %H:%M}Z)"
                       + (": its renewal is failing, see the log" if renews else ""))
        out.append({"what": what, "notAfter": end.isoformat(), "secondsLeft": int(left.total_seconds()),
                    "warning": warning})

    trust = identity.trust if identity is not None else None
    if trust is not None:
        for i, root in enumerate(trust.get().roots):
            add(f"mesh root {i + 1} of {len(trust.get().roots)}", root, WARN_ROOT)
    certs = plane.certs if plane is not None else None
    if certs is not None:
        add("site CA", certs.site_ca.cert, WARN_SITE_CA)
        add("gateway certificate", certs.issued.cert, None, renews=True)
    signing = identity.signing if identity is not None else None
    if signing is not None:
        add("registry signer", signing.current.cert, None, renews=True)
    return out


def _human(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.0f} days" if hours >= 48 else f"{hours:.1f} hours"


def agent_status(settings: AgentSettings, mirror: Mirror | None, publisher: Publisher | None,
                 plane: DataPlane | None, etcd_endpoint: str | None, links: Links | None = None,
                 config: dict[str, Any] | None = None, identity: Identity | None = None,
                 selection: Selection = EVERYTHING, now: dt.datetime | None = None) -> dict[str, Any]:
    """The /status document; `selection` keeps some of the imported services (a page of them)."""
    s = settings
    out: dict[str, Any] = {
        "site": s.site.name,
        "network": s.site.network,
        "kind": s.site.kind,
        "locality": f"{s.site.region}/{s.site.zone}".strip("/"),
        "registry": {
            "endpoints": list(s.registry.endpoints) or [etcd_endpoint or "embedded"],
            "synced": bool(mirror and mirror.synced.is_set()),
            "stale": bool(mirror and mirror.stale),
            "stalenessSeconds": None if mirror is None or mirror.staleness() == float("inf")
            else round(mirror.staleness(), 1),
            "error": mirror.error if mirror else None,
            "lease": f"{publisher.lease:x}" if publisher and publisher.lease else None,
            "view": None if mirror is None else "live" if mirror.live.get()
            else "restored" if mirror.restored_at is not None else "none",
            "clients": [link.describe() for link in links or ()],
        },
    }
    if publisher is not None and publisher.lease:
        out["registry"]["leaseRemainingSeconds"] = round(publisher.keeper.remaining(), 1)
    if config is not None:
        out["config"] = config
    if plane is not None:
        out.update(_data_plane(plane, selection))
    out["certificates"] = expiries(plane, identity, now or dt.datetime.now(dt.UTC))
    if publisher is not None and publisher.held_by is not None:
        out["registry"]["heldBy"] = publisher.held_by
    return out


def _data_plane(plane: DataPlane, selection: Selection) -> dict[str, Any]:
    s = plane.settings
    site = s.site.name
    view = plane.mesh.get()
    addresses = plane.addresses.get()
    listeners = plane.egress.listeners() if plane.egress is not None else {}
    capture = plane.egress.capture if plane.egress is not None else None
    captured = capture.index.services if capture is not None else {}
    by_service: dict[tuple[str, str], dict[str, str]] = {}
    for k, (h, p) in listeners.items():
        by_service.setdefault(k[:2], {})[k[2]] = f"{h}:{p}"
    every = view.services()
    only = selection.site
    imported = [k for k, svc in every.items() if any(e.site != site for e in svc.exports)
                and (only is None or only in svc.sites)]
    keys, next_cursor, matched = selection.page(imported)
    imports = []
    for ns, name in keys:
        svc = every[(ns, name)]
        imports.append({
            "service": f"{ns}/{name}",
            "vips": list(addresses.get((ns, name), ())) if plane.dns else [],
            "listeners": by_service.get((ns, name), {}) | _captured_at(captured.get((ns, name))),
            "sites": [
                {"site": e.site, "network": view.sites[e.site].network,
                 "via": "direct" if view.sites[e.site].network == s.site.network
                 else ",".join(f"{g.address}:{g.port}" for g in view.sites[e.site].gateways) or "no gateway",
                 "ready": sum(1 for ep in e.endpoints if ep.ready), "endpoints": len(e.endpoints)}
                for e in svc.exports if e.site in view.sites and (only is None or e.site == only)
            ],
        })  # fmt: skip
    checks = [
        {"service": f"{c.namespace}/{c.name}", "address": c.address, "ready": c.ready, "detail": c.detail}
        for c in (plane.vm.checks.status() if plane.vm is not None else [])
    ]
    vif = plane.vm.vips if plane.vm is not None and s.vm.vip_interface else None
    gateway = plane.site_record.get().gateways
    return {
        "gateway": None if plane.eastwest is None or not gateway else {
            "listen": "{}:{}".format(*plane.eastwest.address),
            "advertised": f"{gateway[0].address}:{gateway[0].port}",
            "certificateValidUntil": plane.certs.issued.cert.not_valid_after_utc.isoformat() if plane.certs else None,
        },
        "egress": None if plane.egress is None else {
            **(plane.capture.status(capture.address if capture else None) if plane.capture is not None else
               {"mode": plane.egress.mode, "capture": None, "ranges": [], "table": None,
                "reason": "a Kubernetes site: derived EndpointSlices point at per-port listeners"}),
            "listeners": len(listeners),
        },
        "dns": None if plane.dns is None else {
            "udp": [f"{h}:{p}" for h, p in plane.dns.udp_addresses],
            "tcp": [f"{h}:{p}" for h, p in plane.dns.tcp_addresses],
            "zone": s.dns.zone,
        },
        "vipInterface": None if vif is None else {
            "name": vif.name, "fallback": vif.fallback_reason or None, "wholeRanges": vif.whole_ranges,
            "addresses": sorted(str(a) for a in vif.addresses),
        },
        "exports": [{"service": f"{e.namespace}/{e.name}", "ready": sum(1 for ep in e.endpoints if ep.ready),
                     "endpoints": len(e.endpoints)} for e in plane.exports.get()],
        "checks": checks,
        "imports": imports,
        **({} if selection == EVERYTHING else {"page": selection.report(matched, len(imports), next_cursor)}),
    }  # fmt: skip


def _captured_at(c: Captured | None) -> dict[str, str]:
    """Port name -> the VIP:port a client connects to, for a service the capture listener serves."""
    if c is None:
        return {}
    vip = c.vips[0]
    host = f"[{vip}]" if ":" in vip else vip
    return {name: f"{host}:{port}" for name, port in c.ports}
