"""A sample HTTP service for the demo and load tests: answers every GET with which service and site served it.

    python -m federation.devkit.sample --listen 198.18.1.11:8080 --service web --site east

One asyncio loop (uvloop when installed) and a real listen backlog, so that it is never the bottleneck
of what it demonstrates: thousands of concurrent keep-alive connections cost it a few KiB each, and
a burst of new ones waits in the kernel's queue instead of being refused. HTTP/1.1 keep-alive is
honoured (a load test can hold connections open); `Connection: close` and HTTP/1.0 close after the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import cast

BACKLOG = 4096
"""Pending connections the kernel queues (capped by net.core.somaxconn): a burst of 1,000 new connections
must wait, not be refused."""
MAX_HEADER = 16 * 1024
"""Bytes of request head read before the connection is closed (nothing this sample serves needs more)."""


class _Http(asyncio.Protocol):
    """One client connection: answers each request head in turn."""

    def __init__(self, body: bytes, stats: dict[str, int]) -> None:
        self._body = body
        self._stats = stats
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._stats["open"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats["open"] -= 1

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buf += data
        while b"\r\n\r\n" in self._buf:
            head, self._buf = self._buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            request = lines[0].split()
            method = request[0] if request else b""
            headers = {k.strip().lower(): v.strip().lower() for k, _, v in (h.partition(b":") for h in lines[1:])}
            close = len(request) < 3 or request[2] != b"HTTP/1.1" or headers.get(b"connection") == b"close"
            self._stats["requests"] += 1
            status = b"200 OK" if method in (b"GET", b"HEAD") else b"405 Method Not Allowed"
            body = self._body if method == b"GET" else b""
            self._transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                                  + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"")
                                  + b"\r\n\r\n" + body)
            if close:
                self._transport.close()
                return
        if len(self._buf) > MAX_HEADER:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the client is done: close our side too


async def serve(host: str, port: int, service: str, site: str, backlog: int = BACKLOG,
                ready: asyncio.Future[int] | None = None) -> None:
    """Serve until cancelled; `ready` gets the bound port."""
    stats = {"open": 0, "requests": 0}
    body = [b""]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(body[0], stats), host, port, backlog=backlog,
                                      reuse_address=True)
    bound = int(server.sockets[0].getsockname()[1])
    body[0] = f"{service} served by {site} ({host}:{bound})\n".encode()
    if ready is not None:
        ready.set_result(bound)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="IP:port (port 0 picks one)")
    parser.add_argument("--service", required=True)
    parser.add_argument("--site", required=True)
    parser.add_argument("--backlog", type=int, default=BACKLOG, help=f"listen backlog (default {BACKLOG})")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int] = loop.create_future()
        server = asyncio.create_task(serve(host, int(port), args.service, args.site, args.backlog, ready),
                                     name="sample")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.cancel)
        bound = await ready
        print(f"sample {args.service} of site {args.site} on {host}:{bound}", flush=True)
        await server

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:
            asyncio.run(run())
        else:
            uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
