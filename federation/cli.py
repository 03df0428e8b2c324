"""The `meshfed` command line: the only place that reads files, environment and argv."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

import federation

Handler = Callable[[argparse.Namespace], int]

# Modules that add subcommands: each has `add_commands(sub)` and sets `handler=` defaults on its parsers.
COMMAND_MODULES: tuple[str, ...] = (
    "federation.cli_core",
    "federation.cli_etcd",
    "federation.cli_ca",
    "federation.cli_dns",
    "federation.cli_vm",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every subcommand module included."""
    parser = argparse.ArgumentParser(prog="meshfed", description="Federate services across clusters and VMs.")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    parser.add_argument("--log-format", default="text", choices=("text", "json"), help="log line format")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `meshfed` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from federation.logsetup import configure_logging

    configure_logging(args.log_level, args.log_format)
    return handler(args)


def version_text() -> str:
    """What `meshfed version` prints."""
    return f"meshfed {federation.__version__} (python {sys.version.split()[0]})"
