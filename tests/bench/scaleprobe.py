"""Helper processes of the scale benchmark, each `python -m tests.bench.scaleprobe ROLE ...`:

- `floor ENDPOINT`: the bare aetcd watch floor. Watches the whole prefix from the current revision + 1,
  JSON-decodes every value (nothing else) and prints `F <change> <time>` the first time a change's address
  appears. Prints `READY` once watching.
- `sink PKI_DIR`: the peer gateways of the simulated sites. One TLS 1.3 listener on 127.0.0.1 that
  presents, by SNI (`<gateway>.<site>.<trust domain>`, as the egress sends it), the gateway certificate
  of the site asked for, so the observer's egress can pre-open its tunnels as it would to real gateways;
  it holds them open, answers a gateway probe for that site (as a live gateway does) and discards the rest. Prints `READY <port>`.
- `probe DNS_HOST:PORT NAMES_FILE [RTT_HOST:PORT]`: on each `measure <seconds> [<least>]` line of input,
  sends one A query every 10 ms (names drawn at random from the file) and, when a tunnel address is
  given, one 64-byte round trip every 10 ms on one connection through it, in two threads of their own
  process (so the benchmark's own event loop adds nothing to these latencies), for `seconds` and then
  on until each made `least` attempts (at most 5 x `seconds`); prints `RESULT <json>`.

Times are time.monotonic() (one clock for every process on the host). Each runs until its input closes.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import aetcd
import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from federation.core.errors import RemoteProtocolError
from federation.core.keys import Keys
from gateway.preamble import NEED_DATA, Preamble, Probe, ProbeAnswer, Role
from tests.bench.scalemesh import change_of

PERIOD = 0.01
"""One DNS query and one round trip every 10 ms: 100 per second each."""
DNS_TIMEOUT = 2.0
RTT_TIMEOUT = 5.0


async def floor(endpoint: str) -> None:
    host, _, port = endpoint.rpartition(":")
    seen: set[int] = set()
    prefix = Keys().root().encode()
    options = {"grpc.max_receive_message_length": 64 * 2**20}
    async with aetcd.Client(host=host, port=int(port), options=options) as client:
        revision = (await client.get_prefix(b"\0none", keys_only=True)).header.revision
        watch = await client.watch_prefix(prefix, start_revision=revision + 1)
        print("READY", flush=True)
        async for event in watch:
            at = time.monotonic()
            if not event.kv.value:
                continue
            record = json.loads(event.kv.value)
            for ep in record.get("endpoints", ()):
                change = change_of(ep["addresses"][0])
                if change is not None and change not in seen:
                    seen.add(change)
                    print(f"F {change} {at:.6f}", flush=True)


class _Hold(asyncio.Protocol):
    """An accepted tunnel: kept open; a probe is answered as the site's gateway would, other bytes discarded
    (a pooled tunnel sends none until it is used)."""

    def __init__(self, sites: dict[int, str]) -> None:
        self._sites = sites
        self._transport: asyncio.Transport | None = None
        self._preamble: Preamble | None = Preamble(Role.SERVER)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._preamble is None or self._transport is None:
            return
        self._preamble.receive_data(data)
        try:
            event = self._preamble.next_event()
        except RemoteProtocolError:
            self._preamble = None
            return
        if isinstance(event, Probe):
            sslobj = self._transport.get_extra_info("ssl_object")
            site = self._sites.get(id(sslobj.context) if sslobj is not None else 0, "")
            if site:
                self._transport.write(self._preamble.send(ProbeAnswer(event.nonce, int(time.time() * 1000), site)))
        if event is not NEED_DATA:
            self._preamble = None


async def sink(pki: Path) -> None:
    contexts: dict[str, ssl.SSLContext] = {}
    for pem in sorted(pki.glob("*.pem")):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(pem)
        contexts[pem.stem] = ctx
    if not contexts:
        raise SystemExit(f"sink: no *.pem under {pki}")
    default = next(iter(contexts.values()))
    sites = {id(ctx): site for site, ctx in contexts.items()}

    def by_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        labels = (name or "").split(".")
        if len(labels) > 1 and labels[1] in contexts:
            sslobj.context = contexts[labels[1]]

    default.sni_callback = cast(Any, by_sni)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Hold(sites), "127.0.0.1", 0, ssl=default, backlog=4096,
                                      ssl_handshake_timeout=30)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def _more(start: float, n: int, seconds: float, least: int) -> bool:
    """Go on for `seconds`, and past them until `least` attempts were made (at most 5 x `seconds` in all)."""
    elapsed = time.monotonic() - start
    if elapsed < seconds:
        return n < int(seconds / PERIOD) + 1
    return n < least and elapsed < 5 * seconds


def _dns_loop(host: str, port: int, names: list[str], seconds: float, least: int, out: dict[str, Any]) -> None:
    rng = random.Random(7)
    lat: list[float] = []
    timeouts = errors = 0
    start = time.monotonic()
    n = 0
    while _more(start, n, seconds, least):
        q = dns.message.make_query(rng.choice(names), dns.rdatatype.A)
        t0 = time.perf_counter()
        try:
            dns.query.udp(q, host, port=port, timeout=DNS_TIMEOUT)
            lat.append(time.perf_counter() - t0)
        except dns.exception.Timeout:
            timeouts += 1
        except Exception:  # counted; the loop goes on
            errors += 1
        n += 1
        delay = start + n * PERIOD - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    out.update(dns=lat, dns_timeouts=timeouts, dns_errors=errors)


class _Rtt:
    """One connection through the egress to the echo service behind the real gateway."""

    def __init__(self, host: str, port: int) -> None:
        self.where = (host, port)
        self.sock: socket.socket | None = None

    def one(self) -> float:
        if self.sock is None:
            self.sock = socket.create_connection(self.where, timeout=RTT_TIMEOUT)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 64
        t0 = time.perf_counter()
        self.sock.sendall(msg)
        got = 0
        while got < len(msg):
            chunk = self.sock.recv(len(msg) - got)
            if not chunk:
                raise ConnectionResetError("tunnel closed")
            got += len(chunk)
        return time.perf_counter() - t0

    def loop(self, seconds: float, least: int, out: dict[str, Any]) -> None:
        lat: list[float] = []
        errors: list[str] = []
        start = time.monotonic()
        n = 0
        while _more(start, n, seconds, least):
            try:
                lat.append(self.one())
            except OSError as exc:
                errors.append(repr(exc))
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
            n += 1
            delay = start + n * PERIOD - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        out.update(rtt=lat, rtt_errors=len(errors), rtt_error=errors[-1] if errors else None)


def probe(dns_at: str, names_file: Path, rtt_at: str | None) -> None:
    host, _, port = dns_at.rpartition(":")
    names = names_file.read_text().split()
    rtt = None
    if rtt_at:
        rhost, _, rport = rtt_at.rpartition(":")
        rtt = _Rtt(rhost, int(rport))
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "measure":
            continue
        seconds = float(words[1])
        least = int(words[2]) if len(words) > 2 else 0
        out: dict[str, Any] = {}
        threads = [threading.Thread(target=_dns_loop, args=(host, int(port), names, seconds, least, out))]
        if rtt is not None:
            threads.append(threading.Thread(target=rtt.loop, args=(seconds, least, out)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(5 * seconds + 30)
        print("RESULT", json.dumps(out), flush=True)


def main(argv: list[str]) -> None:
    role = argv[0]
    if role == "floor":
        asyncio.run(floor(argv[1]))
    elif role == "sink":
        asyncio.run(sink(Path(argv[1])))
    elif role == "probe":
        probe(argv[1], Path(argv[2]), argv[3] if len(argv) > 3 else None)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
