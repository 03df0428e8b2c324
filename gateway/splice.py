"""A raw relay between two plain sockets: the same-network direct path, half-close respected."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.relay import HIGH_WATER, Done

if TYPE_CHECKING:
    from gateway.relay import PlainLeg




class Splice:
    """A raw relay between two plain sockets (same-network direct path), half-close respected."""

    def __init__(self, a: PlainLeg, b: PlainLeg, idle_timeout: float, on_done: Done,
                 high_water: int = HIGH_WATER) -> None:
        assert a.transport is not None
        assert b.transport is not None
        self._legs = {id(a): (a, b), id(b): (b, a)}
        self.plain = a
        """The client's leg (`a`): bytes from it count up, bytes to it down."""
        self.bytes_up = 0
        self.bytes_down = 0
        self.clean: bool | None = None
        self.on_end: Callable[[Splice], None] | None = None
        """Called once it is over, after `on_done` (the access log makes its line)."""
        self._eof: set[int] = set()
        self._on_done = on_done
        self.done = False
        self._count = 0
        self._seen = -1
        self._strikes = 0
        self._idle = idle_timeout
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            idle_timeout / 2, self._check_idle)
        a.sink = b.sink = self
        a.attached = b.attached = True
        # As for tunnels: asyncio's 64 KiB default pauses a bulk stream every few reads.
        a.transport.set_write_buffer_limits(high=high_water)
        b.transport.set_write_buffer_limits(high=high_water)
        for leg in (a, b):
            if leg.lost:
                self.finish(clean=False)
                return
        for leg in (a, b):
            if leg.early:
                self.plain_data(leg, leg.take_early())
            if leg.early_eof and not self.done:
                self.plain_eof(leg)
        for leg in (a, b):
            if not self.done and leg.transport is not None:
                leg.transport.resume_reading()

    def out_for(self, leg: PlainLeg | None) -> asyncio.WriteTransport | None:
        """Where bytes read from `leg` are written."""
        return self._legs[id(leg)][1].transport if leg is not None else None

    def plain_data(self, leg: PlainLeg, data: bytes) -> None:
        self._count += 1
        if leg is self.plain:
            self.bytes_up += len(data)
        else:
            self.bytes_down += len(data)
        other = self._legs[id(leg)][1]
        assert other.transport is not None
        other.transport.write(data)

    def plain_eof(self, leg: PlainLeg) -> None:
        self._eof.add(id(leg))
        other = self._legs[id(leg)][1]
        if other.transport is not None and other.transport.can_write_eof() and not other.transport.is_closing():
            other.transport.write_eof()
        if len(self._eof) == 2:
            self.finish(clean=True)

    def plain_lost(self, leg: PlainLeg, exc: Exception | None) -> None:
        self.finish(clean=len(self._eof) == 2)

    def pause_from(self, leg: PlainLeg) -> None:
        other = self._legs[id(leg)][1]
        if other.transport is not None and not other.transport.is_closing():
            other.transport.pause_reading()

    def resume_from(self, leg: PlainLeg) -> None:
        other = self._legs[id(leg)][1]
        if not self.done and other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()

    def finish(self, clean: bool) -> None:
        """Close both sockets (abort them unless both ends finished cleanly)."""
        if self.done:
            return
        self.done = True
        self.clean = clean
        if self._timer is not None:
            self._timer.cancel()
        for a, _ in self._legs.values():
            a.sink = None
            if a.transport is not None:
                a.transport.close() if clean else a.transport.abort()
        self._on_done(clean)
        if self.on_end is not None:
            self.on_end(self)

    def _check_idle(self) -> None:
        self._timer = None
        if self.done:
            return
        self._strikes = self._strikes + 1 if self._count == self._seen else 0
        self._seen = self._count
        if self._strikes >= 2:
            self.finish(clean=False)
            return
        self._timer = asyncio.get_running_loop().call_later(self._idle / 2, self._check_idle)
