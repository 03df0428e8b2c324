"""`meshfed ca init` and `meshfed ca site`: make the mesh root CA and a site's intermediate (`ca operator` and
`ca rotate` live in federation/cli/rotation.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from federation.cli import rotation
from federation.pki.issuing import (
    PkiError,
    load_authority,
    new_root,
    new_site_ca,
    save_root,
    save_site,
    site_spiffe_id,
    trust_domain_of,
)

log = logging.getLogger(__name__)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `ca init` and `ca site` to the `meshfed` parser."""
    ca = sub.add_parser("ca", help="mesh certificate authority: root and per-site intermediates")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="SUBCOMMAND", required=True)

    init = ca_sub.add_parser("init", help="create the mesh root CA (ECDSA P-256)")
    init.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. mesh.example")
    init.add_argument("--out", required=True, type=Path, help="directory for ca.crt and ca.key (0600)")
    init.add_argument("--days", type=int, default=3650, help="root lifetime in days (default 3650)")
    init.add_argument("--force", action="store_true", help="replace an existing CA in --out")
    init.set_defaults(handler=run_init)

    site = ca_sub.add_parser("site", help="create a site's intermediate CA and its trust bundle")
    site.add_argument("name", help="site name (a DNS label)")
    site.add_argument("--ca", required=True, type=Path, help="directory made by `meshfed ca init`")
    site.add_argument("--out", required=True, type=Path, help="directory to copy to the site")
    site.add_argument("--days", type=int, default=730, help="intermediate lifetime in days (default 730)")
    site.add_argument("--force", action="store_true", help="replace an existing site CA in --out")
    site.set_defaults(handler=run_site)
    rotation.add_commands(ca_sub)


def run_init(args: argparse.Namespace) -> int:
    """Create the root CA; exit 1 with a one-line reason on failure."""
    try:
        root = new_root(args.trust_domain, _now(), dt.timedelta(days=args.days))
        save_root(args.out, root, force=args.force)
    except (PkiError, OSError) as exc:
        print(f"meshfed ca init: {exc}", file=sys.stderr)
        return 1
    print(f"root CA for spiffe://{args.trust_domain} written to {args.out} (keep ca.key offline)")
    return 0


def run_site(args: argparse.Namespace) -> int:
    """Create a site intermediate; exit 1 with a one-line reason on failure."""
    try:
        root = load_authority(args.ca)
        site_ca = new_site_ca(root, args.name, _now(), dt.timedelta(days=args.days))
        save_site(args.out, site_ca, force=args.force)
        td = trust_domain_of(root.cert)
    except (PkiError, OSError) as exc:
        print(f"meshfed ca site: {exc}", file=sys.stderr)
        return 1
    print(f"site CA {site_spiffe_id(td, args.name)} written to {args.out}: copy it to site {args.name}")
    return 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
