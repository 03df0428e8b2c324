"""`meshfed site revoke|restore|ls|revoke-operator`: cut a site off the mesh at once, or let it back in (an
operator action); revoke one operator key (nothing it signs is taken any more, by any agent).

The revocation list is one operator-signed document with a growing sequence: every agent drops the
revoked site's records from its view, its gateway refuses the site's certificates and closes its open
tunnels. A deleted or replayed list changes nothing, so only a newer signed one can restore a site.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from federation.cli.registry import add_registry_options, registry_client
from federation.core import envelope
from federation.core.errors import ConfigError, RecordError, RegistryUnavailable
from federation.core.meshdocs import Revocations, decode_revocations, revocations_body, revocations_key
from federation.core.records import is_dns_label
from federation.pki.issuing import PkiError, load_certs
from federation.pki.signing import Signer, kid_of, load_signer
from federation.registry.documents import DocumentStore
from federation.runtime.files import write_private

OPERATOR_ENV = "MESHFED_OPERATOR"
KEPT = "revocations.json"
"""Beside the operator key: the signed revocation list it wrote last."""


def add_commands(sub: Any) -> None:
    """Register `site revoke`, `site restore` and `site ls`."""
    site = sub.add_parser("site", help="revoke or restore a site (operator actions recorded in the registry)")
    ssub = site.add_subparsers(dest="site_command", metavar="COMMAND", required=True)
    revoke = ssub.add_parser("revoke", help="cut a site off: its records leave every view, its tunnels close")
    revoke.add_argument("name", help="the site")
    revoke.add_argument("--reason", default="", help="why (shown in every refusal)")
    revoke.set_defaults(handler=cmd_revoke)
    restore = ssub.add_parser("restore", help="let a revoked site back in")
    restore.add_argument("name", help="the site")
    restore.set_defaults(handler=cmd_restore)
    op = ssub.add_parser("revoke-operator", help="revoke one operator key: nothing it signs is taken any more")
    op.add_argument("cert", type=Path, help="the operator's certificate (operator.crt of its key directory)")
    op.add_argument("--reason", default="", help="why (shown in every refusal)")
    op.add_argument("--resign", action="store_true",
                    help="sign the policies it signed again with --operator's key first (you vouch for them)")
    op.set_defaults(handler=cmd_revoke_operator)
    for p in (revoke, restore, op):
        add_operator_option(p)
    ls = ssub.add_parser("ls", help="list the revoked sites and operator keys")
    ls.set_defaults(handler=cmd_ls)
    for p in (revoke, restore, ls, op):
        add_registry_options(p)


def add_operator_option(parser: Any) -> None:
    """--operator DIR: the operator key that signs (default $MESHFED_OPERATOR)."""
    parser.add_argument("--operator", type=Path, default=os.environ.get(OPERATOR_ENV) or None,
                        help=f"directory from `meshfed ca operator` (default ${OPERATOR_ENV})")


def operator_signer(args: argparse.Namespace, required: bool = True) -> Signer | None:
    """The operator key the arguments name; ConfigError if one is required and none is given."""
    if args.operator is None:
        if required:
            raise ConfigError(f"an operator key is needed to sign: --operator DIR or ${OPERATOR_ENV}")
        return None
    try:
        return load_signer(Path(args.operator))
    except PkiError as exc:
        raise ConfigError(str(exc)) from None


def cmd_revoke(args: argparse.Namespace) -> int:
    return _change(args, lambda doc: doc.revoke(args.name, args.reason, dt.datetime.now(dt.UTC).timestamp()),
                   f"site {args.name} revoked: agents drop its records and close its tunnels")


def cmd_restore(args: argparse.Namespace) -> int:
    return _change(args, lambda doc: doc.restore(args.name), f"site {args.name} restored")


def cmd_revoke_operator(args: argparse.Namespace) -> int:
    try:
        kid = kid_of(load_certs(args.cert.read_bytes())[0])  # the operator's own, first; its chain may follow
    except (OSError, PkiError, IndexError) as exc:
        return _fail(f"{args.cert}: {getattr(exc, 'strerror', None) or exc}", code=2)
    args.name = kid
    return _change(args, lambda doc: doc.revoke_operator(kid, args.reason, dt.datetime.now(dt.UTC).timestamp()),
                   f"operator key {kid} revoked: agents take nothing it signs from now on", operator=True,
                   before=lambda store, signer: _signed_by(store, kid, signer if args.resign else None))


def cmd_ls(args: argparse.Namespace) -> int:
    async def work(store: DocumentStore) -> Revocations:
        return (await _read(store))[1]

    try:
        doc = _run(args, work)
    except (ConfigError, RegistryUnavailable, RecordError) as exc:
        return _fail(str(exc))
    if not doc.sites:
        print(f"no site is revoked (revocation list {doc.sequence})")
    for name, entry in sorted(doc.sites.items()):
        when = dt.datetime.fromtimestamp(entry.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"{name}  revoked {when}  {entry.reason}")
    for kid, entry in sorted(doc.operators.items()):
        when = dt.datetime.fromtimestamp(entry.at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"operator key {kid}  revoked {when}  {entry.reason}")
    return 0


# ---------------------------------------------------------------- private


def _change(args: argparse.Namespace, change: Any, done: str, operator: bool = False, before: Any = None) -> int:
    if not operator and not is_dns_label(args.name):
        return _fail(f"{args.name!r} is not a site name (a DNS label)", code=2)

    async def work(store: DocumentStore) -> str:
        signer = operator_signer(args)
        assert signer is not None
        if operator and signer.kid == args.name:
            raise ConfigError("an operator key cannot revoke itself: sign with another operator key (--operator)")
        stored, doc = await _read(store)
        kept = _kept(Path(args.operator))
        if kept is not None and kept.sequence > doc.sequence:
            # The registry lost the list (or holds an older one): agents hold the newer one this operator wrote.
            print(f"meshfed site: the registry's revocation list ({doc.sequence}) is older than the one kept in "
                  f"{args.operator} ({kept.sequence}); continuing from that", file=sys.stderr)
            doc = kept
        new: Revocations = change(doc)
        if operator and args.name in doc.operators:
            return f"operator key {args.name} is already revoked: nothing to do"
        if not operator and set(new.sites) == set(doc.sites):
            return f"site {args.name} is {'already' if args.name in doc.sites else 'not'} revoked: nothing to do"
        notes = await before(store, signer) if before is not None else []
        key = revocations_key(store.keys)
        at = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        value = signer.sign(key, revocations_body(new, signer.cert_pem()), at)
        if not await store.swap(stored, value):
            raise RegistryUnavailable("the revocation list changed while this command ran; run it again")
        write_private(Path(args.operator) / KEPT, value)
        return "".join(f"{n}\n" for n in notes) + f"{done} (revocation list {new.sequence})"

    try:
        print(_run(args, work))
    except (ConfigError, RegistryUnavailable, RecordError) as exc:
        return _fail(str(exc))
    return 0


async def _signed_by(store: DocumentStore, kid: str, resign: Signer | None) -> list[str]:
    """The policies `kid` signed, each signed again by `resign` if given (body unchanged but for the signer)."""
    notes = []
    for stored in await store.under(store.keys.mesh("policies") + "/"):
        if stored.value is None:
            continue
        try:
            split = envelope.split(stored.value)
            obj = json.loads(split.body)
        except (ValueError, RecordError):
            continue
        if split.signature is None or split.signature.kid != kid or not isinstance(obj, dict):
            continue
        if resign is None:
            notes.append(f"{stored.key}: signed by the revoked key; agents that start from now on refuse it "
                         "(apply it again with a valid key, or rerun with --resign)")
            continue
        obj["signer"] = resign.cert_pem()
        if not await store.swap(stored, resign.sign(stored.key, obj, int(dt.datetime.now(dt.UTC).timestamp() * 1000))):
            raise RegistryUnavailable(f"{stored.key} changed while this command ran; run it again")
        notes.append(f"{stored.key}: signed again by {resign.kid}")
    return notes


def _kept(directory: Path) -> Revocations | None:
    """The last revocation list this operator wrote (kept beside its key: a deleted registry copy loses nothing)."""
    try:
        return decode_revocations(envelope.split((directory / KEPT).read_bytes()).body)
    except (OSError, RecordError):
        return None


async def _read(store: DocumentStore) -> tuple[Any, Revocations]:
    stored = await store.read(revocations_key(store.keys))
    if stored.value is None:
        return stored, Revocations()
    try:
        return stored, decode_revocations(envelope.split(stored.value).body)
    except RecordError as exc:
        raise RecordError(f"the revocation list in the registry is unreadable: {exc}") from None


def _run(args: argparse.Namespace, work: Any) -> Any:
    async def main() -> Any:
        client, keys = registry_client(args)
        try:
            async with asyncio.timeout(client.timeout * 3):
                return await work(DocumentStore(client, keys))
        except TimeoutError:
            raise RegistryUnavailable(f"etcd at {','.join(client.endpoints)} did not answer in time") from None
        finally:
            await client.close()

    return asyncio.run(main())


def _fail(message: str, code: int = 1) -> int:
    print(f"meshfed site: {message}", file=sys.stderr)
    return code
