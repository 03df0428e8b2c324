"""Value holders: readers wake on real changes only, see the latest value, and never miss one."""

from __future__ import annotations

import asyncio
import contextlib
import operator

from federation.runtime.values import Derived, Value, follow, wait_until


async def test_follow_yields_at_once_then_after_each_change() -> None:
    v = Value(1)
    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        async for _ in follow(v):
            seen.append(v.get())
            if v.get() == 3:
                done.set()
                return

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    assert seen == [1]
    v.set(2)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [1, 2]
    v.set(3)
    await done.wait()
    await task


async def test_an_equal_value_wakes_nobody() -> None:
    v = Value(frozenset({"a"}))
    assert not v.set(frozenset({"a"}))
    assert v.version == 0
    assert v.set(frozenset({"b"}))
    assert v.version == 1


async def test_identity_comparison_for_snapshots() -> None:
    a, b = {"x": 1}, {"x": 1}
    v = Value(a, same=operator.is_)
    assert v.set(b), "an equal but new snapshot is a change when compared by identity"


async def test_a_change_during_the_readers_turn_is_not_lost() -> None:
    v = Value(0)
    seen: list[int] = []

    async def reader() -> None:
        async for _ in follow(v):
            seen.append(v.get())
            if v.get() == 0:
                v.set(5)  # changes while the reader is still busy with 0
            if v.get() == 5 and len(seen) == 2:
                return

    async with asyncio.timeout(5):
        await reader()
    assert seen == [0, 5]


async def test_follow_several_values_and_latest_wins() -> None:
    a, b = Value("a0"), Value("b0")
    seen: list[tuple[str, str]] = []
    woke = asyncio.Event()

    async def reader() -> None:
        async for _ in follow(a, b):
            seen.append((a.get(), b.get()))
            woke.set()

    task = asyncio.create_task(reader())
    await woke.wait()
    woke.clear()
    a.set("a1")
    a.set("a2")
    b.set("b1")
    await woke.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert seen == [("a0", "b0"), ("a2", "b1")]


async def test_wait_until_returns_the_first_matching_value_and_stops_watching() -> None:
    v = Value(0)
    waiter = asyncio.create_task(wait_until(v, lambda x: x >= 2))
    await asyncio.sleep(0)
    v.set(1)
    await asyncio.sleep(0)
    assert not waiter.done()
    v.set(2)
    assert await waiter == 2
    assert not v._watchers


async def test_derived_recomputes_only_after_an_input_changed_and_wakes_followers() -> None:
    a, b = Value(1), Value(10)
    calls: list[int] = []

    def total() -> int:
        calls.append(1)
        return a.get() + b.get()

    d = Derived(total, a, b)
    assert d.get() == 11
    assert d.get() == 11
    assert len(calls) == 1
    woke = asyncio.Event()
    seen: list[int] = []

    async def reader() -> None:
        async for _ in follow(d):
            seen.append(d.get())
            woke.set()

    task = asyncio.create_task(reader())
    await woke.wait()
    woke.clear()
    b.set(20)
    await woke.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert seen == [11, 21]
    assert len(calls) == 2
