"""What the relays of one process share: the read buffer, and the count of streams in flight.

The count lets a stopping agent wait for streams to end, and hands the memory of a burst of connections
back to the system once it is over (`federation.runtime.memory.Trimmer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

from federation.runtime import memory
from federation.runtime.memory import Trimmer

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
"""Bytes per read: large reads keep the per-chunk Python cost small next to the copying and crypto."""


class ActiveStreams:
    """Counts the streams in flight so a shutdown can wait for them to end, and hands the memory of a burst
    back to the system once it is over (`federation.runtime.memory.Trimmer`)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.tunnels = 0
        """Tunnels open (counted for the trim only)."""
        self.trimmer = Trimmer()
        self._trim: asyncio.TimerHandle | None = None
        self._due = 0.0

    def add(self) -> None:
        """A stream started."""
        self.count += 1
        self._idle.clear()
        self.trimmer.seen(self.count + self.tunnels, time.monotonic())

    def done(self) -> None:
        """A stream ended."""
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()
        self._closed()

    def tunnel_up(self) -> None:
        """A tunnel opened (they hold memory too, and often close after their streams: the trim waits for them)."""
        self.tunnels += 1
        self.trimmer.seen(self.count + self.tunnels, time.monotonic())

    def tunnel_down(self) -> None:
        """A tunnel closed."""
        self.tunnels = max(0, self.tunnels - 1)
        self._closed()

    def _closed(self) -> None:
        due = self.trimmer.seen(self.count + self.tunnels, time.monotonic())
        if due is not None and due != self._due:
            self._due = due
            if self._trim is not None:
                self._trim.cancel()
            loop = asyncio.get_running_loop()
            self._trim = loop.call_later(max(0.0, due - time.monotonic()), self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        if self.trimmer.due(self.count + self.tunnels, time.monotonic()):
            gc.collect()  # what is left in reference cycles first (the loop's transports take part in some)
            # malloc_trim walks every heap (milliseconds, more for a large one): not on the loop.
            asyncio.get_running_loop().run_in_executor(None, _trim, self.count)

    async def wait_idle(self, grace: float) -> None:
        """Return when no stream is left, or after `grace` seconds."""
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()


class ReadBuffer:
    """The one read buffer every connection of the process reads into, in turn.

    A read and the handling of what it brought happen in one callback of the loop, so connections can
    share a buffer: a connection at rest holds no read buffer at all (issue 17: 16 KiB per socket, two
    sockets per relayed connection, was half of what a connection cost). When the transport the bytes
    went to keeps a view of them (its write buffer is not empty), the buffer is left to it and a new
    one taken, so no byte is overwritten before it has been sent.
    """

    def __init__(self, size: int = READ_SIZE) -> None:
        self.size = size
        self._buf: bytearray | None = None
        self.replaced = 0
        """Buffers left to a transport that still held a view (tests, benchmarks)."""

    def view(self) -> memoryview:
        """The buffer to read into now."""
        if self._buf is None:
            self._buf = bytearray(self.size)
        # A memoryview, not the bytearray: asyncio's sslproto slices it and reads into the slice.
        return memoryview(self._buf)

    def filled(self, nbytes: int) -> memoryview:
        """The bytes the last read put in the buffer."""
        assert self._buf is not None
        return memoryview(self._buf)[:nbytes]

    def pinned(self) -> None:
        """A transport keeps a view of the buffer: take a new one for the next read."""
        self._buf = None
        self.replaced += 1


READS = ReadBuffer()
"""The process's read buffer (`read_size` resizes it; gateway worker processes have their own)."""


def set_read_size(size: int) -> None:
    """Use reads of `size` bytes from now on (the gateway's `read_size` setting)."""
    if size != READS.size:
        READS.size = size
        READS.pinned()


def _trim(active: int) -> None:
    before = memory.rss()
    memory.trim()
    log.info("returned memory to the system after a burst of connections (%d still open): RSS %d -> %d MiB",
             active, before >> 20, memory.rss() >> 20)
