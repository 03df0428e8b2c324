"""What every registry user shares: the typed etcd values, the session loop, and each client's link health.

No gRPC here (`federation.registry.etcd` is the adapter): these are the plain types the adapter returns,
`reconnecting` (the one retry policy: a bounded, jittered backoff, and the next member on every error),
and `Link`, which says for one client whether it reaches etcd now, through which member, and since when,
for /readyz, `meshfed status` and the `meshfed_registry_reachable` metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from federation.core.errors import RegistryUnavailable

MAX_TXN_OPS = 100
"""etcd refuses transactions with more than --max-txn-ops (default 128) operations."""


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix`."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class KV:
    """One stored key/value with the metadata meshfed uses."""

    value: bytes
    lease: int = 0
    create_revision: int = 0
    mod_revision: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put (value set) or a delete (value None) of `key` at `revision`."""

    key: str
    value: bytes | None
    revision: int


class Compacted(RegistryUnavailable):
    """The revision asked for has been compacted away: list again."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted below {compacted_revision}")
        self.compacted_revision = compacted_revision


@dataclass(frozen=True, slots=True)
class Put:
    """Transaction op: put `value` at `key`, bound to `lease` (0: none)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Transaction op: delete `key`."""

    key: str


@dataclass(frozen=True, slots=True)
class Absent:
    """Transaction condition: `key` does not exist."""

    key: str


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Transaction condition: `key` was last written at `mod_revision` (it exists and nobody changed it since)."""

    key: str
    mod_revision: int


@dataclass(slots=True)
class Link:
    """How one registry client reaches etcd: the member it uses, whether its last call worked, since when."""

    name: str
    """Who uses the client: mirror, publisher, lease, vip-allocator, access-policies."""
    endpoint: str = ""
    """The member the next call goes to."""
    reachable: bool | None = None
    """None until the first call ended; then whether the last one worked."""
    error: str | None = None
    """Why the last call failed (None once one worked again)."""
    since: float = field(default_factory=time.monotonic)
    """When `reachable` last changed (monotonic seconds)."""
    failovers: int = 0
    """Times the client moved to another member after an error."""

    def ok(self) -> None:
        """A call worked."""
        if self.reachable is not True:
            self.reachable = True
            self.since = time.monotonic()
        self.error = None

    def failed(self, reason: str) -> None:
        """A call failed."""
        if self.reachable is not False:
            self.reachable = False
            self.since = time.monotonic()
        self.error = reason

    def down_for(self, now: float | None = None) -> float:
        """Seconds since the link went bad; 0 while it works (or has not been tried)."""
        if self.reachable is not False:
            return 0.0
        return (time.monotonic() if now is None else now) - self.since

    def describe(self) -> dict[str, object]:
        """The link as `meshfed status` shows it."""
        return {
            "client": self.name, "endpoint": self.endpoint, "reachable": self.reachable,
            "downSeconds": round(self.down_for(), 1) or None, "error": self.error, "failovers": self.failovers,
        }  # fmt: skip


class Links:
    """Every registry client's link in one agent; exported as metrics by `register`."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}

    def add(self, link: Link) -> Link:
        """Track `link` (by its name: a later one of the same name replaces it)."""
        self._links[link.name] = link
        return link

    def __iter__(self) -> Iterator[Link]:
        return iter(sorted(self._links.values(), key=lambda link: link.name))

    def unreachable(self, grace: float = 0.0) -> list[Link]:
        """Links whose last call failed, down for more than `grace` seconds."""
        now = time.monotonic()
        return [link for link in self if link.reachable is False and link.down_for(now) > grace]

    def register(self, registry: CollectorRegistry) -> None:
        """Expose `meshfed_registry_reachable{client}` and `meshfed_registry_failovers_total{client}`."""
        registry.register(_LinkCollector(self))


class _LinkCollector:
    def __init__(self, links: Links) -> None:
        self._links = links

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("meshfed_registry_reachable",
                               "1 while this registry client's last etcd call worked", labels=["client"])
        moved = CounterMetricFamily("meshfed_registry_failovers",
                                    "Times a registry client moved to another etcd member after an error",
                                    labels=["client"])
        for link in self._links:
            up.add_metric([link.name], 0.0 if link.reachable is False else 1.0)
            moved.add_metric([link.name], float(link.failovers))
        return [up, moved]


class FailingOver(Protocol):
    """What `reconnecting` needs of a client (federation.registry.etcd.EtcdClient fits)."""

    @property
    def generation(self) -> int: ...
    async def fail_over(self, generation: int, reason: str) -> None: ...
    async def close(self) -> None: ...


async def reconnecting(client: FailingOver, session: Callable[[], Awaitable[None]],
                       on_error: Callable[[RegistryUnavailable], float]) -> None:
    """Run `session` again and again until cancelled: after each RegistryUnavailable, `on_error` says
    how long to wait, and the client moves to the next member (unless a failed call already moved it).
    The client is closed at the end."""
    try:
        while True:
            generation = client.generation
            try:
                await session()
            except RegistryUnavailable as exc:
                delay = on_error(exc)
                if not isinstance(exc, Compacted):
                    await client.fail_over(generation, str(exc))
                await asyncio.sleep(delay)
    finally:
        await asyncio.shield(client.close())
