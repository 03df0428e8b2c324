"""`meshfed registry ls`: sites, services, endpoints, conflicts and staleness, read from etcd."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from federation.agent.reporting import format_report, registry_report
from federation.agent.selection import Selection, add_selection_options, parse_selection, selection_query
from federation.agent.settings import AgentSettings, load_settings
from federation.cli.agent import agent_document
from federation.core import envelope
from federation.core.catalog import Catalog
from federation.core.errors import ConfigError, RecordError, RegistryUnavailable
from federation.core.keys import DEFAULT_PREFIX, Keys
from federation.core.meshdocs import Revoked, decode_revocations, revocations_key
from federation.registry.etcd import EtcdClient

log = logging.getLogger(__name__)


def add_commands(sub: Any) -> None:
    """Register `registry ls`."""
    reg = sub.add_parser("registry", help="inspect the registry")
    regsub = reg.add_subparsers(dest="registry_command", metavar="COMMAND")
    ls = regsub.add_parser("ls", help="sites, services, endpoints, conflicts and staleness")
    add_registry_options(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_selection_options(ls)
    ls.set_defaults(handler=cmd_registry_ls)



def add_registry_options(parser: Any) -> None:
    """--config, --endpoints and --prefix: where the registry is (shared by the commands that read etcd)."""
    parser.add_argument("--config", help="agent config file: its registry settings (and its agent, as a fallback)")
    parser.add_argument("--endpoints", help="etcd host:port[,host:port...] (overrides the config)")
    parser.add_argument("--prefix", default=None, help=f"registry key prefix (default {DEFAULT_PREFIX})")


def registry_client(args: argparse.Namespace, config: AgentSettings | None = None) -> tuple[EtcdClient, Keys]:
    """An etcd client and key layout from --config/--endpoints/--prefix (ConfigError if neither says where)."""
    if config is None and args.config:
        config = load_settings(args.config)
    prefix = args.prefix or (config.registry.prefix if config else DEFAULT_PREFIX)
    tls = config.registry.tls if config else None
    timeout = config.registry.timeout if config else 5.0
    return EtcdClient(_endpoints(args, config), tls=tls, timeout=timeout), Keys(prefix)


def cmd_registry_ls(args: argparse.Namespace) -> int:
    try:
        selection = parse_selection(selection_query(args))
    except ConfigError as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_registry_report(args, selection))
    except (ConfigError, RegistryUnavailable) as exc:
        print(f"meshfed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


async def _registry_report(args: argparse.Namespace, selection: Selection) -> dict[str, Any]:
    """The report from etcd (with --site only that site's keys are read), else the agent's last view."""
    config = load_settings(args.config) if args.config else None
    client, keys = registry_client(args, config)
    endpoints = client.endpoints
    try:
        async with asyncio.timeout(client.timeout + 1 if selection.site else max(client.timeout + 1, 60)):
            if selection.site:
                kvs, revision = await client.get_prefix(keys.site_children(selection.site))
                for key in (keys.site(selection.site), revocations_key(keys)):
                    record = await client.get(key)
                    if record is not None:
                        kvs[key] = record
            else:
                kvs, revision = await client.get_prefix(keys.root())
    except (RegistryUnavailable, TimeoutError) as exc:
        query = selection_query(args)
        path = "/registry" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        fallback = agent_document(config, path) if config else None
        if fallback is None:
            raise RegistryUnavailable(f"cannot read the registry at {','.join(endpoints)}: {exc}") from None
        fallback["stale"] = True
        fallback["error"] = f"etcd unreachable from this shell ({exc}); showing the agent's last known view"
        return fallback
    finally:
        await client.close()
    revoked = _revoked(kvs.get(revocations_key(keys)))

    def check(key: str, parsed: object, value: bytes) -> None:
        site = getattr(parsed, "site", None)
        if isinstance(site, str) and site in revoked:
            raise RecordError(f"site {site} is revoked by the operator ({revoked[site].reason or 'no reason given'})")

    catalog = Catalog(keys, check=check)
    values = {k: v.value for k, v in kvs.items()}
    catalog.resync(values, revision)
    return registry_report(catalog.view(), catalog.rejected, source=f"etcd {','.join(endpoints)}", revoked=revoked,
                           signed=signed_records(keys, values), selection=selection)


def signed_records(keys: Keys, values: Mapping[str, bytes]) -> dict[str, tuple[int, int]]:
    """site -> (its records that carry a signature, its records): what is signed, not whether it verifies
    (agents verify; a record that does not is listed by their /registry document under REJECTED RECORDS)."""
    out: dict[str, tuple[int, int]] = {}
    for key, value in values.items():
        try:
            parsed = keys.parse(key)
            signature = envelope.split(value).signature if parsed is not None else None
        except RecordError:
            continue
        site = getattr(parsed, "site", None)
        if isinstance(site, str):
            n, total = out.get(site, (0, 0))
            out[site] = (n + (signature is not None), total + 1)
    return out


def _revoked(kv: Any) -> Mapping[str, Revoked]:
    """The revoked sites the registry's revocation list names (read as it is: agents verify its signature)."""
    if kv is None:
        return {}
    try:
        return decode_revocations(envelope.split(kv.value).body).sites
    except RecordError:
        return {}


def _endpoints(args: argparse.Namespace, config: AgentSettings | None) -> tuple[str, ...]:
    if args.endpoints:
        return tuple(e.strip() for e in args.endpoints.split(",") if e.strip())
    if config and config.registry.endpoints:
        return config.registry.endpoints
    if config:
        from federation.registry.embedded import ENDPOINT_FILE

        path = config.state_dir / "etcd" / ENDPOINT_FILE
        with contextlib.suppress(OSError):
            return (path.read_text().strip(),)
        raise ConfigError(f"{config.source}: registry.endpoints is empty and no embedded etcd is running ({path})")
    raise ConfigError("say where the registry is: --config FILE or --endpoints host:port")


