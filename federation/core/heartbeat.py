"""The heartbeat record: a site's clock stamp, rewritten at a fixed interval beside its site record. Pure.

Readers take how long a heartbeat took to reach them (arrival minus stamp) as the propagation lag from that
site. It has a key of its own (`sites/<site>/heartbeat`) so that a new stamp is no change to the site
record: the catalog hands it to the lag meter and makes no new view, so DNS, the egress and the VIP
allocator never hear of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from federation.core.codec import dump_json, load_record
from federation.core.errors import RecordError
from federation.core.keys import HeartbeatKey

KIND = "Heartbeat"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One stamp of a site's clock."""

    site: str
    at: float
    """When the site wrote it, by its own clock (Unix seconds, millisecond precision)."""
    interval: float
    """Seconds until the next one (readers tell a late heartbeat from a slow one)."""
    clock_error: float | None = None
    """The writer's clock error bound in seconds as its kernel's NTP discipline estimates it (adjtimex
    maxerror); None when its clock is not synchronised or the bound is unknown."""


def encode_heartbeat(beat: Heartbeat) -> bytes:
    """The heartbeat as canonical JSON bytes (time in whole milliseconds)."""
    obj: dict[str, Any] = {"schema": 1, "kind": KIND, "site": beat.site, "at": round(beat.at * 1000),
                           "interval": beat.interval}
    if beat.clock_error is not None:
        obj["clockErrorMs"] = round(beat.clock_error * 1000, 3)
    return dump_json(obj)


def decode_heartbeat(key: HeartbeatKey, data: bytes) -> Heartbeat:
    """Validate and decode the heartbeat stored under `key`."""
    obj = load_record(data, KIND)
    site = obj.get("site")
    if site != key.site:
        raise RecordError(f"heartbeat names site {site!r} but its key names site {key.site!r}")
    at = obj.get("at")
    if not isinstance(at, int) or isinstance(at, bool) or not 0 < at < 10**15:
        raise RecordError("at is not a time in milliseconds")
    interval = _number(obj, "interval", 0.001, 86_400.0)
    if interval is None:
        raise RecordError("interval is missing")
    error = _number(obj, "clockErrorMs", 0.0, 3_600_000.0)
    return Heartbeat(key.site, at / 1000, interval, error / 1000 if error is not None else None)


def _number(obj: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise RecordError(f"{name} is not a number")
    if not lo <= value <= hi:
        raise RecordError(f"{name} {value} is out of range [{lo:g}, {hi:g}]")
    return float(value)
