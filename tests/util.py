"""Small helpers shared by the tests: waiting for a condition, building records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from federation.core.records import Endpoint, Locality, ServiceExport, ServicePort, ServiceType, Site


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
