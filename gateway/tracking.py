"""The egress's relayed streams: each counted in `ActiveStreams` while it runs, with the service port and the
workload it was admitted for, so a changed access policy can find the streams it now denies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.balancing import ListenerKey
from gateway.relay import ActiveStreams


class TrackedRelays:
    """Relays (splices and tunnel streams) running for this site's clients."""

    def __init__(self, active: ActiveStreams) -> None:
        self.active = active
        self._keys: dict[Any, tuple[ListenerKey, str | None]] = {}

    def track(self, relay: Any, held: list[Any], key: ListenerKey, workload: str | None) -> None:
        """Count `relay` (appended to `held`, which its end hands to `untrack`) unless it already ended
        inside its constructor (the client gone)."""
        if not relay.done:
            held.append(relay)
            self._keys[relay] = (key, workload)
            self.active.add()

    def untrack(self, held: list[Any]) -> None:
        """The relays of `held` ended: count them no longer."""
        for relay in held:
            if self._keys.pop(relay, None) is not None:
                self.active.done()

    def streams(self) -> Iterator[tuple[Any, tuple[str, str], str | None]]:
        """(relay, service, workload) of every running relay."""
        return ((r, k[:2], w) for r, (k, w) in list(self._keys.items()))

    def relays(self) -> list[Any]:
        """Every running relay."""
        return list(self._keys)
