"""Long-lived tasks that cannot die silently (STYLE.md section 2).

`guard` wraps a task's work so that its death is logged ("dns server has failed; stopping the agent")
and its error (or its unexpected return) ends the task group, and with it the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from federation.core.errors import LocalProtocolError

log = logging.getLogger(__name__)


async def guard(name: str, work: Awaitable[None]) -> None:
    """Run `work`, which must run until cancelled; log its death loudly and re-raise."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s has failed; stopping the agent", name)
        raise
    raise LocalProtocolError(f"{name} returned, which it never should")


async def after(first: Awaitable[object], then: Awaitable[None]) -> None:
    """Run `then` once `first` is done (e.g. the publisher waits for a complete export list)."""
    await first
    await then
