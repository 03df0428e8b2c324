"""Returning memory to the system after bursts of connections (glibc malloc), measured rather than hoped for.

A burst of thousands of connections leaves freed memory inside malloc's heaps: RSS stays at the peak.
`tune()` makes large buffers (TLS read buffers are 256 KiB each) come from their own mappings, which go
back to the system when freed, and caps the arenas (threads of the gRPC client each got one);
`trim()` hands free heap pages back (malloc_trim). Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 128 * 1024
"""Allocations from this size on get their own mapping (glibc's default, fixed: left dynamic, it grows after
the first free of a large block and every later 256 KiB TLS buffer comes from the heap, where it stays)."""
ARENA_MAX = 2
"""Malloc arenas: the event loop's, and one for every other thread (gRPC, file writes) to share."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune() -> bool:
    """Fix the mmap threshold and cap the arenas (call at start, before threads); False where not glibc."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    ok = bool(_LIBC.mallopt(M_ARENA_MAX, ARENA_MAX)) and ok
    return ok


def trim() -> bool:
    """Give free heap memory back to the system now; True if some was."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


def rss() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Trimmer:
    """When to trim after a burst: once the connections in flight fell to half of their peak since the last
    trim (and by at least `least`), and then stopped falling for `settle` seconds; at most every `every`
    seconds. Pure: the caller tells it the count and the time, and trims when `due` says so."""

    def __init__(self, least: int = 256, every: float = 10.0, settle: float = 1.0) -> None:
        self.least = least
        self.every = every
        self.settle = settle
        self._peak = 0
        self._last = float("-inf")
        self._due: float | None = None
        self.trims = 0

    def seen(self, active: int, now: float) -> float | None:
        """`active` connections are in flight at `now`; the time a trim is due (pushed on by every further
        close), or None."""
        if active > self._peak:
            self._peak = active
            self._due = None
            return None
        if self._peak - active >= max(self.least, self._peak // 2):
            self._due = max(now + self.settle, self._last + self.every)
        return self._due

    def due(self, active: int, now: float) -> bool:
        """True if a trim is due at `now` (then it counts as done: the peak starts again from `active`)."""
        if self._due is None or now < self._due:
            return False
        self._due = None
        self._peak = active
        self._last = now
        self.trims += 1
        return True
