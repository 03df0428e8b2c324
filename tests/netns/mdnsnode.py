"""Run in a test's namespace: announce one DNS-SD service until stdin closes (goodbye) or the process is killed.

Usage: python -m tests.netns.mdnsnode TYPE INSTANCE ADDRESS PORT TTL
"""

from __future__ import annotations

import asyncio
import socket
import sys

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf


async def main(service_type: str, instance: str, address: str, port: int, ttl: int) -> None:
    azc = AsyncZeroconf(interfaces=[address])
    info = ServiceInfo(service_type, f"{instance}.{service_type}", port=port, addresses=[socket.inet_aton(address)],
                       server=f"{instance.lower().replace(' ', '-')}.local.", host_ttl=ttl, other_ttl=ttl)
    await (await azc.async_register_service(info))
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await azc.async_close()  # unregisters: sends the goodbye (TTL 0)


if __name__ == "__main__":
    t, inst, addr, p, ttl = sys.argv[1:6]
    asyncio.run(main(t, inst, addr, int(p), int(ttl)))
