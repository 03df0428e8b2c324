"""Durations and percentages as policies write them (`250ms`, `1m30s`, `12.5`). Pure."""

from __future__ import annotations

import math
import re
from typing import Any

from federation.core.errors import PolicyError

_DURATION = re.compile(r"^(?:([0-9]+(?:\.[0-9]+)?)(ms|h|m|s))+\Z")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
MAX_DURATION = 7 * 86400.0
"""A week: longer than any timeout or ejection a policy needs, short enough to catch a unit slip (`5h` for `5s`)."""


def parse_duration(field: str, value: Any, lo: float = 0.0, hi: float = MAX_DURATION) -> float:
    """Seconds from a Go-style duration string (`1h`, `1m30s`, `250ms`, `1.5s`), in lo..hi, to the millisecond."""
    if not isinstance(value, str) or not _DURATION.match(value):
        raise PolicyError(field, f"{value!r} is not a duration like 250ms, 5s, 1m30s or 1h")
    ms = sum(float(n) * _UNIT_MS[unit] for n, unit in _PART.findall(value))
    if abs(ms - round(ms)) > 1e-6:
        raise PolicyError(field, f"{value!r} is finer than a millisecond")
    seconds = round(ms) / 1000.0
    if not lo <= seconds <= hi:
        raise PolicyError(field, f"{value} is not between {format_duration(lo)} and {format_duration(hi)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The canonical string of a duration: `0s`, `250ms`, `1.5s`, `1m30s`, `2h`."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if rest:
        secs, frac = divmod(rest, 1000)
        out += f"{secs}.{frac:03d}".rstrip("0").rstrip(".") + "s" if frac else f"{secs}s"
    return out


def parse_percent(field: str, value: Any, lo: float = 0.0, hi: float = 100.0) -> float:
    """A percentage: a number in lo..hi (no `%` sign, as in Istio and Envoy)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(field, f"{value!r} is not a number (a percentage, e.g. 10 or 12.5)")
    if not lo <= value <= hi:
        raise PolicyError(field, f"{value} is not between {lo:g} and {hi:g}")
    return float(value)


def format_number(value: float) -> int | float:
    """A whole number as an int (so `90` stays `90`, not `90.0`, in the canonical form)."""
    return int(value) if float(value).is_integer() else value
