"""`meshfed gateways` and the agent's /gateways: east's gateway as west's prober sees it, alive and killed.

Two real agents with real TLS from our own CA; west imports east's ns/echo. A long lease keeps east's site
record in etcd after east is killed, as a gateway that died while its registry record is still fresh would.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess
from tests.integration.test_revocation import roundtrip
from tests.integration.twoagents import meshfed, two_agents, until
from tests.tunnelhelp import EchoServer


async def gateways(agent: AgentProcess, query: str = "") -> dict[str, Any]:
    return dict(json.loads((await asyncio.to_thread(agent.get, "/gateways" + query))[1]))


async def test_west_sees_easts_gateway_alive_with_latencies_then_down_with_the_reason(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    echo = EchoServer()
    port = await echo.start()
    agents: dict[str, AgentProcess] = {}
    try:
        address = await two_agents(agents, tmp_path, etcd.endpoint, ca, port, ttl=60, probe_interval=0.3)
        await until(lambda: roundtrip(address), "west reaching east's service")
        reader, writer = await asyncio.open_connection(*address)  # a stream through the egress's pool
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"

        async def alive() -> dict[str, Any] | None:
            doc = await gateways(agents["west"])
            east = [g for g in doc["gateways"] if g["site"] == "east"]
            return east[0] if east and east[0]["state"] == "ALIVE" and east[0]["probes"] >= 3 else None

        east = await until(alive, "east's gateway ALIVE after three probes")
        assert east["services"] == ["ns/echo"]
        assert east["latencyMs"]["samples"] >= 3
        assert 0 < east["latencyMs"]["p50"] <= east["latencyMs"]["p95"] <= east["latencyMs"]["p99"]
        assert abs(east["clockSkewSeconds"]) < 1.0  # one machine, one clock
        assert east["tunnels"]["open"] >= 1  # the stream above holds one; the pool keeps more
        assert east["tunnels"]["open"] >= east["tunnels"]["pooled"]
        assert (await gateways(agents["east"]))["gateways"] == []  # east imports nothing from west

        paged = await gateways(agents["west"], "?site=nowhere")
        assert paged["gateways"] == []
        assert paged["page"]["matched"] == 0

        metrics = (await asyncio.to_thread(agents["west"].get, "/metrics"))[1]
        assert 'meshfed_gateway_alive{gateway="gateway",site="east"} 1.0' in metrics
        assert 'meshfed_gateway_probe_seconds_count{site="east"}' in metrics

        cfg = str(agents["west"].config)
        out = await meshfed("gateways", "--config", cfg)
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("east "))
        assert " ALIVE " in line, out.stdout
        assert "ms" in line, out.stdout
        assert "WARNING" not in (await meshfed("status", "--config", cfg)).stdout
        as_json = json.loads((await meshfed("gateways", "--config", cfg, "--json")).stdout)
        assert as_json["gateways"][0]["site"] == "east"
        writer.close()

        await asyncio.to_thread(agents["east"].kill)

        async def down() -> dict[str, Any] | None:
            doc = await gateways(agents["west"])
            east = [g for g in doc["gateways"] if g["site"] == "east"]
            # A probe in flight at the kill sees the connection reset; the next ones find nothing listening.
            return east[0] if east and east[0]["state"] == "DOWN" and east[0]["failures"] >= 2 else None

        east = await until(down, "east's gateway DOWN once killed", timeout=20)
        assert east["reason"] == "connection refused (no gateway listening there)"
        metrics = (await asyncio.to_thread(agents["west"].get, "/metrics"))[1]
        assert 'meshfed_gateway_alive{gateway="gateway",site="east"} 0.0' in metrics
        out = await meshfed("gateways", "--config", cfg)
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("east "))
        assert " DOWN " in line, out.stdout
        assert "connection refused" in line, out.stdout
        status = await meshfed("status", "--config", cfg)
        assert ("WARNING: gateway gateway of site east is DOWN: connection refused (no gateway listening there) "
                "(meshfed verify --site east)") in status.stdout
    finally:
        for agent in agents.values():
            await asyncio.to_thread(agent.stop)
        await echo.close()
