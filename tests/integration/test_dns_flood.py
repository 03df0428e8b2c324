"""The DNS server under a random-name flood with forwarding on, against an upstream that answers late."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import sys

import dns.message
import dns.rcode
import dns.rrset

from federation.dns.server import MAX_FORWARDS
from tests.integration.test_dns_server import mesh, serving, texts


class LateUpstream(asyncio.DatagramProtocol):
    """An upstream resolver on 127.0.0.1 that answers late: it holds every query until `release()`."""

    def __init__(self) -> None:
        self.held: list[tuple[dns.message.Message, tuple[str, int]]] = []
        self.most_held = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.held.append((dns.message.from_wire(data), addr))
        self.most_held = max(self.most_held, len(self.held))

    def release(self) -> None:
        assert self.transport is not None
        for q, addr in self.held:
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1"))
            self.transport.sendto(r.to_wire(), addr)
        self.held.clear()


class Answers(asyncio.DatagramProtocol):
    """A client socket that counts the answers it gets, by rcode and by whether they carry the upstream's A."""

    def __init__(self) -> None:
        self.servfail: set[int] = set()
        self.forwarded: set[int] = set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        r = dns.message.from_wire(data)
        if r.rcode() == dns.rcode.SERVFAIL:
            self.servfail.add(r.id)
        elif texts(r) == ["192.0.2.1"]:
            self.forwarded.add(r.id)


def big_buffer(sock: socket.socket, size: int = 4 << 20) -> None:
    """A receive buffer of `size` bytes: SO_RCVBUFFORCE as root, else as much as net.core.rmem_max allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


async def _wait_for(check: object, what: str, timeout: float = 20.0, state: object = None) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {state() if state else ''}")  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_a_random_name_flood_with_forwarding_on_stays_bounded() -> None:
    """Against an upstream that answers late, floods of random names outside the zone: MAX_FORWARDS forwards
    in flight and no more, SERVFAIL at once for every query beyond, the upstream's answer for the held ones
    once it comes, and nothing left over: memory blocks and file descriptors flat over the rounds.
    Bounded in count (5 rounds of 2 x MAX_FORWARDS queries) and in time (20 s per wait)."""
    bound = MAX_FORWARDS
    loop = asyncio.get_running_loop()
    upstream_t, upstream = await loop.create_datagram_endpoint(LateUpstream, local_addr=("127.0.0.1", 0))
    client_t, answers = await loop.create_datagram_endpoint(Answers, local_addr=("127.0.0.1", 0))
    for t in (upstream_t, client_t):  # the forwards leave in one burst: room for all of them
        big_buffer(t.get_extra_info("socket"))
    rng = random.Random(1645)
    n = 2 * bound
    blocks: list[int] = []
    fds: list[int] = []
    try:
        port = upstream_t.get_extra_info("sockname")[1]
        async with serving(mesh(), upstreams=(f"127.0.0.1:{port}",), forward_timeout=60) as server:
            target = server.udp_addresses[0]
            for _ in range(5):
                answers.servfail.clear()
                answers.forwarded.clear()
                overload = server._err["overload"]
                for i in range(n):
                    label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
                    q = dns.message.make_query(f"{label}.example.org", "A")
                    q.id = i
                    client_t.sendto(q.to_wire(), target)
                    if i % 32 == 31:
                        await asyncio.sleep(0)  # let the server read: its socket buffer holds a few hundred
                await _wait_for(lambda: len(upstream.held) == bound and len(answers.servfail) == n - bound,
                             "the flood forwarded up to the bound and refused beyond it",
                             state=lambda: (len(upstream.held), len(answers.servfail), len(server._tasks)))
                assert len(server._tasks) == bound
                assert server._err["overload"] - overload == n - bound
                upstream.release()
                await _wait_for(lambda: len(answers.forwarded) == bound and not server._tasks, "the late answers",
                             state=lambda: (len(answers.forwarded), len(server._tasks)))
                assert answers.forwarded.isdisjoint(answers.servfail)
                gc.collect()
                blocks.append(sys.getallocatedblocks())
                fds.append(len(os.listdir("/proc/self/fd")))
    finally:
        upstream_t.close()
        client_t.close()
    assert upstream.most_held == bound
    # The first round warms up (dnspython's and asyncio's caches); a leak of one object per query would add
    # 2 x MAX_FORWARDS blocks a round, the measured growth is a handful.
    assert blocks[-1] - blocks[1] < n // 10, f"allocated blocks after each round: {blocks}"
    assert len(set(fds)) == 1, f"open file descriptors after each round: {fds}"
