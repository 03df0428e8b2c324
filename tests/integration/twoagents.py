"""Helpers for tests that run the `meshfed` command and two agents with traffic between them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.agentproc import AgentProcess, write_config


async def meshfed(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "federation", *args], capture_output=True,
                                  text=True, timeout=60)
    if ok:
        assert out.returncode == 0, f"meshfed {' '.join(args)}: {out.stdout}{out.stderr}"
    return out


async def until(check: Any, what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


class Load:
    """Connections through west's egress, one after another (bounded), and two that stay open throughout."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.ok = 0
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    async def short(self, limit: int = 20_000) -> None:
        for i in range(limit):
            if self.stop.is_set():
                return
            payload = b"ping %d\n" % i
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(*self.address)
                    try:
                        writer.write(payload)
                        writer.write_eof()
                        got = await reader.read()
                    finally:
                        writer.close()
                if got != payload:
                    self.failures.append(f"connection {i}: got {got!r}")
                else:
                    self.ok += 1
            except (OSError, TimeoutError) as exc:
                self.failures.append(f"connection {i}: {exc!r}")
            await asyncio.sleep(0.01)

    async def long(self, name: str) -> None:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(*self.address)
        try:
            n = 0
            while not self.stop.is_set():
                line = b"%s %d\n" % (name.encode(), n)
                writer.write(line)
                async with asyncio.timeout(10):
                    if await reader.readexactly(len(line)) != line:
                        self.failures.append(f"{name}: wrong echo")
                n += 1
                await asyncio.sleep(0.2)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.failures.append(f"{name}: {exc!r}")
        finally:
            writer.close()


async def two_agents(agents: dict[str, AgentProcess], tmp_path: Path, etcd_endpoint: str, ca: Path,
                     echo_port: int, ttl: int = 3, west: dict[str, Any] | None = None,
                     **gateway: Any) -> tuple[str, int]:
    """Start agents east (exporting ns/echo at `echo_port`) and west (`west`: more of its config) into `agents`
    (the caller stops them), with site CAs from `ca`; returns west's egress listener for ns/echo."""
    for site in ("east", "west"):
        await meshfed("ca", "site", site, "--ca", str(ca), "--out", str(tmp_path / f"ca-{site}"))
        exports = [{"namespace": "ns", "name": "echo", "ports": [{"name": "tcp", "port": 7}],
                    "endpoints": [{"addresses": ["127.0.0.1"], "ports": {"tcp": echo_port}}]}] if site == "east" else []
        cfg = write_config(tmp_path / f"{site}.yaml", site, [etcd_endpoint], tmp_path / site, exports, ttl=ttl,
                           gateway={"ca_dir": str(tmp_path / f"ca-{site}"), "listen_address": "127.0.0.1",
                                    "listen_port": 0, **gateway}, **((west or {}) if site == "west" else {}))
        agents[site] = AgentProcess(cfg, tmp_path / site).start()
    for agent in agents.values():
        await asyncio.to_thread(agent.wait_ready, 30)

    async def listener() -> tuple[str, int] | None:
        status = json.loads((await asyncio.to_thread(agents["west"].get, "/status"))[1])
        for imp in status.get("imports", []):
            if imp["service"] == "ns/echo" and imp["listeners"].get("tcp"):
                host, _, p = imp["listeners"]["tcp"].rpartition(":")
                return host, int(p)
        return None

    address: tuple[str, int] = await until(listener, "west's egress listener for ns/echo")
    return address
