"""The /gateways document (`meshfed gateways`): every remote gateway the prober watches, paged by site; and
the warnings `meshfed status` shows from what the prober and the agent already know.

`?site=` keeps one site's gateways, `?service=` the gateways of sites behind which a matching service is,
`?limit=`/`?after=` page over `site/gateway` in name order (federation/agent/selection.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from federation.agent.selection import EVERYTHING, Selection
from federation.agent.verdicts import PASS, SKEW_WARN, files_line
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


def status_warnings(prober: Prober | None, rejected: Mapping[str, str], site_keys: Callable[[str], bool],
                    files: tuple[int, int] | None) -> list[str]:
    """What `meshfed verify` would fail or warn about that the agent knows without asking anyone: gateways
    the prober finds down, services active health leaves out, clock skew it measured, site records refused,
    open files near the limit."""
    out = []
    for (site, name), state in sorted((prober.states if prober is not None else {}).items()):
        last = state.last
        if last is None:
            continue
        if not last.ok:
            out.append(f"gateway {name} of site {site} is DOWN: {last.reason} (meshfed verify --site {site})")
        elif last.skew is not None and abs(last.skew) >= SKEW_WARN:
            out.append(f"the clock of site {site} is {last.skew:+.1f}s from ours (meshfed verify --site {site})")
    if prober is not None:
        table = prober.service_probes.table
        down = sorted(table.unhealthy)
        for site, ns, name in down[:5]:
            out.append(f"service {ns}/{name} at site {site} is left out of DNS answers and routes: "
                       f"{table.states[(site, ns, name)].reason} (meshfed gateways --site {site})")
        if len(down) > 5:
            out.append(f"{len(down) - 5} more services at other sites are left out by active health (meshfed gateways)")
    refused = [(k, r) for k, r in sorted(rejected.items()) if site_keys(k)]
    for key, reason in refused[:5]:
        out.append(f"site record {key} is refused: {reason} (meshfed registry ls)")
    if len(refused) > 5:
        out.append(f"{len(refused) - 5} more site records are refused (meshfed registry ls)")
    if files is not None and files[1]:
        ln = files_line(*files)
        if ln["result"] != PASS:
            out.append(f"open files: {ln['detail']} ({ln['next']})")
    return out
