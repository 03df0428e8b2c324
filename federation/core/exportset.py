"""Combines the exports of several producers (declared services, LAN discovery, Kubernetes, static config) into
one list. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from federation.core.records import ServiceExport

ExportsCallback = Callable[[Sequence[ServiceExport]], None]


class ExportSet:
    """Named groups of exports merged in registration order; `on_exports` runs once per real change.

    When two groups export the same namespace/name, the group registered first wins and the other's
    export is listed in `shadowed` (a site publishes one record per service).
    """

    def __init__(self, on_exports: ExportsCallback) -> None:
        self._on_exports = on_exports
        self._groups: dict[str, tuple[ServiceExport, ...]] = {}
        self._last: tuple[ServiceExport, ...] | None = None
        self.shadowed: tuple[tuple[str, ServiceExport], ...] = ()
        """(group, export) pairs hidden by an earlier group's export of the same service."""

    def group(self, name: str) -> ExportsCallback:
        """Register group `name` (order decides conflicts) and return the callback its producer calls."""
        self._groups.setdefault(name, ())

        def set_group(exports: Sequence[ServiceExport]) -> None:
            self.set(name, exports)

        return set_group

    def set(self, name: str, exports: Iterable[ServiceExport]) -> None:
        """Replace group `name`'s exports; call `on_exports` if the merged list changed."""
        self._groups[name] = tuple(exports)
        merged = self.merged()
        if merged != self._last:
            self._last = merged
            self._on_exports(merged)

    def merged(self) -> tuple[ServiceExport, ...]:
        """Every group's exports, first group winning a namespace/name, sorted by service."""
        chosen: dict[tuple[str, str], ServiceExport] = {}
        shadowed = []
        for group, exports in self._groups.items():
            for e in exports:
                if e.service in chosen:
                    shadowed.append((group, e))
                else:
                    chosen[e.service] = e
        self.shadowed = tuple(shadowed)
        return tuple(chosen[k] for k in sorted(chosen))
