"""Shedding data-plane load before it starves the control plane: a cap on connections and on the accept rate.

A connection beyond either is reset at once (RST, not a silent queue), counted, and logged at most once
a minute: a client sees `connection reset` and retries or fails over, while everything already relayed,
the lease keepalive, the registry watch, DNS and health checks keep their deadlines (issue 17). Pure
decisions with the time given; the settings are read at every decision, so a reload applies at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from gateway.refusals import Throttle
from gateway.settings import GatewaySettings

_throttle = Throttle()

CAPACITY = "capacity"
RATE = "rate"


class Shedder:
    """Admits a new connection while fewer than `max_connections` are in flight and the accept rate is within
    `accept_rate` per second (a token bucket of `accept_burst`)."""

    def __init__(self, settings: Callable[[], GatewaySettings]) -> None:
        self._settings = settings
        self._tokens: float | None = None
        self._at = 0.0
        self.shed = {CAPACITY: 0, RATE: 0}
        """Connections refused since start, by reason."""

    def refuse(self, in_flight: int, now: float) -> str | None:
        """None to admit a new connection at `now`, else why not (`capacity` or `rate`)."""
        s = self._settings()
        if in_flight >= s.max_connections:
            self.shed[CAPACITY] += 1
            return CAPACITY
        burst = float(s.accept_burst)
        tokens = burst if self._tokens is None else min(burst, self._tokens + (now - self._at) * s.accept_rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            self.shed[RATE] += 1
            return RATE
        self._tokens = tokens - 1.0
        return None


    def say(self, log: logging.Logger, who: str, why: str, in_flight: int) -> None:
        """Log that `who` sheds load (once a minute per reason)."""
        s = self._settings()
        _throttle.log(log, logging.WARNING, (who, why), "%s over its %s (%d in flight, max %d; at most %.0f new/s): "
                      "resetting new connections", who, why, in_flight, s.max_connections, s.accept_rate)


def reset(sock: Any) -> None:
    """Make closing `sock` (a socket, or a transport's) send a reset: the client knows at once."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset_transport(transport: Any) -> None:
    """Reset the connection of `transport` now."""
    if transport is not None:
        reset(transport.get_extra_info("socket"))
        transport.abort()
