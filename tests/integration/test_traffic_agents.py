"""TrafficPolicy end to end through real agents: `meshfed policy apply` (signed by the operator) reaches
west's agent through its policy reader, its egress enforces it on new connections, and an unsigned
policy is skipped and counted where agents require signatures."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess
from tests.integration.test_access_agents import refused, roundtrip
from tests.integration.twoagents import meshfed, two_agents, until
from tests.tunnelhelp import EchoServer

DRILL = """\
apiVersion: meshfed.io/v1alpha1
kind: TrafficPolicy
metadata: {namespace: ns, name: echo}
spec:
  faults:
    - sourceSites: [west]
      abort: {kind: Refuse, percent: 100}
"""


def metric(agent: AgentProcess, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", agent.get("/metrics")[1], re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_signed_policy_is_enforced_by_the_agents_egress_and_an_unsigned_one_skipped(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    ep = ("--endpoints", etcd.endpoint)
    ca = tmp_path / "ca"
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    await meshfed("ca", "operator", "ops", "--ca", str(ca), "--out", str(tmp_path / "ops"))
    (tmp_path / "drill.yaml").write_text(DRILL)
    echo = EchoServer()
    port = await echo.start()
    agents: dict[str, AgentProcess] = {}
    try:
        address = await two_agents(agents, tmp_path, etcd.endpoint, ca, port)
        await until(lambda: roundtrip(address), "west reaching east's service")
        west = agents["west"]
        rejected = 'meshfed_policy_records_rejected_total{kind="TrafficPolicy"}'
        in_force = 'meshfed_policies{kind="TrafficPolicy"}'

        out = await meshfed("policy", "apply", "-f", str(tmp_path / "drill.yaml"), *ep)
        assert "not signed (no --operator)" in out.stderr
        await until(lambda: asyncio.to_thread(lambda: metric(west, rejected) == 1), "the unsigned policy counted")
        assert metric(west, in_force) == 0
        assert await roundtrip(address)

        await meshfed("policy", "apply", "-f", str(tmp_path / "drill.yaml"), "--operator", str(tmp_path / "ops"), *ep)
        await until(lambda: refused(address), "west's clients reset by the drill")
        assert metric(west, in_force) == 1
        assert metric(west, 'meshfed_egress_policy_actions_total{action="fault_abort"}') >= 1

        await meshfed("policy", "delete", "ns/echo", "--operator", str(tmp_path / "ops"), *ep)
        await until(lambda: roundtrip(address), "west served again once the drill is deleted")
    finally:
        for agent in agents.values():
            agent.stop()
        await echo.close()
