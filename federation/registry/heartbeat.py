"""Propagation lag between sites: each site stamps a heartbeat, every reader measures how late it arrives.

`HeartbeatWriter` puts `sites/<site>/heartbeat` every `registry.heartbeat_interval` seconds, signed like
the site's other records and bound to the publisher's lease (it goes when the site goes). `LagMeter` takes
each heartbeat the mirror's watch delivers (arrival time by this reader's clock minus the stamp by the
writer's) into `meshfed_registry_lag_seconds{site}`. A heartbeat is no change to the mesh view: the catalog
hands it over without making a view, so DNS, the egress and the VIP allocator do no work for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from federation.core.catalog import Outcome
from federation.core.errors import RegistryUnavailable
from federation.core.heartbeat import Heartbeat, encode_heartbeat
from federation.core.keys import Keys
from federation.core.ratelimit import LogLimiter
from federation.registry.etcd import EtcdClient, Put
from federation.registry.sealing import Seal
from federation.runtime.clock import clock_error
from federation.runtime.values import Readable

log = logging.getLogger(__name__)

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: a healthy etcd delivers in milliseconds; beyond 30 s a reader is as good as partitioned."""


class HeartbeatWriter:
    """Writes this site's heartbeat at a fixed interval while the publisher holds the site on a lease."""

    def __init__(self, client: EtcdClient, keys: Keys, site: str, interval: float, *, lease: Callable[[], int],
                 sealer: Readable[Seal | None] | None = None, clock: Callable[[], float] = time.time,
                 error: Callable[[], float | None] = clock_error) -> None:
        self._client = client
        self._key = keys.heartbeat(site)
        self._site = site
        self._interval = interval
        self._lease = lease
        """The publisher's lease, 0 while it holds none or has not published the site record yet."""
        self._sealer = sealer
        self._clock = clock
        self._error = error
        self._last_ms = 0
        self._log = LogLimiter(interval=60.0, capacity=4)
        self.written = 0
        """Heartbeats written since start (tests, status)."""

    async def run(self) -> None:
        """Write one heartbeat per interval until cancelled; a failed write is logged and the next one tried."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            lease = self._lease()
            if lease:
                await self._beat(lease)
            due += self._interval
            now = loop.time()
            if due < now:  # the loop was held or etcd was slow: skip the missed beats, keep the cadence
                due = now + self._interval - (now - due) % self._interval
            await asyncio.sleep(due - now)

    async def _beat(self, lease: int) -> None:
        now_ms = max(round(self._clock() * 1000), self._last_ms + 1)  # a later heartbeat signs later
        body = encode_heartbeat(Heartbeat(self._site, now_ms / 1000, self._interval, self._error()))
        kit = self._sealer.get() if self._sealer is not None else None
        value = kit.sign(self._key, body, now_ms) if kit is not None else body
        try:
            await self._client.commit([Put(self._key, value, lease)])
        except RegistryUnavailable as exc:
            if self._log.allow("write", time.monotonic()):
                log.warning("registry heartbeat: not written (%s); trying again in %.0fs", exc, self._interval)
            return
        self._last_ms = now_ms
        self.written += 1


@dataclass(frozen=True, slots=True)
class Sample:
    """The last heartbeat this reader took from one site."""

    lag: float
    """Arrival minus stamp, seconds (negative: the writer's clock runs ahead of ours by more than the lag)."""
    stamped: float
    """The writer's stamp (its clock)."""
    received: float
    """When it arrived (our clock)."""
    interval: float
    clock_error: float | None


class LagMeter:
    """How far behind this reader sees each site, from the heartbeats its watch delivers."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._histogram = Histogram(
            "meshfed_registry_lag_seconds",
            "Seconds from a site stamping its heartbeat to this agent's registry watch delivering it",
            ["site"], buckets=BUCKETS, registry=registry,
        )  # fmt: skip
        self.last: dict[str, Sample] = {}

    def take(self, outcome: Outcome) -> None:
        """The mirror's hook: observe a heartbeat the watch delivered, or forget a site whose heartbeat went."""
        beat = outcome.beat
        if beat is None:
            if outcome.beat_gone is not None:
                self.forget(outcome.beat_gone)
            return
        now = self._clock()
        lag = now - beat.at
        # A writer's clock ahead of ours would give a negative lag: observed as 0, kept as it is in `last`.
        self._histogram.labels(beat.site).observe(max(0.0, lag))
        self.last[beat.site] = Sample(lag, beat.at, now, beat.interval, beat.clock_error)

    def forget(self, site: str) -> None:
        """A site left: drop its series, so a mesh that churns does not grow them without bound."""
        if self.last.pop(site, None) is not None:
            self._histogram.remove(site)

    def prune(self, sites: Iterable[str]) -> None:
        """Forget every site not in `sites` (the mesh view's), e.g. those that left while etcd was away."""
        keep = set(sites)
        for site in [s for s in self.last if s not in keep]:
            self.forget(site)

    def stale_for(self, site: str) -> float:
        """Seconds `site`'s records have been stale: its heartbeat overdue (2 intervals + 1 s after the last
        came, as `report` says), 0 while on time or when it never sent one (an agent older than heartbeats)."""
        s = self.last.get(site)
        return 0.0 if s is None else max(0.0, self._clock() - s.received - (2 * s.interval + 1))

    def report(self) -> dict[str, dict[str, Any]]:
        """Per site: the last lag, how long ago its last heartbeat came, and whether it is overdue."""
        now = self._clock()
        return {
            site: {
                "lagSeconds": round(s.lag, 4),
                "heartbeatAgeSeconds": round(now - s.received, 3),
                "overdue": now - s.received > 2 * s.interval + 1,
                "intervalSeconds": s.interval,
                "clockErrorSeconds": s.clock_error,
            }
            for site, s in sorted(self.last.items())
        }
