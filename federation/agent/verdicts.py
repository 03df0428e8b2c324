"""The lines of `meshfed verify` and the pure checks behind some of them: overlaps, clock skew, open files.

A line is a dict (the /verify document's shape, which `meshfed verify --json` prints too):
`{"check", "subject", "result" (PASS|FAIL|WARN), "seconds", "detail", "next"}`; `next` is the next thing to
look at when the result is not PASS. Pure: no IO, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from federation.core.view import MeshView

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

SKEW_WARN = 2.0
"""Seconds of clock skew worth a warning: the lag metric and log times between sites stop lining up."""
SKEW_FAIL = 60.0
"""Seconds of skew that break things: certificates issued by one site are not yet valid at the other (the
issuer backdates leaves by a minute)."""
FILES_WARN = 0.8
"""The share of the open-files limit in use worth a warning; at the limit new tunnels and DNS TCP fail."""
FILES_LOW = 4096
"""An open-files limit below this warns: a large mesh needs more (the agent says so at start, too)."""


def line(check: str, subject: str, result: str, seconds: float | None = None, detail: str = "",
         next_step: str = "") -> dict[str, Any]:
    """One line of the report."""
    return {"check": check, "subject": subject, "result": result,
            "seconds": None if seconds is None else round(seconds, 4), "detail": detail,
            "next": next_step if result != PASS else ""}


def exit_code(lines: Iterable[dict[str, Any]]) -> int:
    """1 if any line failed, else 0."""
    return 1 if any(ln["result"] == FAIL for ln in lines) else 0


def skew_line(site: str, skew: float | None, seconds: float | None) -> dict[str, Any]:
    """The clock check of one site, from the skew a probe measured (None: the peer cannot say)."""
    if skew is None:
        return line("clock", site, WARN, seconds, "the gateway does not report its clock (an older agent)",
                    "upgrade the agent of that site")
    text = f"{site}'s clock is {abs(skew):.3f}s {'ahead of' if skew >= 0 else 'behind'} ours (from the probe)"
    if abs(skew) >= SKEW_FAIL:
        return line("clock", site, FAIL, seconds, text, "fix NTP on one of the two hosts (chronyc tracking)")
    if abs(skew) >= SKEW_WARN:
        return line("clock", site, WARN, seconds, text, "check NTP on both hosts (chronyc tracking)")
    return line("clock", site, PASS, seconds, text)


def files_line(used: int, limit: int) -> dict[str, Any]:
    """The open-files check of the agent process."""
    text = f"{used} of {limit} file descriptors in use"
    if limit and used >= limit * 0.95:
        return line("open-files", "agent", FAIL, None, text, "raise LimitNOFILE= in the unit (or ulimit -n)")
    if limit and (used >= limit * FILES_WARN or limit < FILES_LOW):
        return line("open-files", "agent", WARN, None, text + (f"; a limit under {FILES_LOW} is low for a large mesh"
                                                            if limit < FILES_LOW else ""),
                    "raise LimitNOFILE= in the unit (or ulimit -n)")
    return line("open-files", "agent", PASS, None, text)


def overlaps(view: MeshView, own_site: str, vip_ranges: Sequence[str]) -> list[dict[str, Any]]:
    """VIP ranges that hold real addresses (endpoints or gateways of any site would be captured), and sites
    that share our network while exporting the same endpoint address as another site of it (one address
    cannot be two machines on one network)."""
    ranges = []
    for text in vip_ranges:
        try:
            ranges.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    inside: dict[str, str] = {}
    by_network: dict[tuple[str, str], set[str]] = {}
    for export in view.exports.values():
        site = view.sites.get(export.site)
        if site is None:
            continue
        for ep in export.endpoints:
            for addr in ep.addresses:
                _note(ranges, addr, f"an endpoint of {export.namespace}/{export.name} at {export.site}", inside)
                by_network.setdefault((site.network, addr), set()).add(export.site)
    for name, site in view.sites.items():
        for g in site.gateways:
            _note(ranges, g.address, f"the gateway of {name}", inside)
    out = []
    if inside:
        first = sorted(inside.items())[:3]
        out.append(line("vip-ranges", ",".join(vip_ranges), FAIL, None,
                        f"{len(inside)} real address(es) fall inside the VIP ranges: "
                        + "; ".join(f"{a} ({what})" for a, what in first),
                        "choose dns.vip_ranges that no network of the mesh uses (the default is 240.240.0.0/16)"))
    elif ranges:
        out.append(line("vip-ranges", ",".join(vip_ranges), PASS, None, "no endpoint or gateway address inside"))
    own = view.sites.get(own_site)
    shared = sorted((addr, sorted(sites)) for (net, addr), sites in by_network.items()
                    if len(sites) > 1 and own is not None and net == own.network)
    if shared:
        addr, sites = shared[0]
        out.append(line("networks", own.network if own else "", WARN, None,
                        f"{len(shared)} address(es) exported by more than one site of network "
                        f"{own.network if own else ''}, e.g. {addr} by {', '.join(sites)}",
                        "sites with overlapping addresses are on different networks: give them different "
                        "site.network names (traffic then goes through their gateways)"))
    elif own is not None:
        out.append(line("networks", own.network, PASS, None, "no address is claimed by two sites of our network"))
    return out


def _note(ranges: list[Any], address: str, what: str, inside: dict[str, str]) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return
    if any(ip.version == r.version and ip in r for r in ranges):
        inside.setdefault(address, what)
