"""The host's own address, as the kernel would pick it for traffic leaving by the default route."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from pyroute2 import AsyncIPRoute

from federation.errors import ConfigError
from federation.vm.vips import route_socket


async def own_address(netns: str | None = None) -> str:
    """The preferred source address of the default route (IPv4 first), else the first global address.

    Raises ConfigError when the host has no global address at all ("auto" cannot work there). Runs on a
    plain asyncio loop in a worker thread: pyroute2's netlink sockets do not work under uvloop.
    """
    return await asyncio.to_thread(asyncio.run, _own_address(netns))


async def _own_address(netns: str | None) -> str:
    async with route_socket(netns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            routes = [r async for r in await ipr.get_default_routes(family=family)]
            for route in routes:
                if route.get("prefsrc"):
                    return str(route.get("prefsrc"))
                for addr in await _global_addresses(ipr, family, route.get("oif")):
                    return addr
        for family in (socket.AF_INET, socket.AF_INET6):
            for addr in await _global_addresses(ipr, family, None):
                return addr
    raise ConfigError("vm.address: auto found no global address on this host; set an address")


async def _global_addresses(ipr: AsyncIPRoute, family: int, index: int | None) -> list[str]:
    kwargs = {"family": family} if index is None else {"family": family, "index": index}
    out = []
    async for msg in await ipr.addr("dump", **kwargs):
        address = msg.get("address")
        if address is None or msg["scope"] != 0:
            continue
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback and not ip.is_link_local:
            out.append(str(ip))
    return out
