"""`meshfed verify`: active checks from this site to every other (or one), one PASS/FAIL/WARN line each.

The agent runs the checks that need its identity and view (its /verify: site records, gateways, mTLS,
clock skew, a stream per imported service, certificates, open files, VIP ranges; see
federation/agent/verifying.py). This process adds what is seen from outside the agent: the agent answering,
its DNS port, DNS answers against the registry, the VIPs and capture rules the status claims, and etcd
reachable with the agent's registry credentials and the permissions a site needs (read the mesh, write
its own prefix, and no more). Exit 0: no FAIL; 1: a FAIL; 2: usage.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from federation.agent.settings import ADMIN_ADDR_FILE, AgentSettings, load_settings
from federation.agent.verdicts import FAIL, PASS, WARN, exit_code, line
from federation.cli.resolve import ask_a
from federation.core.errors import ConfigError, RegistryUnavailable
from federation.core.keys import Keys
from federation.registry.etcd import EtcdClient
from federation.sources.vm.nftables import CaptureUnavailable, NftCapture

VERIFY_TIMEOUT = 120.0
"""Seconds the agent may take for its checks: a thousand sites at 16 at a time, most answering in ms."""


def add_commands(sub: Any) -> None:
    """Register `verify`."""
    p = sub.add_parser("verify", help="check from this site that every other site (or one) is reachable and agrees")
    p.add_argument("--config", default="/etc/meshfed/agent.yaml", help="agent config file (finds the agent)")
    p.add_argument("--site", help="only this site")
    p.add_argument("--service", help="only this service (NAMESPACE/NAME)")
    p.add_argument("--json", action="store_true", help="print the lines as JSON")
    p.set_defaults(handler=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    """0: nothing failed; 1: a check failed; 2: usage (bad options, unreadable config)."""
    if args.service is not None and (args.service.count("/") != 1 or "*" in args.service):
        print(f"meshfed: --service {args.service!r} is not NAMESPACE/NAME", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 2
    report = run_checks(settings, args.site, args.service)
    print(json.dumps(report, indent=2) if args.json else format_verify(report))
    return exit_code(report["lines"])


def run_checks(settings: AgentSettings, site: str | None, service: str | None) -> dict[str, Any]:
    """Every line: the agent's own checks first, then the ones made from this process."""
    query = {k: v for k, v in (("site", site), ("service", service)) if v}
    suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
    lines: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    status = _get(settings, "/status" + suffix, 10.0)
    if status is None:
        lines.append(line("agent", settings.site.name, FAIL, time.perf_counter() - t0,
                          f"no agent answers for {settings.source}",
                          f"systemctl status meshfed / the agent's log; meshfed agent --config {settings.source}"))
        lines.extend(_dns_ports_free(settings))
        lines.extend(asyncio.run(_etcd(settings, list(settings.registry.endpoints), [site] if site else [])))
        return {"site": settings.site.name, "lines": lines}
    lines.append(line("agent", settings.site.name, PASS, time.perf_counter() - t0, "the admin endpoint answers"))
    agent = _get(settings, "/verify" + suffix, VERIFY_TIMEOUT)
    if agent is None:
        lines.append(line("agent", "/verify", FAIL, None, "the agent did not answer /verify",
                          "the agent's log; meshfed status"))
    else:
        lines.extend(agent["lines"])
    lines.extend(_dns(status))
    lines.extend(_vips_and_capture(status))
    seen = [ln["subject"] for ln in lines if ln["check"] == "site-record" and ln["result"] == PASS]
    lines.extend(asyncio.run(_etcd(settings, status["registry"]["endpoints"], seen)))
    return {"site": settings.site.name, "lines": lines}


def format_verify(report: dict[str, Any]) -> str:
    """One line per check (and a `next:` line under each that did not pass), then the counts."""
    lines = report["lines"]
    width = max([len(ln["subject"]) for ln in lines] + [10])
    out = [f"verify from site {report['site']}"]
    for ln in lines:
        took = "" if ln["seconds"] is None else f"{ln['seconds'] * 1000:.1f}ms"
        out.append(f"{ln['result']:4}  {ln['check']:<12} {ln['subject']:<{width}}  {took:>9}  {ln['detail']}")
        if ln["next"]:
            out.append(f"{'':6}{'':12} next: {ln['next']}")
    counts = {r: sum(1 for ln in lines if ln["result"] == r) for r in (FAIL, WARN, PASS)}
    out.append(f"{counts[FAIL]} failed, {counts[WARN]} warning(s), {counts[PASS]} passed")
    return "\n".join(out)


def _get(settings: AgentSettings, path: str, timeout: float) -> dict[str, Any] | None:
    try:
        addr = (settings.state_dir / ADMIN_ADDR_FILE).read_text().strip()
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _dns_ports_free(settings: AgentSettings) -> list[dict[str, Any]]:
    """With no agent running: is a configured DNS port held by another process (the agent could not bind it)?"""
    if not settings.dns.enabled:
        return []
    out = []
    for kind, addresses in ((socket.SOCK_DGRAM, settings.dns.udp), (socket.SOCK_STREAM, settings.dns.tcp)):
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            host = host.strip("[]")
            if not port.isdigit() or int(port) == 0:
                continue
            proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
            subject = f"{host}:{port}/{proto}"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, kind) as sock:
                try:
                    sock.bind((host, int(port)))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        out.append(line("dns-port", subject, FAIL, None, "held by another process: the agent "
                                        "cannot serve DNS there", f"ss -lnp 'sport = :{port}' (systemd-resolved, "
                                        "dnsmasq?); or move dns.udp/dns.tcp"))
                        continue
                    out.append(line("dns-port", subject, WARN, None, f"cannot bind it here: {exc}"))
                    continue
            out.append(line("dns-port", subject, PASS, None, "free (nothing else holds it)"))
    return out


def _dns(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent's DNS answers, as a client here asks them, against the addresses the registry gives."""
    d = status.get("dns")
    if not d or not d.get("udp"):
        return []
    host, _, port = d["udp"][0].rpartition(":")
    host = host.strip("[]")
    out = []
    for imp in status.get("imports", []):
        ns, name = imp["service"].split("/", 1)
        qname = f"{name}.{ns}.svc.{d['zone']}"
        t0 = time.perf_counter()
        try:
            got, rcode = ask_a(qname, host, int(port))
        except OSError as exc:
            out.append(line("dns", qname, FAIL, time.perf_counter() - t0, f"no answer from {host}:{port}: {exc}",
                            "meshfed status (dns); the agent's log"))
            continue
        took = time.perf_counter() - t0
        want = sorted(v for v in imp.get("vips", []) if ":" not in v)
        if want and got != want:
            out.append(line("dns", qname, FAIL, took, f"answers {', '.join(got) or rcode}, the registry says "
                            f"{', '.join(want)}", f"meshfed resolve {qname}; meshfed registry ls --service "
                            f"{imp['service']}"))
        elif not got:
            out.append(line("dns", qname, WARN if not want else FAIL, took, f"no A record ({rcode})",
                            f"meshfed registry ls --service {imp['service']} (a headless service with no ready "
                            "endpoint?)"))
        else:
            out.append(line("dns", qname, PASS, took, f"{', '.join(got)} as the registry says" if want
                            else f"{len(got)} endpoint address(es) (headless)"))
    return out


def _vips_and_capture(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The VIPs on the interface and the nft table, where /status says they are."""
    out = []
    vif = status.get("vipInterface")
    if vif and vif.get("addresses"):
        run = subprocess.run(["ip", "-j", "addr", "show", "dev", vif["name"]], capture_output=True, text=True,
                             timeout=10, check=False)
        held = {f"{a['local']}/{a['prefixlen']}" for i in (json.loads(run.stdout or "[]")) for a in i["addr_info"]}
        bare = {h.split("/")[0] for h in held}
        missing = [a for a in vif["addresses"] if a not in held and a.split("/")[0] not in bare]
        out.append(line("vips", vif["name"], FAIL if missing else PASS, None,
                        f"missing on the interface: {', '.join(missing[:5])}" if missing
                        else f"{len(vif['addresses'])} address(es) in place",
                        f"ip addr show dev {vif['name']}; the agent's log (netlink)"))
    table = (status.get("egress") or {}).get("table")
    if table:
        # `table` is what /status says: the family and the name ("inet meshfed"); nftables.py runs nft.
        try:
            found = asyncio.run(NftCapture((), table=table.split()[-1]).installed())
            problem = None if found is not None else f"nft list table {table}: Error: No such file or directory"
        except CaptureUnavailable as exc:
            problem = f"nft list table {table}: {exc.reason}"
        out.append(line("capture", table, PASS if problem is None else FAIL, None,
                        problem or "the redirect rules are in place",
                        "the agent's log (egress capture); restart the agent to install them again"))
    return out


async def _etcd(settings: AgentSettings, endpoints: list[str], sites: list[str]) -> list[dict[str, Any]]:
    """etcd reachable with the agent's credentials; reading the mesh and writing its own prefix allowed,
    writing another site's not; site records bound to a lease (a record without one outlives its agent)."""
    eps = [e for e in endpoints if e and e != "embedded"]
    if not eps:
        return [line("etcd", "registry", FAIL, None, "no etcd endpoint known", "registry.endpoints in the config")]
    keys = Keys(settings.registry.prefix)
    own = settings.site.name
    client = EtcdClient(eps, tls=settings.registry.tls, timeout=settings.registry.timeout, name="verify")
    out = []
    t0 = time.perf_counter()
    try:
        async with client:
            kv = await client.get(keys.site(own))
            out.append(line("etcd", ",".join(eps), PASS, time.perf_counter() - t0, "reachable; the registry reads"))
            for site in sites:
                kv = await client.get(keys.site(site))
                if kv is not None and kv.lease == 0:
                    out.append(line("record-lease", site, FAIL, None, "the site record is bound to no lease: "
                                    "nothing removes it when its agent stops (written by hand, or left over)",
                                    f"if {site} is gone: etcdctl del {keys.site(site)}; else restart its agent"))
            out.extend(await _permissions(client, keys, own))
    except RegistryUnavailable as exc:
        out.append(line("etcd", ",".join(eps), FAIL, time.perf_counter() - t0, str(exc),
                        "registry.endpoints and registry.tls; etcdctl endpoint health with the same certificates"))
    return out


async def _permissions(client: EtcdClient, keys: Keys, own: str) -> list[dict[str, Any]]:
    # A compare that never holds: etcd checks the permission of every operation in a transaction, run or not,
    # so this asks "may I write there?" without writing.
    never = b"\0meshfed verify: never the value\0"
    out = []
    try:
        await client.replace(keys.site(own) + "/verify-permission", never, b"")
        out.append(line("etcd-write", keys.site(own), PASS, None, "may write its own prefix"))
    except RegistryUnavailable as exc:
        out.append(line("etcd-write", keys.site(own), FAIL, None, f"may not write its own prefix: {exc}",
                        "the etcd role of this site (deploy/etcd/rbac.sh)"))
    stranger = keys.site("meshfed-verify-stranger")
    try:
        await client.replace(stranger, never, b"")
        out.append(line("etcd-write", keys.sites(), WARN, None, "may write other sites' keys too (no etcd RBAC)",
                        "give each site a role that writes only its own prefix (deploy/etcd/rbac.sh)"))
    except RegistryUnavailable:
        out.append(line("etcd-write", keys.sites(), PASS, None, "may not write other sites' keys"))
    return out
