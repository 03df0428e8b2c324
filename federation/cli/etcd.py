"""`meshfed etcd certs` and `meshfed etcd client-cert`: TLS material for etcd, issued by the mesh root."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from federation.pki.etcdcerts import issue_etcd_client, issue_etcd_server
from federation.pki.issuing import PkiError, cert_pem, load_authority
from federation.runtime.files import write_private, write_public


def add_commands(sub: Any) -> None:
    """Register `etcd certs` and `etcd client-cert`."""
    etcd = sub.add_parser("etcd", help="TLS certificates for the registry's etcd")
    esub = etcd.add_subparsers(dest="etcd_command", metavar="SUBCOMMAND", required=True)
    srv = esub.add_parser("certs", help="etcd's server certificate (run once per etcd member)")
    srv.add_argument("--ca", required=True, type=Path, help="directory made by `meshfed ca init`")
    srv.add_argument("--host", action="append", required=True, help="address or DNS name clients dial (repeat)")
    srv.add_argument("--out", required=True, type=Path, help="directory for ca.crt, etcd.crt, etcd.key")
    srv.set_defaults(handler=run_server)
    cli = esub.add_parser("client-cert", help="a client certificate; its CN is the etcd user (for RBAC)")
    cli.add_argument("user", help="etcd user name, e.g. site-east (see deploy/etcd/rbac.sh) or root")
    cli.add_argument("--ca", required=True, type=Path, help="directory made by `meshfed ca init`")
    cli.add_argument("--out", required=True, type=Path, help="directory for ca.crt, <user>.crt, <user>.key")
    cli.set_defaults(handler=run_client)


def run_server(args: argparse.Namespace) -> int:
    try:
        root = load_authority(args.ca)
        issued = issue_etcd_server(root, args.host, dt.datetime.now(dt.UTC))
        _save(args.out, "etcd", root.cert, issued.chain_pem(), issued.key_pem())
    except (PkiError, OSError) as exc:
        print(f"meshfed etcd certs: {exc}", file=sys.stderr)
        return 1
    print(f"etcd server certificate for {', '.join(args.host)} written to {args.out}")
    return 0


def run_client(args: argparse.Namespace) -> int:
    try:
        root = load_authority(args.ca)
        issued = issue_etcd_client(root, args.user, dt.datetime.now(dt.UTC))
        _save(args.out, args.user, root.cert, issued.chain_pem(), issued.key_pem())
    except (PkiError, OSError) as exc:
        print(f"meshfed etcd client-cert: {exc}", file=sys.stderr)
        return 1
    print(f"etcd client certificate for user {args.user} written to {args.out}")
    return 0


def _save(out: Path, name: str, ca: Any, chain: bytes, key: bytes) -> None:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_public(out / "ca.crt", cert_pem(ca))
    write_public(out / f"{name}.crt", chain)
    write_private(out / f"{name}.key", key)
