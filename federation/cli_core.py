"""Core subcommands: `agent`, `registry ls`, `version`, `demo`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from federation.catalog import Catalog
from federation.config import AgentConfig, load_config
from federation.errors import ConfigError, MeshfedError, RegistryUnavailable
from federation.model import DEFAULT_PREFIX, Keys
from federation.registry.etcd import EtcdClient, TLSFiles
from federation.reporting import format_report, registry_report

log = logging.getLogger(__name__)


def add_commands(sub: Any) -> None:
    """Register the core subcommands."""
    p = sub.add_parser("agent", help="run a site's agent")
    p.add_argument("--config", required=True, help="agent config file (YAML)")
    p.add_argument("--workers", type=int, default=None,
                   help="gateway processes sharing the east-west port (SO_REUSEPORT); overrides gateway.workers")
    p.set_defaults(handler=cmd_agent)

    reg = sub.add_parser("registry", help="inspect the registry")
    regsub = reg.add_subparsers(dest="registry_command", metavar="COMMAND")
    ls = regsub.add_parser("ls", help="sites, services, endpoints, conflicts and staleness")
    ls.add_argument("--config", help="agent config file: its registry settings (and its agent, as a fallback)")
    ls.add_argument("--endpoints", help="etcd host:port[,host:port...] (overrides the config)")
    ls.add_argument("--prefix", default=None, help=f"registry key prefix (default {DEFAULT_PREFIX})")
    ls.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ls.set_defaults(handler=cmd_registry_ls)

    st = sub.add_parser("status", help="this site's agent: registry, gateway, DNS, exports, imports")
    st.add_argument("--config", default="/etc/meshfed/agent.yaml", help="agent config file (finds the agent)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(handler=cmd_status)

    v = sub.add_parser("version", help="print the version")
    v.set_defaults(handler=cmd_version)

    d = sub.add_parser("demo", help="run a one-machine demo on an embedded etcd")
    d.add_argument("--state-dir", default=None, help="where the demo keeps its files (default: /tmp/meshfed-demo)")
    d.add_argument("--keep", action="store_true", help="leave it running until Ctrl-C")
    d.add_argument("--down", action="store_true", help="tear down a demo left running with --keep")
    d.add_argument("--loopback", action="store_true", help="loopback ports instead of network namespaces")
    d.set_defaults(handler=cmd_demo)


def cmd_version(_args: argparse.Namespace) -> int:
    from federation.cli import version_text

    print(version_text())
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        if args.workers is not None:
            gateway = dict(config.sections.get("gateway", {}), workers=args.workers)
            config = dataclasses.replace(config, sections={**config.sections, "gateway": gateway})
        from federation.parts import parse_sections

        parse_sections(config)  # a bad section fails here, before anything starts
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 2
    return run_agent_process(config)


def run_agent_process(config: AgentConfig) -> int:
    """Run an agent in this process until SIGINT/SIGTERM; exit code for the shell."""
    from federation.agent import Agent

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        await Agent(config).run(stop)

    try:
        _run(main())
    except Exception as exc:
        errors = _leaves(exc)
        if not all(isinstance(e, MeshfedError) for e in errors):
            raise
        for e in errors:
            print(f"meshfed: {e}", file=sys.stderr)
        return 2 if any(isinstance(e, ConfigError) for e in errors) else 1
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def dump_tasks() -> None:
    """SIGUSR1: log every task's stack, for a process that seems stuck."""
    import io

    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(file=buf)
        log.warning("task %s:\n%s", task.get_name(), buf.getvalue())


def cmd_registry_ls(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(_registry_report(args))
    except (ConfigError, RegistryUnavailable) as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


async def _registry_report(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config) if args.config else None
    prefix = args.prefix or (config.registry.prefix if config else DEFAULT_PREFIX)
    endpoints = _endpoints(args, config)
    tls = None
    if config and config.registry.tls:
        t = config.registry.tls
        tls = TLSFiles(t.ca, t.cert, t.key)
    timeout = config.registry.timeout if config else 5.0
    client = EtcdClient(endpoints, tls=tls, timeout=timeout)
    try:
        async with asyncio.timeout(timeout + 1):
            kvs, revision = await client.get_prefix(Keys(prefix).root())
    except (RegistryUnavailable, TimeoutError) as exc:
        fallback = _agent_document(config, "/registry") if config else None
        if fallback is None:
            raise RegistryUnavailable(f"cannot read the registry at {','.join(endpoints)}: {exc}") from None
        fallback["stale"] = True
        fallback["error"] = f"etcd unreachable from this shell ({exc}); showing the agent's last known view"
        return fallback
    finally:
        await client.close()
    catalog = Catalog(Keys(prefix))
    catalog.resync({k: v.value for k, v in kvs.items()}, revision)
    return registry_report(catalog.view(), catalog.rejected, source=f"etcd {','.join(endpoints)}")


def _endpoints(args: argparse.Namespace, config: AgentConfig | None) -> tuple[str, ...]:
    if args.endpoints:
        return tuple(e.strip() for e in args.endpoints.split(",") if e.strip())
    if config and config.registry.endpoints:
        return config.registry.endpoints
    if config:
        from federation.embedded import ENDPOINT_FILE

        path = config.state_dir / "etcd" / ENDPOINT_FILE
        with contextlib.suppress(OSError):
            return (path.read_text().strip(),)
        raise ConfigError(f"{config.source}: registry.endpoints is empty and no embedded etcd is running ({path})")
    raise ConfigError("say where the registry is: --config FILE or --endpoints host:port")


def _agent_document(config: AgentConfig, path: str) -> dict[str, Any] | None:
    from federation.agent import ADMIN_ADDR_FILE

    try:
        addr = (config.state_dir / ADMIN_ADDR_FILE).read_text().strip()
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=3) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (OSError, urllib.error.URLError, ValueError):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 1
    data = _agent_document(config, "/status")
    if data is None:
        print(f"meshfed: no agent answers for {config.source} (is `meshfed agent --config {config.source}` running?)",
              file=sys.stderr)
        return 1
    from federation.reporting import format_status

    print(json.dumps(data, indent=2) if args.json else format_status(data))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from federation.demo import run_demo

    if args.log_level == "info":
        logging.getLogger().setLevel(logging.WARNING)  # the demo narrates; its agents log to files
    code: int = run_demo(Path(args.state_dir) if args.state_dir else None, keep=args.keep, down=args.down,
                         loopback=args.loopback)
    return code


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)
