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


class Derived(Generic[T]):
    """A value computed from other values, on read: `fn()` runs again only after one of them changed.

    Needs no task of its own; its followers wake whenever an input changes.

        placement = Derived(lambda: Placement(vips=table.get(), held=held.get()), table, held)
    """

    __slots__ = ("_fn", "_inputs", "_seen", "_value", "name")

    def __init__(self, fn: Callable[[], T], *inputs: Readable[object], name: str = "") -> None:
        self._fn = fn
        self._inputs = inputs
        self._seen: tuple[int, ...] | None = None
        self._value: T | None = None
        self.name = name

    def get(self) -> T:
        """`fn()` as of the inputs' current values."""
        seen = tuple(i.version for i in self._inputs)
        if seen != self._seen:
            self._value = self._fn()
            self._seen = seen
        return self._value  # type: ignore[return-value]

    @property
    def version(self) -> int:
        """Grows with every change of an input."""
        return sum(i.version for i in self._inputs)

    def __repr__(self) -> str:
        return f"Derived({self.name or '?'} v{self.version})"

    def _watch(self, event: asyncio.Event) -> None:
        for i in self._inputs:
            i._watch(event)

    def _unwatch(self, event: asyncio.Event) -> None:
        for i in self._inputs:
            i._unwatch(event)


class Changes:
    """Wakes its reader when any of `values` changed since its last `wait()`; safe to cancel and reuse.

        with Changes(site, exports) as changes:
            while True:
                publish(site.get(), exports.get())
                async with asyncio.timeout(keepalive):   # a timeout loses no change
                    await changes.wait()
    """

    def __init__(self, *values: Readable[object]) -> None:
        self._values = values
        self._event = asyncio.Event()
        for v in values:
            v._watch(self._event)

    @property
    def pending(self) -> bool:
        """True if a value changed since the last `wait()` returned."""
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once a value changed since the last return (at once if one already did)."""
        await self._event.wait()
        self._event.clear()

    def close(self) -> None:
        """Stop watching."""
        for v in self._values:
            v._unwatch(self._event)

    def __enter__(self) -> Changes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def follow(*values: Readable[object]) -> AsyncGenerator[None, None]:
    """Yield at once, then once after any of `values` changed (changes during the reader's turn are
    not lost: they make the next wait return at once). For loops that only stop when cancelled; use
    `Changes` where a wait may time out."""
    with Changes(*values) as changes:
        while True:
            yield
            await changes.wait()


async def wait_until(value: Readable[T], predicate: Callable[[T], bool]) -> T:
    """The first value (the current one included) for which `predicate` holds."""
    async with contextlib.aclosing(follow(value)) as changes:
        async for _ in changes:
            current = value.get()
            if predicate(current):
                return current
    raise AssertionError("unreachable")  # pragma: no cover - follow() never ends by itself
