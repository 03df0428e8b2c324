"""`meshfed policy apply|get|ls|delete|diff|check`: mesh policies in the registry, as Kubernetes-shaped YAML.

TrafficPolicy, AccessPolicy and MeshAccessPolicy documents; with `--operator` (or $MESHFED_OPERATOR) what
is written is signed by the operator's key, as agents with `registry.signatures: require` demand. A file
is validated whole before anything is written: one bad document and nothing is applied. `check` says
whether a site may reach a service, and by which rule, from what is in the registry now.
Exit codes: 0 done (diff: no difference; check: allowed), 1 refused, failed, (diff) differences found or
(check) denied, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from federation.cli import access as access_cli
from federation.cli.registry import add_registry_options, registry_client
from federation.cli.site import add_operator_option
from federation.core.errors import ConfigError, PolicyError, RegistryUnavailable
from federation.core.policy import access
from federation.core.policy.codec import from_document
from federation.core.policy.kinds import ACCESS, TRAFFIC, PolicyKind, kind_of
from federation.registry.policies import PolicyStore, Sign, Stored

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], int]


class _Exit(Exception):
    """Stop the command with this exit code (its message already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _exits(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _Exit as exc:
            return exc.code

    run.__name__ = handler.__name__
    return run


def add_commands(sub: Any) -> None:
    """Register `policy apply|get|ls|delete|diff|check`."""
    pol = sub.add_parser("policy", help="mesh policies (TrafficPolicy, AccessPolicy YAML) in the registry")
    psub = pol.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    apply = psub.add_parser("apply", help="validate a file of TrafficPolicy documents and store them")
    apply.add_argument("-f", "--filename", required=True, help="YAML file (several documents allowed; - for stdin)")
    apply.add_argument("--dry-run", action="store_true", help="validate only; write nothing")
    apply.set_defaults(handler=cmd_apply)
    get = psub.add_parser("get", help="print the stored policy of a service, every default written out")
    get.add_argument("service", help="NAMESPACE/NAME")
    get.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    get.set_defaults(handler=cmd_get)
    ls = psub.add_parser("ls", help="list the stored policies (invalid ones with their reason)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=cmd_ls)
    delete = psub.add_parser("delete", help="remove the policy of a service (defaults apply again)")
    delete.add_argument("service", help="NAMESPACE/NAME")
    delete.set_defaults(handler=cmd_delete)
    diff = psub.add_parser("diff", help="show what applying a file would change (exit 1 when something would)")
    diff.add_argument("-f", "--filename", required=True, help="YAML file (several documents allowed; - for stdin)")
    diff.set_defaults(handler=cmd_diff)
    for p in (get, ls, delete):
        p.add_argument("--kind", choices=("traffic", "access"), default="traffic",
                       help="which policies (default traffic)")
    for p in (apply, delete):
        add_operator_option(p)
    for p in (apply, get, ls, delete, diff):
        add_registry_options(p)
    access_cli.add_check(psub)


def load_file(path: str) -> list[Any]:
    """Every policy in a YAML file (TrafficPolicy, AccessPolicy, MeshAccessPolicy), validated; ConfigError
    naming file, document, field and reason."""
    where = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{at}: not YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not docs:
        raise ConfigError(f"{where}: no documents")
    out: list[Any] = []
    for i, doc in enumerate(docs):
        label = f"{where}" if len(docs) == 1 else f"{where} (document {i + 1})"
        kind = doc.get("kind") if isinstance(doc, dict) else None
        try:
            if kind == access.MESH_KIND:
                policy: Any = access.mesh_from_document(doc)
            else:
                policy = access.from_document(doc) if kind == access.KIND else from_document(doc)
        except PolicyError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        if any(type(p) is type(policy) and _name(p) == _name(policy) for p in out):
            raise ConfigError(f"{label}: {kind} {_name(policy)} is in the file twice")
        out.append(policy)
    return out


def _name(policy: Any) -> str:
    return "default" if isinstance(policy, access.MeshAccess) else f"{policy.namespace}/{policy.name}"


def _label(policy: Any) -> str:
    kind = "meshaccesspolicy" if isinstance(policy, access.MeshAccess) else kind_of(policy).kind.lower()
    return f"{kind} {_name(policy)}"


@_exits
def cmd_apply(args: argparse.Namespace) -> int:
    async def run(store: PolicyStore) -> list[str]:
        lines = []
        for p in policies:
            if isinstance(p, access.MeshAccess):
                changed = await access_cli.apply_mesh(store, p, sign)
            else:
                changed = await _store_for(store, kind_of(p), sign).apply(p)
            lines.append(f"{_label(p)} {'configured' if changed else 'unchanged'}")
        return lines

    try:
        policies = load_file(args.filename)
        sign = access_cli.signing(args)
    except ConfigError as exc:
        return _fail(f"{exc} (nothing applied)")
    if args.dry_run:
        for p in policies:
            print(f"{_label(p)} valid (dry run: nothing written)")
        return 0
    if sign is None and policies:  # traffic policies too: agents enforce them (issue 12 phase 2)
        print("meshfed policy: warning: not signed (no --operator): agents with registry.signatures: require "
              "ignore these policies", file=sys.stderr)
    for line in _with_store(args, run):
        print(line)
    return 0


@_exits
def cmd_get(args: argparse.Namespace) -> int:
    namespace, name = _service(args.service)
    kind = _kind(args)

    async def run(store: PolicyStore) -> Stored | None:
        return await _store_for(store, kind).get(namespace, name)

    stored = _with_store(args, run)
    if stored is None:
        return _fail(f"no {_what(kind)} for {namespace}/{name} (defaults apply)")
    if stored.policy is None:
        return _fail(f"the stored policy of {namespace}/{name} is invalid and is skipped by agents: {stored.error}")
    doc = kind.document(stored.policy)
    print(json.dumps(doc, indent=2) if args.output == "json" else _yaml(doc), end="" if args.output == "yaml" else "\n")
    return 0


@_exits
def cmd_ls(args: argparse.Namespace) -> int:
    kind = _kind(args)

    async def run(store: PolicyStore) -> list[Stored]:
        return await _store_for(store, kind).list()

    if kind is ACCESS:
        return access_cli.print_list(_with_store(args, run), args.json)
    rows = [_row(s) for s in _with_store(args, run)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no traffic policies (every service uses the defaults)")
        return 0
    header = ("SERVICE", "PORTS", "SPLIT", "FAULTS", "REVISION", "STATUS")
    table = [header] + [(r["service"], r["ports"], r["split"], r["faults"], str(r["revision"]), r["status"])
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


@_exits
def cmd_delete(args: argparse.Namespace) -> int:
    namespace, name = _service(args.service)
    kind = _kind(args)
    try:
        sign = access_cli.signing(args)
    except ConfigError as exc:
        return _fail(str(exc))

    async def run(store: PolicyStore) -> bool:
        return await _store_for(store, kind, sign).delete(namespace, name)

    if not _with_store(args, run):
        return _fail(f"no {_what(kind)} for {namespace}/{name}")
    how = " (signed tombstone)" if sign and kind.tombstone else ""
    print(f"{kind.kind.lower()} {namespace}/{name} deleted{how}")
    return 0


@_exits
def cmd_diff(args: argparse.Namespace) -> int:
    try:
        policies = load_file(args.filename)
    except ConfigError as exc:
        return _fail(str(exc))

    async def run(store: PolicyStore) -> list[str]:
        out: list[str] = []
        for p in policies:
            if isinstance(p, access.MeshAccess):
                continue
            kind = kind_of(p)
            stored = await _store_for(store, kind).get(p.namespace, p.name)
            old = "" if stored is None or stored.policy is None else _yaml(kind.document(stored.policy))
            label = "(none)" if stored is None else "(invalid)" if stored.policy is None else "stored"
            new = _yaml(kind.document(p))
            out += difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"{p.namespace}/{p.name} {label}", f"{p.namespace}/{p.name} {args.filename}")
        return out

    lines = _with_store(args, run)
    sys.stdout.write("".join(lines))
    return 1 if lines else 0


# ---------------------------------------------------------------- private


def _what(kind: PolicyKind) -> str:
    return "traffic policy" if kind is TRAFFIC else "access policy"


def _kind(args: argparse.Namespace) -> PolicyKind:
    return ACCESS if getattr(args, "kind", "traffic") == "access" else TRAFFIC


def _store_for(store: PolicyStore, kind: PolicyKind, sign: Sign | None = None) -> PolicyStore:
    return PolicyStore(store.client, store.keys, kind, sign=sign)


def _with_store(args: argparse.Namespace, work: Callable[[PolicyStore], Awaitable[T]]) -> T:
    """Run `work` against the registry the arguments name; exit 1 with the reason if that failed."""

    async def main() -> T:
        client, keys = registry_client(args)
        try:
            async with asyncio.timeout(client.timeout * 3):
                return await work(PolicyStore(client, keys))
        except TimeoutError:
            raise RegistryUnavailable(f"etcd at {','.join(client.endpoints)} did not answer in time") from None
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except (ConfigError, RegistryUnavailable) as exc:
        raise _Exit(_fail(str(exc))) from None


def _row(s: Stored) -> dict[str, Any]:
    rest = s.key.rsplit("/", 2)
    service = f"{rest[-2]}/{rest[-1]}" if len(rest) == 3 else s.key
    if s.policy is None:
        return {"service": service, "ports": "-", "split": "-", "faults": "-", "revision": s.revision,
                "status": f"invalid (skipped): {s.error}"}
    r = s.policy.rules
    split = ",".join(f"{t.site or ''}{'/' if t.site and t.labels else ''}"
                     f"{','.join(f'{k}={v}' for k, v in t.labels)}:{t.weight:g}" for t in r.split) or "-"
    return {"service": service, "ports": ",".join(str(p.port) for p in s.policy.ports) or "-", "split": split,
            "faults": str(len(r.faults)) if r.faults else "-", "revision": s.revision, "status": "ok"}


def _service(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise _Exit(_fail(f"{text!r} is not NAMESPACE/NAME", code=2))
    return namespace, name


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _fail(message: str, code: int = 1) -> int:
    print(f"meshfed policy: {message}", file=sys.stderr)
    return code
