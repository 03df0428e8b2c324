"""`meshfed explain NAME`: step by step, what DNS answers, which routes the egress tries and why, the access
policy, and the traffic policy's effect (split, ejections, breaker, timeouts, retries, faults)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from federation.agent.settings import ADMIN_ADDR_FILE, load_settings
from federation.core.errors import ConfigError


def add_commands(sub: Any) -> None:
    """Register `explain`."""
    p = sub.add_parser("explain", help="what DNS answers for a name, which routes and gateway, what the policy says")
    p.add_argument("name", help="NAMESPACE/NAME or NAME.NAMESPACE.svc.<zone> (or HOST.NAME.NAMESPACE.svc.<zone>)")
    p.add_argument("--from", dest="from_site", help="as seen from this site (default: the agent's own)")
    p.add_argument("--port", help="a port name or number (default: the service's first port)")
    p.add_argument("--live", action="store_true", help="open a real tunnel and a stream, and time them")
    p.add_argument("--config", default="/etc/meshfed/agent.yaml", help="agent config file (finds the agent)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    """0: every step answers; 1: a step finds a problem (no such service, no route, denied) or no agent; 2: usage."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 2
    query = {"name": args.name, **({"from": args.from_site} if args.from_site else {}),
             **({"port": args.port} if args.port else {}), **({"live": "1"} if args.live else {})}
    try:
        addr = (settings.state_dir / ADMIN_ADDR_FILE).read_text().strip()
        with urllib.request.urlopen(f"http://{addr}/explain?{urllib.parse.urlencode(query)}", timeout=60) as resp:
            data: dict[str, Any] = json.load(resp)
    except urllib.error.HTTPError as exc:
        print(f"meshfed: {exc.read().decode().strip()}", file=sys.stderr)
        return 2 if exc.code == 400 else 1
    except (OSError, ValueError):
        print(f"meshfed: no agent answers for {settings.source} "
              f"(is `meshfed agent --config {settings.source}` running?)", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_explain(data))
    return 0 if all(step["ok"] for step in data["steps"]) else 1


def format_explain(data: dict[str, Any]) -> str:
    """The numbered steps, each with its why, routes listed in the order they are tried."""
    out = [f"explain {data['name']} ({data['service']}) from site {data['from']}"]
    for i, step in enumerate(data["steps"], 1):
        mark = "" if step["ok"] else "  <-- problem"
        out.append(f"{i}. {step['step']:<15}{step['answer']}{mark}")
        for n, r in enumerate(step.get("routes", []), 1):
            via = f"gateway {r['gateway']} of {r['site']} at {r['to']}, {r['health']}" if r["kind"] == "gateway" \
                else f"direct to {r['to']} ({r['site']})"
            out.append(f"{'':18}{n}) {via}: {r['why']}")
        for left in step.get("leftOut", []):
            out.append(f"{'':18}left out: {left}")
        for line in step.get("details", []):
            out.append(f"{'':18}{line}")
        if step.get("handshakeMs") is not None and step.get("answerMs") is not None:
            out.append(f"{'':18}handshake {step['handshakeMs']:.1f}ms, stream answer {step['answerMs']:.1f}ms, "
                       f"total {step['totalMs']:.1f}ms")
        if step["why"]:
            out.append(f"{'':18}why: {step['why']}")
    return "\n".join(out)
