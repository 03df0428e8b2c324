"""The `meshfed` command line: the only place that reads files, environment and argv."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import federation
from federation.cli import agent, ca, demo, etcd, explain, gateways, join, policy, registry, resolve, site, verify, vm
from federation.cli.logsetup import configure_logging

Handler = Callable[[argparse.Namespace], int]

COMMAND_GROUPS = (agent, gateways, verify, explain, registry, policy, site, resolve, ca, join, etcd, vm, demo)
"""Each has `add_commands(sub)`, which sets a `handler=` default on its parsers; help lists them in this order."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every command group included."""
    parser = argparse.ArgumentParser(prog="meshfed", description="Federate services across clusters and VMs.")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    parser.add_argument("--log-format", default="text", choices=("text", "json"), help="log line format")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    v = sub.add_parser("version", help="print the version")
    v.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `meshfed` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    configure_logging(args.log_level, args.log_format)
    try:
        return handler(args)
    except BrokenPipeError:  # `meshfed ... | head`: the reader has what it wanted, so no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 141  # what a shell reports for a command ended by SIGPIPE (128 + 13)


def version_text() -> str:
    """What `meshfed version` prints."""
    return f"meshfed {federation.__version__} (python {sys.version.split()[0]})"


def cmd_version(_args: argparse.Namespace) -> int:
    print(version_text())
    return 0
