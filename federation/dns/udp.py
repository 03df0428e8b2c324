"""The DNS server's UDP sockets: read in a tight loop on readiness, answered from the fast path in place."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

from federation.core.ratelimit import LogLimiter
from federation.dns.fastpath import FastPath

log = logging.getLogger("federation.dns.server")


class UdpHost(Protocol):
    """What a UDP socket needs of its server: the fast path, a log limiter, and the slow path."""

    fast: FastPath
    _limiter: LogLimiter

    def _datagram(self, data: bytes, addr: tuple[str, int], transport: UdpSocket) -> None: ...


class UdpSocket:
    """One UDP socket read in a tight loop on readiness: far less work per datagram than a protocol."""

    BATCH = 64
    """Datagrams handled per wake-up before yielding to the loop (TCP and timers must not starve)."""

    def __init__(self, server: UdpHost, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._sock = sock
        self._loop = loop
        self._answer: Callable[[bytes, bool], bytes | None] = server.fast.answer
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        self.fast = 0
        self._closed = False
        loop.add_reader(sock.fileno(), self._readable)

    def is_closing(self) -> bool:
        return self._closed

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:  # a full send buffer (BlockingIOError) or an unreachable client: UDP drops
            self._send_failed(addr, exc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _send_failed(self, addr: tuple[str, int], exc: OSError) -> None:
        if log.isEnabledFor(logging.DEBUG) and self._server._limiter.allow(("send", addr[0]), time.monotonic()):
            log.debug("dns udp send to %s failed: %s", addr[0], exc)

    def _readable(self) -> None:
        recv, send, answer = self._sock.recvfrom, self._sock.sendto, self._answer
        for _ in range(self.BATCH):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dns udp receive failed: %s", exc)
                return
            out = answer(data, True)
            if out is None:
                self._server._datagram(data, addr, self)
                continue
            self.fast += 1
            try:
                send(out, addr)
            except OSError as exc:
                self._send_failed(addr, exc)


def udp_socket(host: str, port: int, *, reuse: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
