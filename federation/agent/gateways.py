"""The /gateways document (`meshfed gateways`): every remote gateway the prober watches, paged by site.

`?site=` keeps one site's gateways, `?service=` the gateways of sites behind which a matching service is,
`?limit=`/`?after=` page over `site/gateway` in name order (federation/agent/selection.py).
"""

from __future__ import annotations

from typing import Any

from federation.agent.selection import EVERYTHING, Selection
from gateway.probing import Prober


def gateways_document(site: str, prober: Prober | None, selection: Selection = EVERYTHING,
                      interval: float = 0.0) -> dict[str, Any]:
    """What `meshfed gateways` prints; `prober` None: this site runs no gateway (so probes nothing)."""
    out: dict[str, Any] = {"site": site, "probeIntervalSeconds": interval, "gateways": []}
    if prober is None:
        out["reason"] = "no gateway on this site (gateway.ca_dir is not set): nothing is probed"
        return out
    if interval <= 0:
        out["reason"] = "probes are off (gateway.probe_interval: 0)"
    keys = [k for k in prober.states if selection.site is None or k[0] == selection.site]
    if selection.service is not None:
        keys = [k for k in keys if any(selection.wants_service(*s.split("/", 1)) for s in prober.services.get(k, []))]
    paging = Selection(limit=selection.limit, after=selection.after)
    shown, next_cursor, matched = paging.page(keys)
    out["gateways"] = prober.document(shown)
    if selection != EVERYTHING:
        out["page"] = selection.report(matched, len(shown), next_cursor)
    return out
