"""Which part of a large admin document to show: `?site=`, `?service=`, `?limit=`, `?after=`. Pure.

At 1,000 sites the whole /registry document is tens of MiB; an operator asks for one site, one service
(a `namespace/name` glob such as `shop/*` or `*/web`) or a page of services in name order, and follows
`page.next` (pass it as `after`) for the next one. The same selection drives `meshfed registry ls
--site --service --limit --after`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from federation.core.errors import ConfigError

MAX_LIMIT = 10_000
"""The largest page; without a limit the whole (filtered) document is served."""

@dataclass(frozen=True, slots=True)
class Selection:
    """A filter and a page over the services of a document (sites are filtered, never paged)."""

    site: str | None = None
    """Only this site: its site record, and services it exports (with only its endpoints)."""
    service: str | None = None
    """A glob over `namespace/name` (a bare name matches it in any namespace)."""
    limit: int | None = None
    """At most this many services, in `namespace/name` order; None: all."""
    after: str | None = None
    """Start after this `namespace/name` (the previous page's `page.next`)."""

    def wants_service(self, namespace: str, name: str) -> bool:
        """True if the filter (not the page) keeps this service."""
        if self.service is None:
            return True
        pattern = self.service if "/" in self.service else f"*/{self.service}"
        return fnmatchcase(f"{namespace}/{name}", pattern)

    def page(self, keys: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None, int]:
        """The service keys of this page (sorted), the cursor of the next page (None: this is the last), and
        how many keys the filter keeps in all (every page's)."""
        matched = [k for k in keys if self.wants_service(*k)]
        ordered = sorted((k for k in matched if self.after is None or _name(k) > self.after), key=_name)
        if self.limit is None or len(ordered) <= self.limit:
            return ordered, None, len(matched)
        shown = ordered[: self.limit]
        return shown, _name(shown[-1]), len(matched)

    def report(self, total: int, shown: int, next_cursor: str | None) -> dict[str, Any]:
        """The `page` member of a document: what was asked and how to go on."""
        return {"site": self.site, "service": self.service, "limit": self.limit, "after": self.after,
                "matched": total, "shown": shown, "next": next_cursor}


EVERYTHING = Selection()
"""No filter, no page: the whole document."""


def parse_selection(query: Mapping[str, str]) -> Selection:
    """A Selection from URL query parameters (or CLI options); ConfigError names a bad one."""
    unknown = sorted(set(query) - {"site", "service", "limit", "after"})
    if unknown:
        raise ConfigError(f"unknown query parameter(s) {', '.join(unknown)}: use site, service, limit, after")
    limit = query.get("limit")
    if limit is not None:
        try:
            n = int(limit)
        except ValueError:
            raise ConfigError(f"limit={limit!r} is not a number") from None
        if not 1 <= n <= MAX_LIMIT:
            raise ConfigError(f"limit={n} is outside 1..{MAX_LIMIT}")
    return Selection(site=query.get("site") or None, service=query.get("service") or None,
                     limit=None if limit is None else int(limit), after=query.get("after") or None)


def _name(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


def add_selection_options(parser: Any, *, site: bool = True) -> None:
    """--site, --service, --limit, --after on a CLI command (argparse)."""
    if site:
        parser.add_argument("--site", help="only this site's records and endpoints")
    parser.add_argument("--service", help="only services matching NAMESPACE/NAME (globs: shop/*, */web, web)")
    parser.add_argument("--limit", help=f"at most this many services (1..{MAX_LIMIT}), in name order")
    parser.add_argument("--after", help="start after this NAMESPACE/NAME (the previous page's last one)")


def selection_query(args: Any) -> dict[str, str]:
    """The selection options of a parsed command line as query parameters (only those given)."""
    names = ("site", "service", "limit", "after")
    return {n: str(v) for n in names if (v := getattr(args, n, None)) is not None}
