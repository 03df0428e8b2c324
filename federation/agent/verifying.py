"""The agent's half of `meshfed verify` (the admin's /verify): the checks that need this agent's identity and view.

Run here, not in the CLI, because only the agent holds what they need: the gateway's private key (0600, in
its own directory) for the mTLS handshake a peer must accept, the trust bundle in force, the mirror's view
and the open-files count of the agent process. The CLI adds what a client of the agent sees from outside:
DNS answers, etcd reachability and permissions with the agent's registry credentials, the DNS port.

For each other site (or the one asked): its record in the registry, its gateway reachable (TCP), the mTLS
handshake with the identity expected for that site and its acceptance of ours, the clock skew from the
probe, and one real stream through a fresh tunnel to each imported service (or the one asked); sites on our
own network get a TCP connect to an endpoint instead, as the egress would route. Then the local floor:
the registry link, certificates, open files, VIP ranges and networks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from federation.agent.dataplane import DataPlane
from federation.agent.identity import Identity
from federation.agent.selection import Selection
from federation.agent.status import expiries
from federation.agent.verdicts import FAIL, PASS, WARN, files_line, line, overlaps, skew_line
from federation.core.keys import Keys
from federation.core.records import Gateway
from federation.core.view import FederatedService, MeshView
from federation.registry.mirror import Mirror
from federation.runtime.limits import OpenFilesWatch
from gateway.balancing import endpoint_targets
from gateway.preamble import Request

CONCURRENCY = 16
"""Sites checked at once: a site whose gateway never answers holds one slot for its timeouts."""


async def verify_document(site: str, mirror: Mirror, keys: Keys, plane: DataPlane | None,
                          identity: Identity | None, files: OpenFilesWatch | None,
                          selection: Selection) -> dict[str, Any]:
    """The /verify document: `?site=` checks one site, `?service=` one service (ns/name)."""
    view = mirror.mesh.get()
    lines: list[dict[str, Any]] = [_registry_line(mirror)]
    others = sorted(n for n in view.sites if n != site) if selection.site is None else [selection.site]
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(other: str) -> list[dict[str, Any]]:
        async with slots:
            return await _site(view, site, other, plane, selection, mirror.catalog.rejected.get(keys.site(other)))

    for found in await asyncio.gather(*(one(o) for o in others)):
        lines.extend(found)
    if plane is not None:
        lines.extend(_certificates(plane, identity))
        lines.extend(overlaps(view, site, plane.settings.dns.vip_ranges if plane.dns is not None else ()))
    if files is not None and files.limit:
        lines.append(files_line(files.used, files.limit))
    return {"site": site, "lines": lines}


def _registry_line(mirror: Mirror) -> dict[str, Any]:
    if not mirror.mesh.get().complete:
        return line("registry", "view", FAIL, None, "the initial registry sync has not finished",
                    "meshfed status (registry.error); is etcd reachable from this host?")
    if mirror.stale:
        return line("registry", "view", FAIL, mirror.staleness(),
                    f"the view is stale for {mirror.staleness():.0f}s: {mirror.error or 'etcd unreachable'}",
                    "meshfed status; check etcd and the network to it")
    return line("registry", "view", PASS, None, f"live view at revision {mirror.mesh.get().revision}")


async def _site(view: MeshView, own: str, other: str, plane: DataPlane | None,
                selection: Selection, refused: str | None) -> list[dict[str, Any]]:
    record = view.sites.get(other)
    if record is None and refused is not None:
        return [line("site-record", other, FAIL, None, f"site {other}'s record is in etcd but refused: {refused}",
                     f"meshfed registry ls (REJECTED RECORDS); a site CA from another mesh root? "
                     f"(meshfed ca site {other} --ca ROOT)")]
    if record is None:
        return [line("site-record", other, FAIL, None, f"site {other} has no record in the registry",
                     f"meshfed registry ls --site {other}; is the agent of {other} running and reaching etcd?")]
    out = [line("site-record", other, PASS, None,
                f"network {record.network}, {len(record.gateways)} gateway(s), agent {record.agent_version or '?'}")]
    services = [(k, svc) for k, svc in view.services().items() if other in svc.sites
                and (selection.service is None or selection.wants_service(*k))]
    if selection.service is not None and not services:
        out.append(line("service", f"{selection.service} at {other}", FAIL, None,
                        f"{other} exports no service {selection.service}",
                        f"meshfed registry ls --site {other} --service {selection.service}"))
    mine = view.sites.get(own)
    if mine is not None and record.network == mine.network:
        for (ns, name), svc in services:
            out.append(await _direct(other, ns, name, svc))
        return out
    if not record.gateways:
        out.append(line("gateway", other, FAIL if services else WARN, None,
                        f"{other} is on network {record.network} and advertises no gateway",
                        f"the agent of {other}: gateway.ca_dir and site.gateway_address (meshfed status there)"))
        return out
    prober = plane.prober if plane is not None else None
    if prober is None:
        out.append(line("gateway", other, FAIL, None, "this site runs no gateway, so it cannot open tunnels",
                        "set gateway.ca_dir on this agent (meshfed ca site)"))
        return out
    for gateway in record.gateways:
        out.extend(await _gateway(prober, other, gateway, services))
    return out


async def _gateway(prober: Any, site: str, gateway: Gateway,
                   services: list[tuple[tuple[str, str], FederatedService]]) -> list[dict[str, Any]]:
    where = f"{site} {gateway.address}:{gateway.port}"
    started = time.perf_counter()
    result = await prober.probe(site, gateway)
    took = time.perf_counter() - started
    if not result.ok and result.stage == "connect":
        return [line("gateway", where, FAIL, took, result.reason,
                     f"is the agent of {site} running (meshfed gateways; meshfed status at {site})? "
                     f"a firewall between the sites on port {gateway.port}?")]
    out = [line("gateway", where, PASS, result.handshake, "TCP connect and TLS handshake")]
    if not result.ok:
        hint = ("both sites' CAs must come from the same mesh root (meshfed ca site --ca ROOT); "
                "meshfed registry ls --site " + site) if result.stage in ("tls", "identity") else \
               f"the log of {site}'s agent (gateway refusals); meshfed_gateway_refusals_total there"
        out.append(line("mtls", where, FAIL, took, result.reason, hint))
        return out
    out.append(line("mtls", where, PASS, result.rtt,
                    f"the peer is a gateway of {site} verified to our roots, and it accepted our certificate"
                    + (f" ({result.reason})" if result.reason else "")))
    out.append(skew_line(site, result.skew, result.rtt))
    for (ns, name), svc in services:
        export = next(e for e in svc.exports if e.site == site)
        port = export.ports[0].name if export.ports else ""
        if not port:
            out.append(line("stream", f"{ns}/{name} at {site}", WARN, None, "the export has no port"))
            continue
        t0 = time.perf_counter()
        streamed = await prober.stream(site, gateway, Request(ns, name, port))
        took = time.perf_counter() - t0
        if streamed.ok:
            out.append(line("stream", f"{ns}/{name}:{port} at {site}", PASS, took,
                            "the gateway connected a stream to an endpoint"))
        else:
            out.append(line("stream", f"{ns}/{name}:{port} at {site}", FAIL, took, streamed.reason,
                            f"meshfed registry ls --site {site} --service {ns}/{name} (ready endpoints?); "
                            f"the endpoints' health at {site}"))
    return out


async def _direct(site: str, ns: str, name: str, svc: FederatedService) -> dict[str, Any]:
    export = next(e for e in svc.exports if e.site == site)
    subject = f"{ns}/{name} at {site} (direct)"
    targets = endpoint_targets(export, export.ports[0]) if export.ports else []
    if not targets:
        return line("stream", subject, FAIL, None, f"{site} has no ready endpoint of {ns}/{name}",
                    f"the health checks at {site} (meshfed status there)")
    t = targets[0]
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(5.0):
            _, writer = await asyncio.open_connection(t.address, t.port)
        writer.close()
    except (OSError, TimeoutError) as exc:
        return line("stream", subject, FAIL, time.perf_counter() - t0, f"connect to {t.address}:{t.port}: {exc}",
                    f"same network {site}: routing or a firewall between the hosts")
    return line("stream", subject, PASS, time.perf_counter() - t0, f"TCP connect to {t.address}:{t.port}")


def _certificates(plane: DataPlane, identity: Identity | None) -> list[dict[str, Any]]:
    out = []
    for cert in expiries(plane, identity, dt.datetime.now(dt.UTC)):
        result = PASS if cert["warning"] is None else FAIL if cert["secondsLeft"] <= 0 else WARN
        out.append(line("certificate", cert["what"], result, None,
                        cert["warning"] or f"valid until {cert['notAfter']}",
                        "docs/security.md: rotating the root and site CAs" if result != PASS else ""))
    return out
