"""Hedged connects through real tunnels: a black-holed gateway costs a client the hedge delay, not the per-try
timeout, and a slow but alive gateway keeps its traffic (its late answers raise its own hedge delay)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from pathlib import Path

import pytest

from federation.core.records import Gateway, Locality
from gateway import racing
from gateway.balancing import ViaGateway
from gateway.racing import Race, Try
from tests.integration.policylab import Lab, NamedServer, lab, who
from tests.util import eventually

EU1 = Locality("eu", "eu-1")


class BlackHole:
    """A gateway address that accepts TCP and never answers (a hung host: its kernel still completes the
    handshake), or with `delay` a relay to a real gateway whose every answer comes `delay` seconds late."""

    def __init__(self, upstream: int | None = None, delay: float = 0.0) -> None:
        self.upstream, self.delay = upstream, delay
        self.server: asyncio.Server | None = None
        self._held: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self._held:
            w.transport.abort()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.add(writer)
        if self.upstream is None:
            return  # held open, never read, never answered
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._held.add(up_writer)
        for src, dst, wait in ((reader, up_writer, 0.0), (up_reader, writer, self.delay)):
            task = asyncio.create_task(self._pump(src, dst, wait))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, wait: float) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
        dst.close()


async def two_sites(it: Lab, east_front: BlackHole, east_share: int = 50) -> None:
    """east (behind `east_front`) and edge, one locality, split by `east_share`, every other setting the default."""
    east = await it.add("east", [NamedServer("east")], EU1)
    await it.add("edge", [NamedServer("edge")], EU1)
    if east_front.upstream is not None:
        east_front.upstream = east.gateway_port
    east.gateway_port = await east_front.start()
    it.publish()
    await it.start_egress(EU1)
    it.set_policy(f"split: [{{weight: {east_share}, site: east}}, {{weight: {100 - east_share}, site: edge}}]")


@pytest.mark.timeout(60)
async def test_a_black_holed_gateway_costs_a_client_the_hedge_delay_not_the_per_try_timeout(tmp_path: Path) -> None:
    hole = BlackHole()
    try:
        async with lab(tmp_path) as it:
            await two_sites(it, hole)
            # connectPerTry is 3 s: a client that has its answer within 2 s did not wait for that timeout.
            got = [await who(it.address, timeout=2.0) for _ in range(8)]
            assert got == ["edge"] * 8
            assert it.action("hedge") >= 1
            assert it.action("hedge_won") == it.action("hedge")
    finally:
        await hole.close()


@pytest.mark.timeout(60)
async def test_a_slow_gateway_keeps_its_traffic_and_is_hedged_only_until_its_late_answers_are_seen(
        tmp_path: Path) -> None:
    slow = BlackHole(upstream=0, delay=0.3)  # every answer of east's gateway 0.3 s late: a far, slow WAN
    try:
        async with lab(tmp_path) as it:
            await two_sites(it, slow, east_share=80)
            first = [await who(it.address, timeout=5.0) for _ in range(4)]
            assert it.egress is not None
            answers = it.egress.enforcer.answers
            await eventually(lambda: (answers.p95(("east", "gw")) or 0.0) >= 0.3, timeout=10)
            hedges = it.action("hedge")
            later = collections.Counter([await who(it.address, timeout=5.0) for _ in range(6)])
            assert set(first) <= {"east", "edge"}, first
            assert set(later) <= {"east", "edge"}, later
            assert later["east"] >= 1, later  # not ejected, not hedged away
            assert it.action("hedge") == hedges
            assert it.action("ejected_gateway") == 0
    finally:
        await slow.close()


def _try(gate: asyncio.Event, result: bool, per_try: float = 5.0, site: str = "east") -> Try:
    async def attempt(note: list[str]) -> bool:
        await gate.wait()
        if not result:
            note.append(racing.LATE)
        return result

    return racing.start(attempt, per_try, 0, site, ViaGateway(site, Gateway("gw", "127.0.0.1", 1)), "test-try")


async def test_a_race_keeps_the_first_ok_and_cancels_the_hedge_or_lets_a_beaten_first_try_run_on() -> None:
    first_gate, hedge_gate = asyncio.Event(), asyncio.Event()
    race = Race(_try(first_gate, True))
    hedge = _try(hedge_gate, True, site="edge")
    waiting = asyncio.create_task(race.run(0.0, lambda: hedge))
    await eventually(lambda: race.hedged)
    first_gate.set()
    assert await waiting is race.tries[0]
    assert hedge.task.cancelled()
    assert race.loser is None

    first_gate.clear()
    race = Race(_try(first_gate, False))
    hedge = _try(hedge_gate, True, site="edge")
    hedge_gate.set()
    assert await race.run(0.0, lambda: hedge) is hedge
    assert race.loser is race.tries[0]  # runs on: its late answer or its timeout is the evidence
    first_gate.set()
    assert await race.tries[0].task is False
    assert race.tries[0].answered()


async def test_a_try_that_never_answers_ends_at_its_per_try_timeout_with_no_hedge_to_start() -> None:
    race = Race(_try(asyncio.Event(), True, per_try=0.05))
    assert await race.run(0.01, lambda: None) is None
    assert race.tries[0].note == ["timeout"]
    assert not race.tries[0].answered()
