"""Reloading the agent's settings without a restart (SIGHUP, `systemctl reload`): what may change live.

`plan(running, new)` is pure: it compares the two settings trees field by field and returns the tree to
run with from now on (the running one with every change that can be applied live taken from the new
one) and the changes that need a restart, which keep their running value until then. The agent puts
the tree in its `config` holder; the parts that follow it (static exports, VM checks, DNS answering and
forwarding, gateway timeouts, limits and buffers) take it from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from federation.core.errors import ConfigError
from federation.core.settings import Invalid

LIVE: frozenset[str] = frozenset({
    "exports",
    "vm.services",
    "dns.ttl", "dns.upstreams", "dns.forwarding", "dns.forward_timeout", "dns.site_pinning",
    "gateway.handshake_timeout", "gateway.preamble_timeout", "gateway.tunnel_idle_timeout", "gateway.idle_timeout",
    "gateway.connect_timeout", "gateway.drain_timeout",
    "gateway.max_connections", "gateway.accept_rate", "gateway.accept_burst",
    "gateway.read_size", "gateway.high_water",
})  # fmt: skip
"""Settings the running agent follows: new values apply to what starts after the reload (a check's next
round, the next DNS answer or forwarded query, the next connection), never to what is under way."""

_IGNORED = frozenset({"source"})
"""Not settings: where they came from."""


@dataclass(frozen=True, slots=True)
class Reload:
    """The outcome of comparing a new settings tree with the running one."""

    applied: Any
    """The tree to run with now: the running one with the live changes of the new one."""
    live: tuple[str, ...]
    """Fields changed and applied now (dotted paths)."""
    restart: tuple[str, ...]
    """Fields changed that take effect only after a restart; they keep their running value."""


def plan(running: Any, new: Any) -> Reload:
    """What a reload from `running` to `new` does (both already validated). Pure.

    ConfigError if the running tree with only the live changes breaks a rule between fields (a live
    timeout against a restart-only one): then nothing is applied.
    """
    changed = sorted(_diff(running, new, ""))
    live = tuple(p for p in changed if p in LIVE)
    restart = tuple(p for p in changed if p not in LIVE)
    applied = running
    for path in live:
        applied = _replace(applied, path.split("."), _get(new, path.split(".")))
    _validate(applied, "", getattr(new, "source", "<config>"))
    return Reload(applied, live, restart)


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
        out: list[str] = []
        for f in dataclasses.fields(a):
            if f.name in _IGNORED:
                continue
            out += _diff(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}" if not prefix
                         else f"{prefix}.{f.name}")
        return out
    return [] if a == b else [prefix]


def _validate(tree: Any, prefix: str, source: str) -> None:
    if not dataclasses.is_dataclass(tree):
        return
    check = getattr(tree, "validate", None)
    if check is not None:
        try:
            check()
        except Invalid as exc:
            where = f"{prefix}.{exc.field}" if prefix else exc.field
            raise ConfigError(f"{source}: {where}: {exc.reason} (with the running values of the settings that "
                              "need a restart)") from None
    for f in dataclasses.fields(tree):
        _validate(getattr(tree, f.name), f"{prefix}.{f.name}" if prefix else f.name, source)


def _get(tree: Any, parts: list[str]) -> Any:
    for part in parts:
        tree = getattr(tree, part)
    return tree


def _replace(tree: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    head, *rest = parts
    return dataclasses.replace(tree, **{head: _replace(getattr(tree, head), rest, value)})
