"""`meshfed demo`: three sites on two networks on one machine (the development kit's demo)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_commands(sub: Any) -> None:
    """Register `demo`."""
    d = sub.add_parser("demo", help="run a one-machine demo on an embedded etcd")
    d.add_argument("--state-dir", default=None, help="where the demo keeps its files (default: /tmp/meshfed-demo)")
    d.add_argument("--keep", action="store_true", help="leave it running until Ctrl-C (or SIGTERM, or --down)")
    d.add_argument("--down", action="store_true",
                   help="stop a demo running with this --state-dir (from another shell) and remove what it left")
    d.add_argument("--loopback", action="store_true", help="loopback ports instead of network namespaces")
    d.add_argument("--prefix", default=None,
                   help="name of its namespaces and links (default mfdemo); another prefix runs a second "
                        "demo beside the first, on a wan of its own")
    d.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from federation.devkit.demo import run_demo
    from federation.devkit.stage import PREFIX

    if args.log_level == "info":
        logging.getLogger().setLevel(logging.WARNING)  # the demo narrates; its agents log to files
    prefix = args.prefix or PREFIX
    if not prefix.isalnum() or len(prefix) > 6:
        print("meshfed demo: --prefix must be alphanumeric, at most 6 characters (interface names are short)")
        return 2
    code: int = run_demo(Path(args.state_dir) if args.state_dir else None, keep=args.keep, down=args.down,
                         loopback=args.loopback, prefix=prefix)
    return code


