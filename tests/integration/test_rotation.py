"""Root rotation end to end, with traffic flowing: not one connection fails at any step.

Two agents (east serves an echo service through its gateway, west's clients reach it through west's egress)
run the procedure of docs/security.md while a bounded load keeps opening connections (fresh tunnels every
two seconds, so handshakes happen at every step) and two long-lived connections keep talking:
`meshfed ca rotate begin`, new intermediates from the new root dropped into each site's `gateway.ca_dir`,
an operator key from the new root, `meshfed ca rotate finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess
from tests.integration.twoagents import Load, meshfed, two_agents, until
from tests.tunnelhelp import EchoServer


async def test_root_rotation_under_load_fails_no_connection(etcd: EtcdProcess, tmp_path: Path) -> None:
    ep = ("--endpoints", etcd.endpoint)
    ca = tmp_path / "ca"
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    echo = EchoServer()
    port = await echo.start()
    agents: dict[str, AgentProcess] = {}
    try:
        address = await two_agents(agents, tmp_path, etcd.endpoint, ca, port, ca_reload_interval=0.5,
                                   tunnel_max_age=2.0, pool_idle=1.0)
        load = Load(address)
        tasks = [asyncio.create_task(load.short(), name="load"),
                 *(asyncio.create_task(load.long(f"long-{i}"), name=f"long-{i}") for i in range(2))]

        async def sites() -> dict[str, Any]:
            out = await meshfed("ca", "rotate", "status", "--ca", str(ca), "--json", *ep)
            return {r["site"]: r for r in json.loads(out.stdout)["sites"]}

        async def all_sites(root: str, bundle: int) -> bool:
            got = await sites()
            return set(got) == {"east", "west"} and all(
                r["root"] == root and (r["trustSequence"] or 0) >= bundle for r in got.values())

        await until(lambda: asyncio.sleep(1.0, result=load.ok > 20), "traffic flowing before the rotation")
        # 1. a new root, and a bundle with both, signed by the old one: every agent takes it.
        await meshfed("ca", "rotate", "begin", "--ca", str(ca), *ep)
        await until(lambda: all_sites("current", 1), "both agents trusting both roots")
        await asyncio.sleep(1.0)
        before = load.ok
        # 2. new intermediates from the new root, dropped where the agents look for them.
        for site in ("east", "west"):
            await meshfed("ca", "site", site, "--ca", str(ca / "next"), "--out", str(tmp_path / f"ca-{site}"),
                          "--force")
        await until(lambda: all_sites("new", 1), "both sites on intermediates of the new root")
        await asyncio.sleep(3.0)  # every pooled tunnel renewed: handshakes with the new leaves on both sides
        # 3. an operator key from the new root; the old root retired.
        await meshfed("ca", "operator", "ops", "--ca", str(ca / "next"), "--out", str(tmp_path / "ops"))
        finish = await meshfed("ca", "rotate", "finish", "--ca", str(ca), "--operator", str(tmp_path / "ops"), *ep)
        assert "holds only the new root" in finish.stdout
        await until(lambda: all_sites("current", 2), "both agents trusting only the new root (now ca.crt)")
        await asyncio.sleep(3.0)  # fresh handshakes verified against the new root alone
        load.stop.set()
        await asyncio.gather(*tasks)
        assert load.failures == [], load.failures[:10]
        assert load.ok > before > 20
        status = json.loads((await asyncio.to_thread(agents["east"].get, "/status"))[1])
        roots = [c for c in status["certificates"] if c["what"].startswith("mesh root")]
        assert [c["what"] for c in roots] == ["mesh root 1 of 1"]
        assert not [c for c in status["certificates"] if c["warning"]]
        assert not (ca / "next").exists()
        assert list((ca / "retired").iterdir())
    finally:
        for agent in agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        await echo.close()
