"""The access log: one JSON line per relayed connection (egress, direct or tunnelled, and the east-west gateway).

Off by default (`access_log.path` empty). A connection is sampled when its relay starts (`access_log.sample`);
its line is made when the relay ends and put in a bounded buffer that one task writes out on a worker thread,
so neither a slow disk nor a full pipe holds the event loop. When the buffer is full a line is dropped and
counted (`meshfed_access_log_lines_total{result="dropped"}`), never waited for.

A line: `time` (start, RFC 3339 UTC), `source` (client address; inbound: the peer gateway's), `service`
(ns/name), `port` (port name), `route` (direct, gateway or inbound), `site` (the site that served it, or the
peer site for inbound), `gateway` (the gateway tunnelled through; direct:
the endpoint; inbound: the endpoint it reached), `bytesUp` (client
to service), `bytesDown`, `durationMs`, `result` (ok: both ends finished cleanly; reset: aborted, idle or
refused midway), `retries` (routes or endpoints that failed before this one), `identity` (only where known:
the client's workload SPIFFE ID, in the scope of the site that vouched for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter

from federation.core.settings import setting
from gateway.balancing import Direct, ListenerKey, Route

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    """The `access_log:` section: where lines go, how many connections get one, how many may wait."""

    path: str = ""
    """Empty: no access log (the default: a busy gateway writes a line per connection); `-`: standard output
    (a container's log); else a file, appended to, created 0600 (it names clients and services)."""
    sample: float = setting(1.0, lo=0.0, hi=1.0)
    """The share of connections logged: 1 logs each one; lower it on a gateway that relays thousands a second."""
    buffer: int = setting(10_000, lo=1, hi=1_000_000)
    """Lines waiting for the writer; beyond, new lines are dropped and counted (about 3 MiB at 300 bytes each)."""


@dataclass(slots=True)
class _Open:
    start: float
    began: float
    fields: dict[str, Any]


class AccessLog:
    """Sampled JSON lines for relayed connections, written by `run()` off the event loop."""

    def __init__(self, settings: AccessLogSettings | None = None, registry: CollectorRegistry | None = None, *,
                 clock: Callable[[], float] = time.time, sample: Callable[[], float] = random.random) -> None:
        self.settings = settings or AccessLogSettings()
        self._clock = clock
        self._sample = sample
        self._open: dict[int, _Open] = {}
        """id(relay) -> what is known of its connection since it started."""
        self._lines: list[str] = []
        self._wake = asyncio.Event()
        self.lines = Counter("meshfed_access_log_lines", "Access log lines, by what became of them",
                             ["result"], registry=registry or CollectorRegistry())
        for result in ("written", "dropped"):
            self.lines.labels(result)

    @property
    def enabled(self) -> bool:
        """Whether lines are made at all (`access_log.path` set)."""
        return bool(self.settings.path)

    # -- what the data plane calls

    def egress(self, client: Any, key: ListenerKey, route: Route, retries: int, identity: str | None = None) -> None:
        """A client of this site's egress is relayed over `route` after `retries` routes failed."""
        relay = getattr(client, "sink", None)
        if relay is None or not self._sampled():
            return  # sampled out, or already over (the client left while it was being attached)
        if isinstance(route, Direct):
            via, gateway = "direct", f"{route.target.address}:{route.target.port}"
        else:
            via, gateway = "gateway", f"{route.gateway.address}:{route.gateway.port}"
        self._started(relay, {"source": _peer(client), "service": f"{key[0]}/{key[1]}", "port": key[2],
                              "route": via, "site": route.site, "gateway": gateway, "retries": retries,
                              **({"identity": identity} if identity else {})})

    def inbound(self, relay: Any, key: ListenerKey, peer_site: str, peer: str, endpoint: str, retries: int,
                identity: str | None = None) -> None:
        """A stream from another site's egress reached `endpoint` through this site's gateway."""
        if not self._sampled():
            return
        self._started(relay, {"source": peer, "service": f"{key[0]}/{key[1]}", "port": key[2], "route": "inbound",
                              "site": peer_site, "gateway": endpoint, "retries": retries,
                              **({"identity": identity} if identity else {})})

    def ended(self, relay: Any) -> None:
        """The relay is over: make its line (bytes from the relay, result from how it ended)."""
        entry = self._open.pop(id(relay), None)
        if entry is None:
            return
        clean = bool(getattr(relay, "clean", False))
        up, down = getattr(relay, "bytes_up", 0), getattr(relay, "bytes_down", 0)
        if entry.fields["route"] == "inbound":  # the gateway's stream reads the endpoint as its plain side
            up, down = down, up
        line = {
            "time": dt.datetime.fromtimestamp(entry.start, dt.UTC).isoformat(timespec="milliseconds"),
            **entry.fields,
            "bytesUp": up, "bytesDown": down,
            "durationMs": round((time.monotonic() - entry.began) * 1000, 1),
            "result": "ok" if clean else "reset",
        }
        if len(self._lines) >= self.settings.buffer:
            self.lines.labels("dropped").inc()
            return
        self._lines.append(json.dumps(line, separators=(",", ":")))
        self._wake.set()

    # -- the writer

    async def run(self) -> None:
        """Write buffered lines until cancelled (on a worker thread: a slow disk never holds the loop)."""
        if not self.enabled:
            await asyncio.Event().wait()
        out = await asyncio.to_thread(self._open_output)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._lines = self._lines, []
                try:
                    await asyncio.to_thread(_write, out, batch)
                except OSError as exc:
                    self.lines.labels("dropped").inc(len(batch))
                    log.warning("access log: cannot write %s (%s); %d line(s) dropped", self.settings.path, exc,
                                len(batch))
                    await asyncio.sleep(1.0)
                    continue
                self.lines.labels("written").inc(len(batch))
        finally:
            self._last_lines(out)

    def _last_lines(self, out: IO[str]) -> None:
        """At stop: what is buffered still goes out (one small write), and a file is closed."""
        batch, self._lines = self._lines, []
        with contextlib.suppress(OSError):
            if batch:
                _write(out, batch)
                self.lines.labels("written").inc(len(batch))
            if out is not sys.stdout:
                out.close()

    # -- private

    def _sampled(self) -> bool:
        s = self.settings
        return bool(s.path) and (s.sample >= 1.0 or self._sample() < s.sample)

    def _started(self, relay: Any, fields: dict[str, Any]) -> None:
        if not relay.done:
            self._open[id(relay)] = _Open(self._clock(), time.monotonic(), fields)
            relay.on_end = self.ended

    def _open_output(self) -> IO[str]:
        if self.settings.path == "-":
            return sys.stdout
        fd = os.open(self.settings.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", buffering=1 << 16)


def _write(out: IO[str], lines: list[str]) -> None:
    out.write("\n".join(lines) + "\n")
    out.flush()


def _peer(leg: Any) -> str:
    """host:port of a leg's remote end (captured at accept: the transport is gone when the relay ends)."""
    transport = getattr(leg, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return ""
    host, port = peer[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
