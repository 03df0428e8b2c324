"""Small helpers shared by the tests: waiting for a condition, building records."""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable, Iterable
from typing import Any

from federation.core.keys import Keys
from federation.core.records import Endpoint, Locality, ServiceExport, ServicePort, ServiceType, Site
from federation.core.view import MeshView
from federation.registry.etcd import EtcdClient
from federation.registry.publisher import Publisher
from federation.runtime.values import Value


async def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Wait until `check()` is true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def site(name: str, network: str = "net-a", zone: str = "z1") -> Site:
    return Site(name=name, network=network, locality=Locality("r1", zone))


def export(
    site_name: str,
    name: str = "web",
    namespace: str = "shop",
    addresses: tuple[str, ...] = ("127.0.0.10",),
    ports: tuple[ServicePort, ...] = (ServicePort("http", 8080),),
    type: ServiceType = ServiceType.CLUSTER_SET_IP,
    ready: bool = True,
) -> ServiceExport:
    return ServiceExport(
        site=site_name,
        namespace=namespace,
        name=name,
        ports=ports,
        type=type,
        endpoints=tuple(Endpoint(addresses=(a,), ready=ready) for a in addresses),
    )


class LiveView:
    """A `Readable` whose value a test computes afresh on every read (from state it mutates at will);
    `changed()` wakes the followers, as a new snapshot from the mirror would."""

    def __init__(self, compute: Callable[[], MeshView]) -> None:
        self.compute = compute
        self.version = 0
        self._events: set[asyncio.Event] = set()

    def get(self) -> MeshView:
        return self.compute()

    def changed(self) -> None:
        self.version += 1
        for event in self._events:
            event.set()

    def _watch(self, event: asyncio.Event) -> None:
        self._events.add(event)

    def _unwatch(self, event: asyncio.Event) -> None:
        self._events.discard(event)


class HandPublisher(Publisher):
    """A Publisher whose site record and export list the test sets by hand (the agent hands it holders
    owned by the data plane and the sources)."""

    def __init__(self, client: EtcdClient, keys: Keys, site: Site, exports: Iterable[ServiceExport] = (),
                 **kw: Any) -> None:
        # Compared by identity: every set_exports wakes the publisher, as a source that re-declares would.
        self.site_value = Value(site, same=operator.is_)
        self.exports_value: Value[tuple[ServiceExport, ...]] = Value(tuple(exports), same=operator.is_)
        super().__init__(client, keys, self.site_value, self.exports_value, **kw)

    def set_exports(self, exports: Iterable[ServiceExport]) -> None:
        self.exports_value.set(tuple(exports))

    def set_site(self, site: Site) -> None:
        self.site_value.set(site)
