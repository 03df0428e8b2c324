"""The access-control side of `meshfed policy`: signing with the operator key, the MeshAccessPolicy, listing
AccessPolicies, and `meshfed policy check --from SITE --to NS/NAME`.

`check` reads the registry the way an agent does (`registry.access.AccessReader`, the site records, the
revocation list) and prints the decision an east-west gateway would make for a stream from that site.
With `--config` naming an agent with a site CA, records are verified as that agent verifies them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any

from federation.cli.registry import add_registry_options, registry_client
from federation.cli.site import operator_signer
from federation.core import envelope
from federation.core.codec import decode_site
from federation.core.errors import ConfigError, RecordError, RegistryUnavailable
from federation.core.keys import SiteKey
from federation.core.meshdocs import decode_revocations, revocations_key
from federation.core.policy import access
from federation.core.policy.access import Peer, decide, workload_id
from federation.core.policy.kinds import SIGNER
from federation.core.workloads import is_workload
from federation.registry.access import AccessReader
from federation.registry.policies import PolicyStore, Sign, Stored
from federation.runtime.values import Value


def signing(args: argparse.Namespace) -> Sign | None:
    """What signs writes: the operator key of --operator / $MESHFED_OPERATOR, or None (unsigned)."""
    signer = operator_signer(args, required=False)
    if signer is None:
        return None
    pem = signer.cert_pem()

    def sign(key: str, record: dict[str, Any]) -> bytes:
        return signer.sign(key, {**record, SIGNER: pem}, int(dt.datetime.now(dt.UTC).timestamp() * 1000))

    return sign


async def apply_mesh(store: PolicyStore, mesh: access.MeshAccess, sign: Sign | None) -> bool:
    """Store the MeshAccessPolicy; False if it was the same already."""
    from federation.core.policy.kinds import content
    from federation.registry.etcd import Put

    key = access.mesh_key(store.keys)
    record = access.encode(access.mesh_to_document(mesh))
    current = await store.client.get(key)
    if current is not None and content(current.value) == access.canonical(record) and (
            sign is None or b'"sig":{' in current.value):
        return False
    value = sign(key, record) if sign is not None else access.canonical(record)
    await store.client.commit([Put(key, value)])
    return True


def print_list(rows: list[Stored], as_json: bool) -> int:
    """`meshfed policy ls --kind access`."""
    out = []
    for s in rows:
        rest = s.key.rsplit("/", 2)
        service = f"{rest[-2]}/{rest[-1]}" if len(rest) == 3 else s.key
        if s.policy is None:
            out.append({"service": service, "rules": "-", "signed": s.signed, "revision": s.revision,
                        "status": f"invalid (skipped): {s.error}"})
            continue
        rules = ",".join(f"{r.name}:{r.action.value}" for r in s.policy.rules) or "-"
        out.append({"service": service, "rules": rules, "signed": s.signed, "revision": s.revision, "status": "ok"})
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    if not out:
        print("no access policies (the mesh default applies to every service)")
        return 0
    print(f"{'SERVICE':<24}{'SIGNED':<8}{'REVISION':<10}{'STATUS':<8}RULES")
    for r in out:
        print(f"{r['service']:<24}{'yes' if r['signed'] else 'no':<8}{r['revision']!s:<10}{r['status']:<8}{r['rules']}")
    return 0


def add_check(psub: Any) -> None:
    """Register `policy check`."""
    check = psub.add_parser("check", help="may a site reach a service? (allowed or denied, and by which rule)")
    check.add_argument("--from", dest="source", required=True, metavar="SITE", help="the site the stream comes from")
    check.add_argument("--to", dest="service", required=True, metavar="NS/NAME", help="the service")
    check.add_argument("--identity", default=None, metavar="NS/SA",
                       help="the source workload (namespace/service-account), taken as SITE vouches for it: "
                       "spiffe://<td>/site/SITE/ns/NS/sa/SA (default: unknown); or a whole SPIFFE ID for the "
                       "gateway (default: spiffe://<td>/site/SITE/gateway/gateway)")
    check.add_argument("--network", default=None, help="the source's network (default: from its site record)")
    check.add_argument("--json", action="store_true", help="print JSON")
    add_registry_options(check)
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    namespace, sep, name = args.service.partition("/")
    if not sep or not namespace or not name:
        print(f"meshfed policy: {args.service!r} is not NAMESPACE/NAME", file=sys.stderr)
        return 2
    try:
        decision, peer, notes = asyncio.run(_check(args, (namespace, name)))
    except (ConfigError, RegistryUnavailable) as exc:
        print(f"meshfed policy: {exc}", file=sys.stderr)
        return 1
    verdict = "allowed" if decision.allowed else "denied"
    if args.json:
        print(json.dumps({"allowed": decision.allowed, "rule": decision.rule, "reason": decision.reason,
                          "from": {"site": peer.site, "network": peer.network, "identity": peer.identity,
                                   "workload": peer.workload},
                          "to": args.service, "notes": notes}, indent=2))
    else:
        who = f"{args.source} ({peer.workload})" if peer.workload else args.source
        print(f"{verdict}: {who} -> {args.service}: {decision.reason} (rule {decision.rule})")
        for note in notes:
            print(f"  note: {note}")
    return 0 if decision.allowed else 1


async def _check(args: argparse.Namespace, service: tuple[str, str]) -> tuple[Any, Peer, list[str]]:
    from federation.agent.settings import load_settings

    config = load_settings(args.config) if args.config else None
    client, keys = registry_client(args, config)
    verify = None
    notes: list[str] = []
    try:
        async with asyncio.timeout(client.timeout * 3):
            revocations = await _revocations(client, keys)
            if config is not None and config.gateway.ca_dir:
                from federation.agent.identity import Identity

                identity = await Identity.load(config)
                if identity.verifier is not None:
                    verify = identity.verifier.mesh_policy
            else:
                notes.append("signatures not checked (give --config of an agent with a site CA to check them)")
            reader = AccessReader(client, keys, verify=verify, revocations=Value(revocations))
            await reader.refresh()
            site_kv = await client.get(keys.site(args.source))
    except TimeoutError:
        raise RegistryUnavailable(f"etcd at {','.join(client.endpoints)} did not answer in time") from None
    finally:
        await client.close()
    try:
        site = decode_site(SiteKey(args.source), envelope.split(site_kv.value).body) if site_kv else None
    except RecordError:
        site = None
    network = args.network
    if network is None:
        network = site.network if site is not None else ""
        if site is None:
            notes.append(f"site {args.source} is not in the registry: its network is unknown (--network)")
    td = _trust_domain(config) or (_site_trust_domain(site.ca_chain) if site is not None else "")
    given = args.identity or ""
    if given and not given.startswith("spiffe://") and not is_workload(given):
        raise ConfigError(f"--identity {given!r} is neither namespace/service-account nor a SPIFFE ID")
    if given and not given.startswith("spiffe://") and not td:
        raise ConfigError(f"--identity {given}: the trust domain is unknown (give --config of an agent, or a "
                          f"--from site in the registry)")
    gateway = given if given.startswith("spiffe://") else (
        f"spiffe://{td}/site/{args.source}/gateway/gateway" if td else None)
    workload = workload_id(td, args.source, given) if given and not given.startswith("spiffe://") else None
    peer = Peer(args.source, network, gateway, workload)
    return decide(reader.state.get(), service, peer), peer, notes


async def _revocations(client: Any, keys: Any) -> Any:
    from federation.core.meshdocs import Revocations

    kv = await client.get(revocations_key(keys))
    if kv is None:
        return Revocations()
    try:
        return decode_revocations(envelope.split(kv.value).body)
    except RecordError:
        return Revocations()


def _site_trust_domain(ca_chain: str) -> str:
    """The trust domain of a site's intermediate, as its site record carries it ("" if unreadable)."""
    from federation.pki.issuing import PkiError, load_certs, trust_domain_of

    try:
        return trust_domain_of(load_certs(ca_chain.encode())[0])
    except (ValueError, IndexError, PkiError):
        return ""


def _trust_domain(config: Any) -> str:
    if config is None or not config.gateway.ca_dir:
        return ""
    from pathlib import Path

    from federation.pki.issuing import PkiError, load_site, trust_domain_of

    try:
        return trust_domain_of(load_site(Path(config.gateway.ca_dir)).cert)
    except PkiError:
        return ""
