"""The federation as this agent sees it, for the /ui page and `meshfed status --json` (its `topology` part).

Sites grouped by network and locality, each with its gateways and this site's link to it (direct on our
network, else through its gateway: healthy, or unreachable as the egress found lately), the propagation lag
from it (its heartbeat), and a page of services with the sites that back them and their readiness. Pure: it
reads an immutable view and plain values. Sites are listed in full (a 1,000-site mesh is ~200 KB); the page
draws networks with many sites as one group. Services follow the document's selection (`?service=`,
`?limit=`, `?after=`), so a page of them costs the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from federation.agent.selection import Selection
from federation.core.view import MeshView


def topology(view: MeshView, here: str, unreachable: frozenset[str], lag: Mapping[str, Mapping[str, Any]],
             selection: Selection, probes: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The `topology` document: `sites`, `networks` (name -> site count, localities) and a page of `services`.

    `probes` (site -> {alive, latencyMs}), when the agent has active probes, says more of each gateway link.
    """
    own = view.sites.get(here)
    our_network = own.network if own is not None else None
    exported: dict[str, int] = {}
    for site, _ns, _name in view.exports:
        exported[site] = exported.get(site, 0) + 1
    sites = []
    networks: dict[str, dict[str, Any]] = {}
    for name in sorted(view.sites):
        s = view.sites[name]
        locality = "/".join(p for p in (s.locality.region, s.locality.zone) if p) or "-"
        net = networks.setdefault(s.network, {"sites": 0, "localities": {}})
        net["sites"] += 1
        net["localities"][locality] = net["localities"].get(locality, 0) + 1
        link: dict[str, Any]
        if name == here:
            link = {"via": "self", "health": "ok"}
        elif s.network == our_network:
            link = {"via": "direct", "health": "ok"}
        elif not s.gateways:
            link = {"via": "none", "health": "no-gateway"}
        else:
            link = {"via": "gateway", "health": "unreachable" if name in unreachable else "ok"}
        probe = (probes or {}).get(name)
        if probe is not None:
            link["alive"] = probe.get("alive")
            link["latencyMs"] = probe.get("latencyMs")
            if probe.get("alive") is False:
                link["health"] = "unreachable"
        beat = lag.get(name)
        sites.append({
            "name": name, "network": s.network, "locality": locality, "kind": s.kind,
            "gateways": [f"{g.address}:{g.port}" for g in s.gateways], "exports": exported.get(name, 0),
            "link": link,
            "lagSeconds": beat.get("lagSeconds") if beat else None,
            "heartbeatOverdue": beat.get("overdue") if beat else None,
        })  # fmt: skip
    every = view.services()
    keys, next_cursor, matched = selection.page(list(every))
    services = []
    for ns, name in keys:
        svc = every[(ns, name)]
        services.append({
            "service": f"{ns}/{name}",
            "sites": [{"site": e.site, "ready": sum(1 for ep in e.endpoints if ep.ready),
                       "endpoints": len(e.endpoints)} for e in svc.exports if e.site in view.sites],
        })
    return {
        "here": here, "network": our_network, "sites": sites, "networks": networks, "services": services,
        "page": selection.report(matched, len(services), next_cursor),
    }
