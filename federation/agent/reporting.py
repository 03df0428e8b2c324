"""The registry as an operator reads it: a JSON-ready report and a text table. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from federation.agent.selection import EVERYTHING, Selection
from federation.core.meshdocs import Revoked
from federation.core.view import MeshView


def registry_report(
    view: MeshView, rejected: Mapping[str, str], *, source: str, stale: bool = False, staleness: float = 0.0,
    error: str | None = None, revoked: Mapping[str, Revoked] | None = None,
    signed: Mapping[str, tuple[int, int]] | None = None, selection: Selection = EVERYTHING,
) -> dict[str, Any]:
    """Sites, services with their endpoints and origin site, conflicts, rejected records and staleness;
    `signed`: site -> (records carrying a signature, records), where the reader counted them.

    `selection` keeps one site, some services or a page of them; the work is that of what is shown
    (plus sorting the service names), so one page answers quickly at any mesh size.
    """
    every = view.services()
    only = selection.site
    candidates = every.keys() if only is None else [k for k, svc in every.items() if only in svc.sites]
    keys, next_cursor, matched = selection.page(candidates)
    services = []
    for ns, name in keys:
        svc = every[(ns, name)]
        services.append(
            {
                "namespace": ns,
                "name": name,
                "type": svc.type.value,
                "ports": [f"{p.name}/{p.port}/{p.protocol.value}" for p in svc.ports],
                "sites": list(svc.sites),
                "endpoints": [
                    {
                        "site": e.site,
                        "addresses": list(ep.addresses),
                        "ready": ep.ready,
                        **({"hostname": ep.hostname} if ep.hostname else {}),
                    }
                    for e in svc.exports
                    if only is None or e.site == only
                    for ep in e.endpoints
                ],
                "conflicts": [{"site": c.site, "kind": c.kind, "kinds": list(c.kinds), "reason": c.reason}
                              for c in svc.conflicts],
            }
        )
    return {
        "source": source,
        "revision": view.revision,
        "stale": stale,
        "stalenessSeconds": round(staleness, 1) if staleness != float("inf") else None,
        "error": error,
        "sites": [
            {
                "name": s.name,
                "network": s.network,
                "region": s.locality.region,
                "zone": s.locality.zone,
                "kind": s.kind,
                "gateways": [f"{g.address}:{g.port}" for g in s.gateways],
                "agentVersion": s.agent_version,
                **({"signedRecords": list(signed.get(s.name, (0, 0)))} if signed is not None else {}),
            }
            for s in sorted(view.sites.values(), key=lambda s: s.name)
            if only is None or s.name == only
        ],
        "services": services,
        "rejected": [{"key": k, "reason": r} for k, r in sorted(rejected.items())
                     if only is None or f"/sites/{only}/" in k or k.endswith(f"/sites/{only}")],
        "revoked": [{"site": k, "reason": v.reason, "at": v.at} for k, v in sorted((revoked or {}).items())
                    if only is None or k == only],
        **({} if selection == EVERYTHING else
           {"page": selection.report(matched, len(services), next_cursor)}),
    }


def format_report(report: Mapping[str, Any]) -> str:
    """A readable text rendering of `registry_report`."""
    lines = [f"registry: {report['source']} at revision {report['revision']}"]
    if report.get("stale"):
        age = report.get("stalenessSeconds")
        lines.append(
            f"STALE: showing the last known state ({'age unknown' if age is None else f'{age:.0f}s old'}): "
            f"{report.get('error') or 'etcd unreachable'}"
        )
    lines.append("")
    lines.append(f"SITES ({len(report['sites'])})")
    lines.append(_table(["SITE", "NETWORK", "LOCALITY", "KIND", "GATEWAYS", "SIGNED"], [
        [s["name"], s["network"], "/".join(x for x in (s["region"], s["zone"]) if x) or "-", s["kind"],
         ",".join(s["gateways"]) or "-", "{}/{}".format(*s["signedRecords"]) if "signedRecords" in s else "-"]
        for s in report["sites"]
    ]))
    lines.append("")
    page = report.get("page")
    lines.append(f"SERVICES ({len(report['services'])}" + (f" of {page['matched']} matching" if page else "") + ")")
    if page and page.get("next"):
        lines.append(f"  (more: add --after {page['next']})")
    rows = []
    for svc in report["services"]:
        ready = sum(1 for e in svc["endpoints"] if e["ready"])
        rows.append([f"{svc['namespace']}/{svc['name']}", svc["type"], ",".join(svc["ports"]) or "-",
                     ",".join(svc["sites"]), f"{ready}/{len(svc['endpoints'])}"])
    lines.append(_table(["SERVICE", "TYPE", "PORTS", "SITES", "READY"], rows))
    endpoint_rows = [
        [f"{svc['namespace']}/{svc['name']}", e["site"], ",".join(e["addresses"]), "yes" if e["ready"] else "no",
         e.get("hostname", "-")]
        for svc in report["services"]
        for e in svc["endpoints"]
    ]
    if endpoint_rows:
        lines.append("")
        lines.append("ENDPOINTS")
        lines.append(_table(["SERVICE", "SITE", "ADDRESSES", "READY", "HOSTNAME"], endpoint_rows))
    conflicts = [(svc, c) for svc in report["services"] for c in svc["conflicts"]]
    if conflicts:
        lines.append("")
        lines.append("CONFLICTS (told to every export of the service; the oldest export wins each difference)")
        for svc, c in conflicts:
            lines.append(f"  {svc['namespace']}/{svc['name']} from {c['site']}: {c['reason']}")
    if report.get("revoked"):
        lines.append("")
        lines.append("REVOKED SITES (their records are dropped, their gateways refused: meshfed site restore NAME)")
        for r in report["revoked"]:
            lines.append(f"  {r['site']}: {r['reason'] or 'no reason given'}")
    if report["rejected"]:
        lines.append("")
        lines.append("REJECTED RECORDS (skipped)")
        for r in report["rejected"]:
            lines.append(f"  {r['key']}: {r['reason']}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "  (none)"
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def format_status(status: Mapping[str, Any]) -> str:
    """A readable rendering of an agent's /status document."""
    reg = status["registry"]
    state = "STALE" if reg["stale"] else ("synced" if reg["synced"] else "syncing")
    warnings = [c["warning"] for c in status.get("certificates", []) if c.get("warning")]
    held = status["registry"].get("heldBy")
    lines = [f"WARNING: {w}" for w in [*warnings, *status.get("warnings", [])]]
    if held:
        lines.append(f"WARNING: another agent holds this site ({held}): this one writes nothing until it goes")
    lines += [
        f"site {status['site']} ({status['kind']}, network {status['network']}, {status['locality'] or 'no locality'})",
        f"registry: {','.join(reg['endpoints'])}: {state}"
        + (" (a view restored from disk)" if reg.get("view") == "restored" else "")
        + (f", {reg['stalenessSeconds']}s old: {reg['error']}" if reg["stale"] else "")
        + (f", lease {reg['lease']}" if reg.get("lease") else "")
        + (f" ({reg['leaseRemainingSeconds']}s left)" if reg.get("leaseRemainingSeconds") is not None else ""),
    ]
    cfg = status.get("config") or {}
    last = cfg.get("lastReload") or {}
    if last.get("result") == "refused":
        lines.append(f"config: the last reload was REFUSED (running the previous config): {last.get('error')}")
    if cfg.get("needsRestart"):
        lines.append(f"config: changed in the file, waiting for a restart: {', '.join(cfg['needsRestart'])}")
    for c in reg.get("clients", []):
        if c["reachable"] is False:
            lines.append(f"  {c['client']}: CANNOT REACH ETCD for {c['downSeconds'] or 0}s via {c['endpoint']}: "
                         f"{c['error']}")
    gw = status.get("gateway")
    lines.append(f"gateway: listening {gw['listen']}, advertised {gw['advertised']}, certificate valid until "
                 f"{gw['certificateValidUntil']}" if gw else "gateway: off (gateway.ca_dir not set)")
    dns = status.get("dns")
    lines.append(f"dns: zone {dns['zone']} on udp {','.join(dns['udp'])} tcp {','.join(dns['tcp'])}"
                 if dns else "dns: off")
    eg = status.get("egress")
    if eg:
        lines.append(f"egress: capture, {', '.join(eg['ranges'])} -> {eg['capture']} (nft table {eg['table']}), "
                     f"{eg['listeners']} per-port listener(s)" if eg["mode"] == "capture" else
                     f"egress: {eg['listeners']} per-port listener(s); capture off: {eg['reason']}")
    vif = status.get("vipInterface")
    if vif:
        lines.append(f"vip interface {vif['name']}: " + (
            f"FALLBACK: {vif['fallback']}" if vif["fallback"]
            else f"routes the VIP ranges ({', '.join(vif['addresses'])}; capture redirects them)"
            if vif.get("wholeRanges") else f"{len(vif['addresses'])} VIP(s)"))
    lines.append("")
    lines.append("EXPORTED")
    checks = {c["service"]: c for c in status.get("checks", [])}
    rows = []
    for e in status.get("exports", []):
        c = checks.get(e["service"])
        check = ("ok" if c["ready"] else "FAILING") + (f" ({c['detail']})" if c and c["detail"] else "") if c else "-"
        rows.append([e["service"], f"{e['ready']}/{e['endpoints']}", check])
    lines.append(_table(["SERVICE", "READY", "CHECK"], rows))
    lines.append("")
    lines.append("IMPORTED")
    rows = []
    for i in status.get("imports", []):
        listen = ",".join(f"{k}={v}" for k, v in sorted(i["listeners"].items())) or "-"
        via = "; ".join(f"{s['site']} {s['ready']}/{s['endpoints']} via {s['via']}" for s in i["sites"])
        rows.append([i["service"], ",".join(i["vips"]) or "-", listen, via])
    lines.append(_table(["SERVICE", "VIP", "LISTENERS", "SITES"], rows))
    certs = status.get("certificates", [])
    if certs:
        lines.append("")
        lines.append("CERTIFICATES")
        lines.append(_table(["WHAT", "VALID UNTIL", "STATE"], [
            [c["what"], c["notAfter"][:16].replace("T", " ") + "Z", "WARNING" if c.get("warning") else "ok"]
            for c in certs]))
    return "\n".join(lines)
