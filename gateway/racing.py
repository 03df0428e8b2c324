"""The connect tries of one client as tasks, raced when a try is hedged: the asyncio shell of `gateway.policy.hedging`.

A `Race` starts with one try; if that try is still unanswered after the hedge delay, a second try on
another route starts beside it, and the first one to connect the client wins. Only one can: a try that
got its gateway's ok after the client was taken ends its stream and notes `late` (`gateway.egress`).
If the first try wins, the second is cancelled. If the second wins, the first runs on to its own per-try
timeout (`Race.loser`): its late answer or its timeout is the evidence about its gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.balancing import Route, ViaGateway

LATE = "late"
"""What a try notes when its gateway said ok after another try had taken the client."""
_NOT_ANSWERED = frozenset({"gateway", "timeout"})
"""Notes of a tunnel try whose gateway never answered (TCP, TLS or preamble failure, or the per-try timeout)."""


@dataclass(eq=False, slots=True)
class Try:
    """One try of a client over one route, bounded by its per-try timeout; `task` says True once relayed."""

    index: int
    """The route's index in the service's RoutePlan."""
    site: str
    route: Route
    started: float
    task: asyncio.Task[bool]
    note: list[str] = field(default_factory=list)
    """Why it failed, as the egress noted it (`refused`, `gateway`, `timeout`, a status name, `late`)."""

    @property
    def won(self) -> bool:
        return self.task.done() and not self.task.cancelled() and self.task.result()

    def answered(self) -> bool:
        """True if it ended and its gateway answered it (ok, late, or another status): a sample of answer time."""
        if not isinstance(self.route, ViaGateway) or not self.task.done() or self.task.cancelled():
            return False
        return self.task.result() or (bool(self.note) and self.note[-1] not in _NOT_ANSWERED)


def start(run: Callable[[list[str]], Awaitable[bool]], per_try: float, index: int, site: str, route: Route,
          name: str) -> Try:
    """Start a try: `run(note)` is the egress's connect of the client over `route`."""
    loop = asyncio.get_running_loop()
    note: list[str] = []
    task = loop.create_task(_bounded(run(note), per_try, note), name=name)
    return Try(index, site, route, loop.time(), task, note)


class Race:
    """The tries of one attempt: the first, and at most one hedge."""

    def __init__(self, first: Try) -> None:
        self.tries = [first]

    @property
    def hedged(self) -> bool:
        return len(self.tries) > 1

    @property
    def loser(self) -> Try | None:
        """The first try, still running after the hedge won (it runs on to its per-try timeout)."""
        first = self.tries[0]
        return first if self.hedged and not first.task.done() else None

    async def run(self, hedge_after: float | None, hedge: Callable[[], Try | None]) -> Try | None:
        """The try that connected the client, or None when every try failed. Every `hedge_after` seconds
        without an end, `hedge()` may start a second try (None: not now)."""
        first = self.tries[0]
        try:
            while hedge_after is not None and not first.task.done():
                # Asked again each `hedge_after` while the first try runs: a retry budget spent by other
                # clients' hedges a moment ago may allow this one now.
                await asyncio.wait([first.task], timeout=hedge_after)
                if not first.task.done() and (second := hedge()) is not None:
                    self.tries.append(second)
                    break
            while True:
                for t in self.tries:
                    if t.won:
                        if t is first and self.hedged:
                            await _cancel(self.tries[1])
                        return t
                running = [t.task for t in self.tries if not t.task.done()]
                if not running:
                    return None
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            for t in self.tries:
                t.task.cancel()
            raise


async def _bounded(attempt: Awaitable[bool], per_try: float, note: list[str]) -> bool:
    try:
        async with asyncio.timeout(per_try):
            return await attempt
    except TimeoutError:
        note.append("timeout")
        return False


async def _cancel(t: Try) -> None:
    if not t.task.done():
        t.task.cancel()
        await asyncio.wait([t.task])
