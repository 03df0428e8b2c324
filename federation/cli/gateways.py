"""`meshfed gateways`: every remote gateway this site's agent probes, ALIVE or DOWN, with latencies and tunnels."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from federation.agent.selection import add_selection_options, parse_selection, selection_query
from federation.agent.settings import load_settings
from federation.cli.agent import agent_document
from federation.core.errors import ConfigError


def add_commands(sub: Any) -> None:
    """Register `gateways`."""
    p = sub.add_parser("gateways", help="remote gateways as this site's agent probes them: ALIVE, latency, tunnels")
    p.add_argument("--config", default="/etc/meshfed/agent.yaml", help="agent config file (finds the agent)")
    p.add_argument("--json", action="store_true", help="print the agent's /gateways document")
    add_selection_options(p)
    p.set_defaults(handler=cmd_gateways)


def cmd_gateways(args: argparse.Namespace) -> int:
    """0: printed (whatever the gateways' state); 1: no agent answers; 2: bad options."""
    try:
        settings = load_settings(args.config)
        query = selection_query(args)
        parse_selection(query)
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 2
    data = agent_document(settings, "/gateways" + (f"?{urllib.parse.urlencode(query)}" if query else ""))
    if data is None:
        print(f"meshfed: no agent answers for {settings.source} "
              f"(is `meshfed agent --config {settings.source}` running?)", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_gateways(data))
    return 0


def format_gateways(data: dict[str, Any]) -> str:
    """The table `meshfed gateways` prints."""
    rows = [("SITE", "GATEWAY", "ADDRESS", "ALIVE", "SERVICES", "OUT", "P50", "P95", "P99", "TUNNELS", "POOLED",
             "REASON")]
    notes: dict[str, list[str]] = {}
    for g in data.get("gateways", []):
        q = g.get("latencyMs") or {}
        health = g.get("serviceHealth")  # absent from an older agent's document
        if g["site"] not in notes:  # the same for each gateway of the site
            notes[g["site"]] = [f"  {g['site']}  {name}  {st['state']}  {st['reason']}".rstrip()
                                for name, st in sorted((health or {}).get("notHealthy", {}).items())
                                if st["state"] == "UNHEALTHY" or st["reason"] != "not probed yet"]
        rows.append((g["site"], g["gateway"], g["address"], g["state"], str(len(g["services"])),
                     str(health["unhealthy"]) if health else "-",
                     *(_ms(q.get(k)) for k in ("p50", "p95", "p99")),
                     str(g["tunnels"]["open"]), str(g["tunnels"]["pooled"]),
                     g["reason"] if g["state"] != "ALIVE" else (g["reason"] or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + ("  " + r[-1] if r[-1] else "")
             for r in rows]
    every = data.get("probeIntervalSeconds", 0)
    head = f"gateways probed from site {data['site']} (every {every:g}s; latency over the last minute)"
    if data.get("reason"):
        head += f"\n{data['reason']}"
    if len(rows) == 1:
        lines.append("(no remote gateway: this site imports from no other site)")
    if any(notes.values()):
        lines.append("services not healthy there (OUT: left out of DNS answers and routes by active health):")
        lines.extend(line for site in sorted(notes) for line in notes[site])
    return head + "\n" + "\n".join(line.rstrip() for line in lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms" if value >= 1 else f"{value * 1000:.0f}us"
