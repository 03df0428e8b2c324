"""Process limits an agent at fleet size runs into: open files. Never silent about them.

At 1,000 sites an agent holds a descriptor per tunnel, client, listener and watch; distributions start
services with a soft limit of 1,024 (a hard one of 512k or more). `raise_open_files()` lifts the soft
limit to the hard one at start and says so. `OpenFilesWatch` says, at most once a minute, when the agent
is out of descriptors and which limit it hit: it counts its descriptors every few seconds (uvloop, as
libuv, accepts and drops a connection it has no descriptor for and tells nobody) and handles asyncio's
"accept() out of system resource". Connections already open keep being served either way.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from typing import Any

log = logging.getLogger(__name__)


def raise_open_files(limit: int = resource.RLIM_INFINITY) -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit (or `limit`, if lower); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20  # files cannot be unlimited (fs.nr_open)
    if limit != resource.RLIM_INFINITY:
        want = min(want, limit)
    if want <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, want, exc)
        return soft, soft
    return soft, want


def open_files() -> tuple[int, int]:
    """(descriptors open now, soft limit)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError as exc:  # reading the directory needs a descriptor too
        used = soft if exc.errno in (errno.EMFILE, errno.ENFILE) else -1
    return used, soft


class OpenFilesWatch:
    """An asyncio exception handler: out of descriptors is one warning a minute, everything else as before."""

    def __init__(self, every: float = 60.0, interval: float = 2.0, headroom: int = 8) -> None:
        self.every = every
        self.interval = interval
        self.headroom = headroom
        """Within this many descriptors of the limit counts as out (the next accept or connect fails)."""
        self.hits = 0
        """Times the agent was found out of descriptors since start."""
        self.used = 0
        self.limit = 0
        self._last = -float("inf")

    async def run(self) -> None:
        """Count descriptors every `interval` seconds, for ever (one listdir of /proc/self/fd)."""
        while True:
            self.check()
            await asyncio.sleep(self.interval)

    def check(self) -> bool:
        """True (and a warning, once a minute) if the agent is at its open-files limit now."""
        self.used, self.limit = open_files()
        if self.used < 0 or self.used < self.limit - self.headroom:
            return False
        self._hit(errno.EMFILE)
        return True

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become `loop`'s exception handler (wrapping the one it had)."""
        previous = loop.get_exception_handler()

        def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if self.handle(context):
                return
            if previous is not None:
                previous(lp, context)
            else:
                lp.default_exception_handler(context)

        loop.set_exception_handler(handler)

    def handle(self, context: dict[str, Any]) -> bool:
        """True if `context` was running out of descriptors (counted, and warned about at most once a minute)."""
        exc = context.get("exception")
        if not isinstance(exc, OSError) or exc.errno not in (errno.EMFILE, errno.ENFILE):
            return False
        self._hit(exc.errno)
        return True

    def _hit(self, code: int) -> None:
        self.hits += 1
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        used, soft = open_files()
        which = "the system-wide file table (fs.file-max)" if code == errno.ENFILE else \
            f"the open-files limit ({soft}; raise LimitNOFILE= in the unit, or ulimit -n)"
        log.warning("out of file descriptors (%d open): new connections are refused until some close; the "
                    "limit hit is %s; open connections, UDP DNS and the registry keep being served "
                    "(%d times so far)", used, which, self.hits)
