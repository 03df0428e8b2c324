"""`meshfed agent` (run a site's agent) and `meshfed status` (ask the running agent about its site)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from federation.agent.selection import add_selection_options, parse_selection, selection_query
from federation.agent.settings import ADMIN_ADDR_FILE, AgentSettings, load_settings
from federation.core.errors import ConfigError, MeshfedError

log = logging.getLogger(__name__)


def add_commands(sub: Any) -> None:
    """Register `agent` and `status`."""
    p = sub.add_parser("agent", help="run a site's agent")
    p.add_argument("--config", required=True, help="agent config file (YAML)")
    p.add_argument("--workers", type=int, default=None,
                   help="gateway processes sharing the east-west port (SO_REUSEPORT); overrides gateway.workers")
    p.set_defaults(handler=cmd_agent)

    st = sub.add_parser("status", help="this site's agent: registry, gateway, DNS, exports, imports")
    st.add_argument("--config", default="/etc/meshfed/agent.yaml", help="agent config file (finds the agent)")
    st.add_argument("--json", action="store_true", help="print JSON")
    add_selection_options(st)
    st.set_defaults(handler=cmd_status)


def cmd_agent(args: argparse.Namespace) -> int:
    try:
        overrides = {"gateway.workers": args.workers} if args.workers is not None else {}
        settings = load_settings(args.config, overrides=overrides)  # every section checked before anything starts
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 2
    return run_agent_process(settings, reload=lambda: load_settings(args.config, overrides=overrides))


def run_agent_process(settings: AgentSettings, reload: Callable[[], AgentSettings] | None = None) -> int:
    """Run an agent in this process until SIGINT/SIGTERM; SIGHUP reloads the config with `reload`; exit code
    for the shell."""
    from federation.agent.root import Agent  # the whole agent: imported by the one command that runs it
    from federation.runtime import memory

    memory.tune()  # before any thread starts: the arena cap applies to threads made after it

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        agent = Agent(settings, reload=reload)
        loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
        await agent.run(stop)

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


def agent_document(settings: AgentSettings, path: str) -> dict[str, Any] | None:
    """GET `path` from the admin endpoint of the agent running with `settings` (None if none answers)."""
    try:
        addr = (settings.state_dir / ADMIN_ADDR_FILE).read_text().strip()
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=3) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (OSError, urllib.error.URLError, ValueError):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 1
    query = selection_query(args)
    try:
        parse_selection(query)
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 2
    data = agent_document(settings, "/status" + (f"?{urllib.parse.urlencode(query)}" if query else ""))
    if data is None:
        print(f"meshfed: no agent answers for {settings.source} "
              f"(is `meshfed agent --config {settings.source}` running?)", file=sys.stderr)
        return 1
    from federation.agent.reporting import format_status

    print(json.dumps(data, indent=2) if args.json else format_status(data))
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)
