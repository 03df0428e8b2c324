"""`meshfed ca operator` and `meshfed ca rotate begin|status|finish`: the operator's key and root rotation.

A rotation never leaves a peer unable to verify another (docs/security.md):
1. `begin` makes a new root next to the old one (DIR/next) and publishes a trust bundle holding both,
   signed by the old root: every agent takes it and trusts both.
2. The operator issues new intermediates (and an operator key) from the new root; agents pick up a
   replaced `gateway.ca_dir` on their own, list the new intermediate first, then use it.
3. `finish` checks that every site now uses an intermediate of the new root and trusts both, re-signs
   the operator-signed documents with the new operator key, publishes the bundle holding only the new
   root (signed by the old one, which every agent still trusts), and retires the old root.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from federation.cli.registry import add_registry_options, registry_client
from federation.core import envelope
from federation.core.errors import ConfigError, RecordError, RegistryUnavailable
from federation.core.meshdocs import TrustDocument, decode_trust, revocations_key, trust_body, trust_key
from federation.pki.issuing import (
    ROOT_CERT,
    ROOT_KEY,
    Authority,
    PkiError,
    cert_pem,
    issued_by,
    load_authority,
    load_certs,
    new_root,
    save_root,
    trust_domain_of,
)
from federation.pki.signing import (
    OPERATOR_CERT,
    OPERATOR_KEY,
    Signer,
    issue_operator,
    kid_of,
    load_signer,
    operator_spiffe_id,
    root_signer,
    save_signer,
)
from federation.registry.documents import DocumentStore

T = TypeVar("T")
NEXT = "next"


class _Refused(Exception):
    """The command cannot go on; its message says why (exit 1)."""


def add_commands(ca_sub: Any) -> None:
    """Add `operator` and `rotate` under `meshfed ca`."""
    op = ca_sub.add_parser("operator", help="issue an operator key (signs policies and revocations) from the root")
    op.add_argument("name", help="operator name (a DNS label), e.g. alice")
    op.add_argument("--ca", required=True, type=Path, help="directory made by `meshfed ca init`")
    op.add_argument("--out", required=True, type=Path, help="directory for operator.crt and operator.key (0600)")
    op.add_argument("--days", type=int, default=730, help="lifetime in days (default 730)")
    op.set_defaults(handler=run_operator)

    rot = ca_sub.add_parser("rotate", help="replace the mesh root without an outage (begin, status, finish)")
    rsub = rot.add_subparsers(dest="rotate_command", metavar="STEP", required=True)
    begin = rsub.add_parser("begin", help="make a new root and publish a trust bundle holding both roots")
    begin.add_argument("--days", type=int, default=3650, help="new root lifetime in days (default 3650)")
    begin.set_defaults(handler=run_begin)
    status = rsub.add_parser("status", help="which sites use which root, and which bundle each has taken")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_status)
    finish = rsub.add_parser("finish", help="retire the old root once every site uses the new one")
    finish.add_argument("--operator", type=Path, required=True,
                        help="operator key issued from the NEW root (`meshfed ca operator --ca DIR/next`)")
    finish.add_argument("--force", action="store_true", help="finish although some sites still use the old root")
    finish.set_defaults(handler=run_finish)
    for p in (begin, status, finish):
        p.add_argument("--ca", required=True, type=Path, help="directory made by `meshfed ca init`")
        add_registry_options(p)


def run_operator(args: argparse.Namespace) -> int:
    """Issue an operator key; exit 1 with a one-line reason on failure."""
    try:
        root = load_authority(args.ca)
        signer = issue_operator(root, args.name, dt.datetime.now(dt.UTC), dt.timedelta(days=args.days))
        if (args.out / OPERATOR_KEY).exists():
            raise PkiError(f"{args.out} already holds {OPERATOR_KEY}")
        save_signer(args.out, signer, OPERATOR_CERT, OPERATOR_KEY)
        td = trust_domain_of(root.cert)
    except (PkiError, OSError) as exc:
        print(f"meshfed ca operator: {exc}", file=sys.stderr)
        return 1
    print(f"operator key {operator_spiffe_id(td, args.name)} written to {args.out} (keep operator.key private)")
    return 0


def run_begin(args: argparse.Namespace) -> int:
    async def work(store: DocumentStore) -> str:
        old = load_authority(args.ca)
        if (args.ca / NEXT).exists():
            raise _Refused(f"a rotation is under way already ({args.ca / NEXT}): finish it first")
        td = trust_domain_of(old.cert)
        now = dt.datetime.now(dt.UTC)
        new = new_root(td, now, dt.timedelta(days=args.days), label=now.strftime("%Y%m%d%H%M%S"))
        stored, doc = await _bundle(store, old)
        roots = [*doc.roots, *(r for r in [cert_pem(new.cert).decode()] if r not in doc.roots)]
        bundle = TrustDocument(td, tuple(roots), doc.sequence + 1)
        await _publish(store, stored, bundle, old)
        save_root(args.ca / NEXT, new)
        return (f"new root {kid_of(new.cert)} written to {args.ca / NEXT}; trust bundle {bundle.sequence} with "
                f"{len(roots)} roots published (signed by the old root)\n"
                f"next: wait until `meshfed ca rotate status` shows every site on bundle {bundle.sequence}, then issue "
                f"new intermediates from the new root (meshfed ca site NAME --ca {args.ca / NEXT} --out DIR --force) "
                f"and put each into its site's gateway.ca_dir; agents switch on their own. Issue an operator key "
                f"from it too (meshfed ca operator NAME --ca {args.ca / NEXT} --out DIR), then run "
                f"`meshfed ca rotate finish --ca {args.ca} --operator DIR`.")

    return _run("begin", args, work)


def run_status(args: argparse.Namespace) -> int:
    async def work(store: DocumentStore) -> str:
        old = load_authority(args.ca)
        new = load_authority(args.ca / NEXT) if (args.ca / NEXT).exists() else None
        _, doc = await _bundle(store, old)
        rows = await _sites(store, old, new)
        if args.json:
            return json.dumps({"bundle": doc.sequence, "roots": len(doc.roots), "sites": rows}, indent=2)
        lines = [f"trust bundle {doc.sequence}: {len(doc.roots)} root(s); "
                 + ("rotation under way (new root in next/)" if new is not None else "no rotation under way")]
        lines.append(f"  {'SITE':<20}{'INTERMEDIATE FROM':<20}BUNDLE TAKEN")
        for r in rows:
            taken = r["trustSequence"] if r["trustSequence"] is not None else "-"
            lines.append(f"  {r['site']:<20}{r['root'] + ' root':<20}{taken}")
        return "\n".join(lines)

    return _run("status", args, work)


def run_finish(args: argparse.Namespace) -> int:
    async def work(store: DocumentStore) -> str:
        old = load_authority(args.ca)
        if not (args.ca / NEXT).exists():
            raise _Refused(f"no rotation under way ({args.ca / NEXT} does not exist): run `meshfed ca rotate begin`")
        new = load_authority(args.ca / NEXT)
        operator = load_signer(args.operator)
        if not issued_by(operator.cert, new.cert):
            raise _Refused(f"the operator key in {args.operator} was not issued by the new root")
        stored, doc = await _bundle(store, old)
        lagging = [r for r in await _sites(store, old, new)
                   if r["root"] != "new" or (r["trustSequence"] or 0) < doc.sequence]
        if lagging and not args.force:
            names = ", ".join(f"{r['site']} ({r['root']} root, bundle {r['trustSequence']})" for r in lagging)
            raise _Refused(f"not every site is ready: {names}; give them intermediates from the new root "
                           "(or --force: those sites will be refused)")
        resigned = await _resign(store, operator, old)
        bundle = TrustDocument(doc.trust_domain, (cert_pem(new.cert).decode(),), doc.sequence + 1)
        await _publish(store, stored, bundle, old)
        retired = args.ca / "retired" / f"{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}-{kid_of(old.cert)[:8]}"
        retired.mkdir(parents=True, mode=0o700)
        for name in (ROOT_CERT, ROOT_KEY):
            shutil.move(str(args.ca / name), str(retired / name))
            shutil.move(str(args.ca / NEXT / name), str(args.ca / name))
        (args.ca / NEXT).rmdir()
        return (f"re-signed {resigned} operator document(s); trust bundle {bundle.sequence} holds only the new root; "
                f"the old root moved to {retired} (keep it offline until its last certificate has expired)")

    return _run("finish", args, work)


# ---------------------------------------------------------------- private


async def _bundle(store: DocumentStore, root: Authority) -> tuple[Any, TrustDocument]:
    """The trust bundle document in the registry, or the bootstrap one (this root alone, sequence 0)."""
    stored = await store.read(trust_key(store.keys))
    if stored.value is None:
        return stored, TrustDocument(trust_domain_of(root.cert), (cert_pem(root.cert).decode(),), 0)
    try:
        return stored, decode_trust(envelope.split(stored.value).body)
    except RecordError as exc:
        raise _Refused(f"the trust bundle in the registry is unreadable: {exc}") from None


async def _publish(store: DocumentStore, stored: Any, doc: TrustDocument, signer: Authority) -> None:
    key = trust_key(store.keys)
    value = root_signer(signer).sign(key, trust_body(doc), _now_ms())
    if not await store.swap(stored, value):
        raise _Refused("the trust bundle changed while this command ran; run it again")


async def _sites(store: DocumentStore, old: Authority, new: Authority | None) -> list[dict[str, Any]]:
    """Each site: which root its (current) intermediate comes from (`current`: DIR/ca.crt, `new`: DIR/next, or
    `other`), and which bundle it has taken."""
    rows: list[dict[str, Any]] = []
    for s in await store.under(store.keys.sites()):
        parts = s.key[len(store.keys.sites()):].split("/")
        if len(parts) != 1 or s.value is None:
            continue
        try:
            obj = json.loads(envelope.split(s.value).body)
            ca = load_certs(str(obj.get("caChain", "")).encode())[0]
        except (ValueError, RecordError, PkiError, IndexError):
            rows.append({"site": parts[0], "root": "unknown", "trustSequence": None})
            continue
        root = ("new" if new is not None and issued_by(ca, new.cert) else "current" if issued_by(ca, old.cert)
                else "other")
        seq = obj.get("trustSequence")
        rows.append({"site": parts[0], "root": root, "trustSequence": seq if isinstance(seq, int) else None})
    return rows


async def _resign(store: DocumentStore, operator: Signer, old: Authority) -> int:
    """Sign every operator-signed document again with `operator` (its body unchanged but for the signer)."""
    count = 0
    docs = [*await store.under(store.keys.mesh("policies") + "/"), await store.read(revocations_key(store.keys))]
    for stored in docs:
        if stored.value is None:
            continue
        try:
            obj = json.loads(envelope.split(stored.value).body)
        except (ValueError, RecordError):
            continue
        if not isinstance(obj, dict) or "signer" not in obj:
            continue
        obj["signer"] = operator.cert_pem()
        if not await store.swap(stored, operator.sign(stored.key, obj, _now_ms())):
            raise _Refused(f"{stored.key} changed while this command ran; run it again")
        count += 1
    return count


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def _run(step: str, args: argparse.Namespace, work: Callable[[DocumentStore], Awaitable[str]]) -> int:
    async def main() -> str:
        client, keys = registry_client(args)
        try:
            async with asyncio.timeout(client.timeout * 6):
                return await work(DocumentStore(client, keys))
        except TimeoutError:
            raise RegistryUnavailable(f"etcd at {','.join(client.endpoints)} did not answer in time") from None
        finally:
            await client.close()

    try:
        print(asyncio.run(main()))
    except (_Refused, ConfigError, RegistryUnavailable, PkiError, OSError) as exc:
        print(f"meshfed ca rotate {step}: {exc}", file=sys.stderr)
        return 1
    return 0
