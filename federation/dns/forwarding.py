"""Forwarding of names outside the zone to upstream resolvers, with a hard deadline.

An upstream that does not answer in time gives SERVFAIL (None here), never a hang; the number of
queries in flight is bounded by the server that calls this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message

from federation.dns.settings import split_hostport

log = logging.getLogger(__name__)


class Forwarder:
    """Sends a query to each upstream in turn until one answers, within `timeout` seconds in total."""

    def __init__(self, upstreams: Sequence[tuple[str, int]], timeout: float) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout

    async def resolve(self, query: dns.message.Message, *, udp: bool, limit: int) -> bytes | None:
        """The upstream's response as wire bytes of at most `limit` bytes, or None when none answered."""
        deadline = time.monotonic() + self.timeout
        for host, port in self.upstreams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                resp = await dns.asyncquery.udp(query, host, timeout=remaining, port=port, ignore_unexpected=True)
                if resp.flags & dns.flags.TC and not udp:
                    remaining = deadline - time.monotonic()
                    resp = await dns.asyncquery.tcp(query, host, timeout=max(remaining, 0.001), port=port)
            except (dns.exception.DNSException, OSError, ValueError, EOFError) as exc:
                log.debug("upstream %s:%d failed: %s", host, port, exc)
                continue
            resp.id = query.id
            return resp.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)
        return None


def read_resolv_conf(path: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    """The `nameserver` addresses of a resolv.conf (scoped IPv6 ones left out); empty if unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and "%" not in parts[1]:
            out.append(parts[1])
    return tuple(out)


def upstream_addresses(
    configured: Iterable[str], fallback: Iterable[str], ours: Iterable[tuple[str, int]]
) -> tuple[tuple[str, int], ...]:
    """Configured upstreams, else the fallback ones, minus our own listen addresses (a loop)."""
    mine = set(ours)
    out = []
    for text in tuple(configured) or tuple(fallback):
        try:
            hp = split_hostport(text)
        except ValueError:
            continue
        if hp not in mine:
            out.append(hp)
    return tuple(out)


async def wait_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until they have finished."""
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
