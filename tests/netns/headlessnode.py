"""An asking VM site's data plane as the agent assembles it (federation.agent.dataplane.DataPlane), in a namespace.

    python -m tests.netns.headlessnode SITE NETWORK CA_DIR VIEW_FILE LAN_ADDRESS WAN_ADDRESS STATE_DIR CAPTURE

Builds the real DataPlane of a VM site (VIP interface `meshfed0`, egress capture `off` or `on`, the
endpoint listeners, DNS on LAN_ADDRESS) on a fixed mesh view (the registry is not what this tests), runs
its long-lived tasks, and prints `READY {"dns": port}` once DNS answers the remote headless endpoints and
every endpoint listener is bound at its address. Runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from federation.agent.dataplane import DataPlane
from federation.agent.settings import parse_settings
from federation.runtime.values import Value
from tests.netns.node import load_view


class _NoVips:
    """The VIP allocator's etcd client: never called (the test runs no vip-allocator task)."""

    async def txn(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no VIP allocation in this test")


async def main(argv: list[str]) -> None:
    site, network, ca_dir, view_file, lan, wan, state, capture = argv
    view = load_view(Path(view_file))
    settings = parse_settings({
        "site": {"name": site, "network": network, "kind": "vm", "gateway_address": wan},
        "state_dir": state,
        "gateway": {"ca_dir": ca_dir, "listen_address": wan, "listen_port": 0, "egress_address": "127.0.0.1"},
        "dns": {"udp": [f"{lan}:0"], "tcp": [f"{lan}:0"], "forwarding": False},
        "vm": {"egress_capture": capture, "address": lan},
    }, "headlessnode")
    plane = DataPlane(settings, Value(view), CollectorRegistry(), _NoVips())  # type: ignore[arg-type]
    await plane.start()
    try:
        await _serve(plane)
    except* _Stop:
        pass
    finally:
        await plane.close()


async def _serve(plane: DataPlane) -> None:
    assert plane.dns is not None
    assert plane.hosts is not None
    assert plane.endpoints is not None
    async with asyncio.TaskGroup() as tg:
        for name, coro in plane.tasks():
            if name == "vip-allocator":
                coro.close()
                continue
            tg.create_task(coro, name=name)
        want = sum(len(v) for v in plane.endpoints.get().values())
        for _ in range(400):  # bounded: 20 s
            bound = plane.hosts.listening.get()
            if want and len(bound) >= want and all(h != "127.0.0.1" for h, _ in bound.values()):  # or captured
                break
            await asyncio.sleep(0.05)
        listeners = {"/".join(k): list(v) for k, v in plane.hosts.listening.get().items()}
        mode = plane.egress.mode if plane.egress is not None else ""
        per_port = len(plane.egress.listeners()) if plane.egress is not None else 0
        print("READY", json.dumps({"dns": plane.dns.udp_addresses[0][1], "listeners": listeners, "mode": mode,
                                   "per_port": per_port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await plane.drain(0.5)
        raise _Stop


class _Stop(Exception):
    pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
