"""The soak's client: N concurrent HTTP keep-alive connections, each renewed after N/rate seconds, a GET on each.

    python -m tests.bench.soakload --target 127.0.0.1:40000 --connections 5000 --rate 500 --seconds 600

New connections open at `rate` per second until `connections` are open; each is closed after its lifetime
(connections / rate seconds) and another one opened, so `rate` connections are opened and closed every
second. A connection counts as failed when its connect, its GET or its answer fails or takes over 10 s.
Prints one JSON line every 10 s and a summary line at the end; `lag_ms` is how late its own loop
woke at worst (a client short of CPU measures itself, not the path). Bounded in time and in samples kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import statistics
import sys
import time

MAX_SAMPLES = 200_000
TIMEOUT = 10.0


class Load:
    def __init__(self, host: str, port: int, connections: int, rate: float) -> None:
        self.host, self.port = host, port
        self.connections, self.rate = connections, rate
        self.lifetime = connections / rate
        self.open = 0
        self.opened = 0
        self.failed: dict[str, int] = {}
        self.latencies: list[float] = []
        self.window: list[float] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.lag = 0.0
        """The longest this loop woke late in the current window (seconds): a starved client, not meshfed."""
        self.worst_lag = 0.0

    async def one(self) -> None:
        self.opened += 1
        started = time.monotonic()
        writer = None
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
                             .split(b":")[1])
                await reader.readexactly(length)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                StopIteration) as exc:
            kind = type(exc).__name__
            self.failed[kind] = self.failed.get(kind, 0) + 1
            if writer is not None:
                writer.close()
            return
        latency = time.monotonic() - started
        if len(self.latencies) < MAX_SAMPLES:
            self.latencies.append(latency)
        self.window.append(latency)
        self.open += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lifetime * random.uniform(0.9, 1.1)):
                    await self.stopping.wait()
        finally:
            self.open -= 1
            writer.close()

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + self.lifetime + seconds  # the ramp, then `seconds` of renewals
        next_open = start
        next_report = start + 10
        while loop.time() < end:
            now = loop.time()
            while next_open <= now and loop.time() < end:
                if len(self.tasks) < self.connections:
                    task = loop.create_task(self.one())
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                next_open += 1.0 / self.rate
            if now >= next_report:
                self.report(now - start)
                next_report += 10
            wait = max(0.0, min(next_open, next_report) - loop.time())
            before = loop.time()
            await asyncio.sleep(wait)
            self.lag = max(self.lag, loop.time() - before - wait)  # this client's own loop is short of CPU
        self.stopping.set()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.report(loop.time() - start, final=True)

    def report(self, t: float, final: bool = False) -> None:
        lat = self.latencies if final else self.window
        out = {"t": round(t, 1), "open": self.open, "opened": self.opened, "failed": dict(self.failed),
               "p50_ms": _ms(lat, 50), "p99_ms": _ms(lat, 99), "final": final,
               "lag_ms": round(1000 * (self.worst_lag if final else self.lag), 1)}
        self.window = []
        self.worst_lag = max(self.worst_lag, self.lag)
        self.lag = 0.0
        print(json.dumps(out), flush=True)


def _ms(samples: list[float], pct: int) -> float | None:
    if len(samples) < 2:
        return None
    return round(statistics.quantiles(samples, n=100)[pct - 1] * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, _, port = args.target.rpartition(":")
    load = Load(host, int(port), args.connections, args.rate)
    try:
        import uvloop
    except ImportError:
        asyncio.run(load.run(args.seconds))
    else:
        uvloop.run(load.run(args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
