"""What `meshfed status` shows (the admin endpoint's /status): this site's registry link, gateway, DNS,
VIP interface, exports with their checks, and imports with the route to each site."""

from __future__ import annotations

from typing import Any

from federation.agent.dataplane import DataPlane
from federation.agent.settings import AgentSettings
from federation.registry.link import Links
from federation.registry.mirror import Mirror
from federation.registry.publisher import Publisher
from gateway.destinations import Captured


def agent_status(settings: AgentSettings, mirror: Mirror | None, publisher: Publisher | None,
                 plane: DataPlane | None, etcd_endpoint: str | None, links: Links | None = None,
                 config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The /status document."""
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
        out.update(_data_plane(plane))
    return out


def _data_plane(plane: DataPlane) -> dict[str, Any]:
    s = plane.settings
    site = s.site.name
    view = plane.mesh.get()
    addresses = plane.addresses.get()
    listeners = plane.egress.listeners() if plane.egress is not None else {}
    capture = plane.egress.capture if plane.egress is not None else None
    captured = capture.index.services if capture is not None else {}
    imports = []
    for (ns, name), svc in view.services().items():
        if all(e.site == site for e in svc.exports):
            continue
        imports.append({
            "service": f"{ns}/{name}",
            "vips": list(addresses.get((ns, name), ())) if plane.dns else [],
            "listeners": {k[2]: f"{h}:{p}" for k, (h, p) in listeners.items() if k[:2] == (ns, name)}
            | _captured_at(captured.get((ns, name))),
            "sites": [
                {"site": e.site, "network": view.sites[e.site].network,
                 "via": "direct" if view.sites[e.site].network == s.site.network
                 else ",".join(f"{g.address}:{g.port}" for g in view.sites[e.site].gateways) or "no gateway",
                 "ready": sum(1 for ep in e.endpoints if ep.ready), "endpoints": len(e.endpoints)}
                for e in svc.exports if e.site in view.sites
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
            "name": vif.name, "fallback": vif.fallback_reason or None,
            "addresses": sorted(str(a) for a in vif.addresses),
        },
        "exports": [{"service": f"{e.namespace}/{e.name}", "ready": sum(1 for ep in e.endpoints if ep.ready),
                     "endpoints": len(e.endpoints)} for e in plane.exports.get()],
        "checks": checks,
        "imports": imports,
    }  # fmt: skip


def _captured_at(c: Captured | None) -> dict[str, str]:
    """Port name -> the VIP:port a client connects to, for a service the capture listener serves."""
    if c is None:
        return {}
    vip = c.vips[0]
    host = f"[{vip}]" if ":" in vip else vip
    return {name: f"{host}:{port}" for name, port in c.ports}
