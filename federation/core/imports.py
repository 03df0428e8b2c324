"""Scoped imports: which services of other sites this site carries (`imports:` in the agent config). Pure.

Like Istio's Sidecar egress hosts or Consul's upstreams: a site that names the services it needs keeps only
those in its registry mirror, DNS zone, VIP table and egress, so its memory and its work per registry change
follow what it uses, not the mesh. Patterns are `namespace/name` globs (`shop/*`, `*/web`, `payments/api`);
a bare name matches it in every namespace. By default (`*/*`) a site imports everything. This site's own
exports are always carried (conflicts with them must be seen).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

from federation.core.errors import ConfigError
from federation.core.keys import ServiceKey

EVERYTHING = ("*/*",)

_PATTERN = re.compile(r"[a-z0-9*?\[\]!-]{1,63}")


def check_patterns(patterns: Sequence[str], where: str = "imports") -> tuple[str, ...]:
    """The patterns, normalised to `namespace/name`; ConfigError names the first that is not one."""
    out = []
    for i, raw in enumerate(patterns):
        if not isinstance(raw, str):
            raise ConfigError(f"{where}[{i}]: {raw!r} is not a string")
        ns, slash, name = raw.partition("/")
        if not slash:
            ns, name = "*", raw
        if not (_PATTERN.fullmatch(ns) and _PATTERN.fullmatch(name)) or "/" in name:
            raise ConfigError(f"{where}[{i}]: {raw!r} is not NAMESPACE/NAME (lower-case DNS labels; globs * ? [])")
        out.append(f"{ns}/{name}")
    return tuple(out)


def import_filter(patterns: Sequence[str], own_site: str) -> Callable[[ServiceKey], bool] | None:
    """The catalog's `imports` check for `patterns` (normalised by check_patterns); None: import everything."""
    if not patterns or "*/*" in patterns:
        return None
    exact = {p for p in patterns if not any(c in p for c in "*?[")}
    globs = [p for p in patterns if p not in exact]

    def wanted(key: ServiceKey) -> bool:
        if key.site == own_site:
            return True
        name = f"{key.namespace}/{key.name}"
        return name in exact or any(fnmatchcase(name, g) for g in globs)

    return wanted
