"""Small awaitable value holders: how long-lived tasks hand state to each other (kopf's containers).

A subsystem that produces state owns a `Value` and sets it; a subsystem that uses it receives the
holder at construction and either reads `get()` where it serves (a new connection, a DNS question) or
follows it with `follow()` where it reconciles. Nothing is wired after construction, and nothing polls:
`set()` wakes exactly the readers of that value, and a reader that falls behind sees only the latest
value (latest wins; a reconciler never needs the ones in between).

    mesh: Value[MeshView] = Value(empty_view, name="mesh view", same=operator.is_)
    async for _ in follow(mesh, down_sites):     # at once, then after every change of either
        rebuild(mesh.get(), down_sites.get())
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Readable(Protocol[T_co]):
    """The reading side of a `Value`: what a consumer is given."""

    def get(self) -> T_co:
        """The current value."""
        ...

    @property
    def version(self) -> int:
        """Grows by one with every change."""
        ...

    def _watch(self, event: asyncio.Event) -> None: ...
    def _unwatch(self, event: asyncio.Event) -> None: ...


class Value(Generic[T]):
    """Holds the latest `T`; `set` wakes the tasks that follow it when the value really changed."""

    __slots__ = ("_same", "_value", "_version", "_watchers", "name")

    def __init__(self, initial: T, *, name: str = "", same: Callable[[T, T], bool] = operator.eq) -> None:
        self._value = initial
        self._version = 0
        self._same = same
        self._watchers: set[asyncio.Event] = set()
        self.name = name
        """For logs and task names."""

    def get(self) -> T:
        """The current value."""
        return self._value

    @property
    def version(self) -> int:
        """Grows by one with every change."""
        return self._version

    def set(self, value: T) -> bool:
        """Replace the value; True (and its followers woken) unless `same(old, new)`."""
        if self._same(self._value, value):
            return False
        self._value = value
        self._version += 1
        for event in self._watchers:
            event.set()
        return True

    def __repr__(self) -> str:
        return f"Value({self.name or '?'} v{self._version})"

    def _watch(self, event: asyncio.Event) -> None:
        self._watchers.add(event)

    def _unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)


async def follow(*values: Readable[object]) -> AsyncGenerator[None, None]:
    """Yield at once, then once after any of `values` changed (changes during the reader's turn are
    not lost: they make the next wait return at once). Stops only when the reader stops."""
    event = asyncio.Event()
    for v in values:
        v._watch(event)
    try:
        while True:
            event.clear()
            yield
            await event.wait()
    finally:
        for v in values:
            v._unwatch(event)


async def wait_until(value: Readable[T], predicate: Callable[[T], bool]) -> T:
    """The first value (the current one included) for which `predicate` holds."""
    async with contextlib.aclosing(follow(value)) as changes:
        async for _ in changes:
            current = value.get()
            if predicate(current):
                return current
    raise AssertionError("unreachable")  # pragma: no cover - follow() never ends by itself
