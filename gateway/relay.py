"""Byte relays built on asyncio Protocols: a framed stream between a plain socket and a tunnel.

Flow control is end to end: when one side's write buffer fills, the other side stops reading.
Half-close is carried as an END frame in the tunnel and `write_eof` on plain TCP. A stream that
ended cleanly both ways leaves its tunnel reusable; anything else closes the tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from federation.core.errors import RemoteProtocolError
from gateway.framing import ABORT_FRAME, END_FRAME, Deframer, header
from gateway.refusals import Throttle
from gateway.streams import READS, ActiveStreams

log = logging.getLogger(__name__)
_throttle = Throttle()

__all__ = ["HIGH_WATER", "ActiveStreams", "Done", "PlainLeg", "Sink", "Stream", "TunnelLeg"]

HIGH_WATER = 1024 * 1024
"""Bytes a stream may queue towards a slow side before the other side stops reading (per direction)."""
_SMALL = 16 * 1024
"""Up to this size a chunk is copied behind its header so that it travels in one TLS record."""

Done = Callable[[bool], None]
"""Called once when a stream is over; True if it ended cleanly both ways (the tunnel may be reused)."""


class Sink(Protocol):
    """What a `PlainLeg` hands its bytes and events to: a tunnel `Stream`, or a direct `gateway.splice.Splice`."""

    def out_for(self, leg: PlainLeg | None) -> asyncio.WriteTransport | None: ...
    def plain_data(self, leg: PlainLeg, data: bytes) -> None: ...
    def plain_eof(self, leg: PlainLeg) -> None: ...
    def plain_lost(self, leg: PlainLeg, exc: Exception | None) -> None: ...
    def pause_from(self, leg: PlainLeg) -> None: ...
    def resume_from(self, leg: PlainLeg) -> None: ...


class _LargeReads(asyncio.BufferedProtocol):
    """Reads into the shared `READS` buffer and hands a view of what was read to `data_received`."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return READS.view()

    def buffer_updated(self, nbytes: int) -> None:
        out = self.out_transport()
        self.data_received(READS.filled(nbytes))  # type: ignore[arg-type]
        if out is not None and out.get_write_buffer_size():
            READS.pinned()

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def out_transport(self) -> asyncio.WriteTransport | None:
        """The transport that what is read now gets written to (it may keep a view of the buffer)."""
        raise NotImplementedError


class PlainLeg(_LargeReads):
    """A plain TCP socket (a client at the egress, an endpoint at the gateway) feeding a `Stream`.

    Reading is paused until a stream is attached, so nothing is read before the tunnel said ok.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        self.attached = False
        """A relay took this leg (it keeps its own reference to the transport until it ends)."""
        self.lost = False
        self.early_eof = False
        self.early = bytearray()
        self.on_lost: Callable[[], None] | None = None
        """Called once the connection is gone (the egress's traffic policy counts open connections with it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.plain_data(self, data)
        else:
            # Some loops (uvloop) deliver a read that was already under way when reading was paused.
            self.early += data
            if self.transport is not None:
                self.transport.pause_reading()

    def out_transport(self) -> asyncio.WriteTransport | None:
        return self.sink.out_for(self) if self.sink is not None else None

    def take_early(self) -> bytes:
        """Bytes that arrived before a stream was attached."""
        early, self.early = bytes(self.early), bytearray()
        return early

    def eof_received(self) -> bool:
        if self.sink is None:
            self.early_eof = True
        else:
            self.sink.plain_eof(self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.sink is not None:
            self.sink.plain_lost(self, exc)
        if self.on_lost is not None:
            self.on_lost()
        if self.attached:
            # The leg and its transport refer to each other: let reference counting free both now rather
            # than leave them to a full garbage collection (thousands of closed connections pile up).
            self.transport = None

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_from(self)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.resume_from(self)


class TunnelLeg(_LargeReads):
    """Base of the TLS side of a tunnel: control data before a stream, deframed payload during one."""

    def out_transport(self) -> asyncio.WriteTransport | None:
        return self.stream.out_for(None) if self.stream is not None else None

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self.closed = False

    def data_received(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.tunnel_data(data)
        else:
            self.control_data(data)

    def control_data(self, data: bytes) -> None:
        """Bytes received while no stream is attached (the preamble)."""
        raise NotImplementedError

    def eof_received(self) -> bool:
        if self.stream is not None:
            self.stream.finish(clean=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.finish(clean=False)
        self.transport = None  # as for PlainLeg: no cycle with the transport left for the collector

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.pause_plain_reading()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.resume_plain_reading()

    def close(self) -> None:
        """Close the tunnel connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Stream:
    """One use of a tunnel: relays between `plain` and the framed `tunnel` until both ends sent END."""

    def __init__(self, tunnel: TunnelLeg, plain: PlainLeg, idle_timeout: float, on_done: Done,
                 pending: bytes = b"", high_water: int = HIGH_WATER) -> None:
        assert tunnel.transport is not None
        assert plain.transport is not None
        self.tunnel = tunnel
        self.plain = plain
        self._tt = tunnel.transport
        self._pt = plain.transport
        # asyncio's 64 KiB default high-water mark pauses a bulk stream every few reads.
        self._pt.set_write_buffer_limits(high=high_water)
        self._tt.set_write_buffer_limits(high=high_water)
        self._deframer = Deframer()
        self._on_done = on_done
        self.sent_end = False
        self.got_end = False
        self.done = False
        self.bytes_up = 0
        self.bytes_down = 0
        self.clean: bool | None = None
        """How it ended (None: not yet): True when both ends finished cleanly (the access log's result)."""
        self.on_end: Callable[[Any], None] | None = None
        """Called with the stream once it is over, after `on_done` (the access log makes its line)."""
        self._idle_timeout = idle_timeout
        self._seen = (0, 0)
        self._idle_strikes = 0
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            idle_timeout / 2, self._check_idle
        )
        tunnel.stream = self
        plain.sink = self
        plain.attached = True
        if pending:
            self.tunnel_data(pending)
        if plain.early and not self.done:
            self.plain_data(plain, plain.take_early())
        if plain.early_eof and not self.done:
            self.plain_eof(plain)
        if plain.lost:
            self.finish(clean=False)
        elif not self.done:
            self._pt.resume_reading()

    def out_for(self, leg: PlainLeg | None) -> asyncio.WriteTransport:
        """Where bytes read from `leg` (None: from the tunnel) are written."""
        return self._tt if leg is not None else self._pt

    # -- plain -> tunnel
    def plain_data(self, _leg: PlainLeg, data: bytes) -> None:
        n = len(data)
        self.bytes_up += n
        if n <= _SMALL:
            self._tt.write(header(n) + data)  # one TLS record: what latency wants
        else:
            # Two TLS records (header, payload) cost less than copying a large payload to prepend 4 bytes.
            self._tt.writelines((header(n), data))

    def plain_eof(self, _leg: PlainLeg) -> None:
        if not self.sent_end:
            self.sent_end = True
            self._tt.write(END_FRAME)
            self._maybe_done()

    def plain_lost(self, _leg: PlainLeg, exc: Exception | None) -> None:
        if not (self.sent_end and self.got_end):
            self.finish(clean=False)

    # -- tunnel -> plain
    def tunnel_data(self, data: bytes) -> None:
        try:
            pieces = self._deframer.feed(data)
        except RemoteProtocolError as exc:
            _throttle.log(log, logging.WARNING, "broken", "tunnel stream broken by the peer: %s", exc)
            self.finish(clean=False)
            return
        for piece in pieces:
            self.bytes_down += len(piece)
            self._pt.write(piece)
        if self._deframer.aborted:
            self.finish(clean=False)
        elif self._deframer.ended:
            rest = self._deframer.rest()
            if rest and not self.sent_end:
                # The peer may start the next stream only after both ends sent END.
                self.finish(clean=False)
                return
            self.got_end = True
            if self._pt.can_write_eof() and not self._pt.is_closing():
                self._pt.write_eof()
            self._maybe_done()
            if rest:
                self.tunnel.data_received(rest)

    # -- flow control
    def pause_from(self, _leg: PlainLeg) -> None:
        self._tt.pause_reading()

    def resume_from(self, _leg: PlainLeg) -> None:
        if not self.done:
            self._tt.resume_reading()

    def pause_plain_reading(self) -> None:
        if not self.done and not self._pt.is_closing():
            self._pt.pause_reading()

    def resume_plain_reading(self) -> None:
        if not self.done and not self._pt.is_closing():
            self._pt.resume_reading()

    # -- ending
    def _maybe_done(self) -> None:
        if self.sent_end and self.got_end:
            self.finish(clean=True)

    def finish(self, clean: bool) -> None:
        """End the stream; a clean end leaves the tunnel ready for the next one, else it is closed."""
        if self.done:
            return
        self.done = True
        self.clean = clean
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.tunnel.stream = None
        self.plain.sink = None
        if clean:
            self._pt.close()
            self._tt.resume_reading()
        else:
            self._pt.abort()
            if not self.tunnel.closed:
                self._tt.write(ABORT_FRAME)
            self.tunnel.close()
        self._on_done(clean)
        if self.on_end is not None:
            self.on_end(self)

    def _check_idle(self) -> None:
        self._timer = None
        if self.done:
            return
        now = (self.bytes_up, self.bytes_down)
        self._idle_strikes = self._idle_strikes + 1 if now == self._seen else 0
        self._seen = now
        if self._idle_strikes >= 2:
            _throttle.log(log, logging.INFO, "idle", "stream idle for %.0f s, closing it", self._idle_timeout)
            self.finish(clean=False)
            return
        self._timer = asyncio.get_running_loop().call_later(self._idle_timeout / 2, self._check_idle)
