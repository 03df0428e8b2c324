"""AccessPolicy end to end: `meshfed policy apply` (signed by the operator), two agents enforcing it, and
`meshfed policy check` saying what they decide, by which rule. Unsigned policies count for nothing in a
mesh that requires signatures, and deleting a policy needs a signed tombstone."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from federation.core.keys import Keys
from federation.core.policy import access
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import Delete, EtcdClient
from tests.integration.agentproc import AgentProcess
from tests.integration.twoagents import meshfed, two_agents, until
from tests.tunnelhelp import EchoServer

DENY_WEST = """\
apiVersion: meshfed.io/v1alpha1
kind: AccessPolicy
metadata: {namespace: ns, name: echo}
spec:
  rules:
    - name: no-west
      action: Deny
      from: {sites: [west]}
"""
LOCKDOWN = """\
apiVersion: meshfed.io/v1alpha1
kind: MeshAccessPolicy
metadata: {name: default}
spec: {defaultAction: Deny}
---
apiVersion: meshfed.io/v1alpha1
kind: AccessPolicy
metadata: {namespace: ns, name: echo}
spec:
  rules:
    - name: no-batch
      action: Deny
      from: {identities: ["spiffe://mesh.example/site/west/ns/shop/sa/batch"]}
    - name: west-gateway
      action: Allow
      from: {identities: ["spiffe://mesh.example/site/west/*"]}
"""
WEST_VM = {"vm": {"vip_interface": "", "address": "127.0.0.1", "workload_identity": "shop/web"}}
"""West's processes are workload shop/web (its egress names it; LOCKDOWN denies only west's shop/batch)."""


async def roundtrip(address: tuple[str, int]) -> bool:
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(*address)
            try:
                writer.write(b"ping")
                writer.write_eof()
                return await reader.read() == b"ping"
            finally:
                writer.close()  # a refused stream is reset: close it all the same (no unclosed writer)
    except (OSError, TimeoutError):
        return False


async def refused(address: tuple[str, int]) -> bool:
    return not await roundtrip(address)


async def test_signed_access_policies_are_enforced_and_checked(etcd: EtcdProcess, tmp_path: Path) -> None:
    ep = ("--endpoints", etcd.endpoint)
    ca = tmp_path / "ca"
    ops = ("--operator", str(tmp_path / "ops"))
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    await meshfed("ca", "operator", "ops", "--ca", str(ca), "--out", str(tmp_path / "ops"))
    (tmp_path / "deny.yaml").write_text(DENY_WEST)
    (tmp_path / "lockdown.yaml").write_text(LOCKDOWN)
    echo = EchoServer()
    port = await echo.start()
    agents: dict[str, AgentProcess] = {}
    try:
        address = await two_agents(agents, tmp_path, etcd.endpoint, ca, port, west=WEST_VM)
        await until(lambda: roundtrip(address), "west reaching east's service")
        check = ("policy", "check", "--from", "west", "--to", "ns/echo", "--config", str(tmp_path / "east.yaml"))

        # Unsigned: written, warned about, and ignored by agents that require signatures.
        out = await meshfed("policy", "apply", "-f", str(tmp_path / "deny.yaml"), *ep)
        assert "not signed (no --operator)" in out.stderr
        await asyncio.sleep(1.0)
        assert await roundtrip(address)
        out = await meshfed(*check, ok=True)
        assert out.stdout.startswith("allowed: west -> ns/echo: allowed by the mesh default (Allow)"), out.stdout

        # Signed by the operator: east's gateway and west's egress both deny, and check says by which rule.
        out = await meshfed("policy", "apply", "-f", str(tmp_path / "deny.yaml"), *ops, *ep)
        assert out.stdout.strip() == "accesspolicy ns/echo configured"
        await until(lambda: refused(address), "west denied")
        out = await meshfed(*check, ok=False)
        assert out.returncode == 1
        assert out.stdout.startswith("denied: west -> ns/echo: denied by rule no-west of ns/echo "
                                     "(rule ns/echo:no-west)"), out.stdout
        assert "the egress denied a stream" not in out.stdout
        west_log = (tmp_path / "west.log").read_text()
        assert "egress denied a stream from site west" in west_log  # decided at west's own egress first

        # A raw etcd delete lifts nothing; a signed tombstone does.
        async with EtcdClient([etcd.endpoint]) as client:
            await client.commit([Delete(access.key_of(Keys(), "ns", "echo"))])
        await asyncio.sleep(1.0)
        assert await refused(address)
        (tmp_path / "deny.yaml").write_text(DENY_WEST)
        await meshfed("policy", "apply", "-f", str(tmp_path / "deny.yaml"), *ops, *ep)  # back in etcd
        out = await meshfed("policy", "delete", "ns/echo", "--kind", "access", *ops, *ep)
        assert out.stdout.strip() == "accesspolicy ns/echo deleted (signed tombstone)"
        await until(lambda: roundtrip(address), "west allowed again after the signed delete")

        # Lock the mesh down: only what an Allow rule names gets through.
        await meshfed("policy", "apply", "-f", str(tmp_path / "lockdown.yaml"), *ops, *ep)
        await asyncio.sleep(1.0)
        assert await roundtrip(address)  # west's shop/web: not batch, and in west's scope (the wildcard)
        out = await meshfed("policy", "check", "--from", "west", "--identity", "shop/batch", "--to", "ns/echo",
                            "--config", str(tmp_path / "east.yaml"), *ep, ok=False)
        assert out.stdout.startswith("denied: west (spiffe://mesh.example/site/west/ns/shop/sa/batch) -> ns/echo: "
                                     "denied by rule no-batch of ns/echo (rule ns/echo:no-batch)"), out.stdout
        out = await meshfed("policy", "check", "--from", "west", "--identity", "shop/web", "--to", "ns/echo", *ep,
                            ok=True)  # no --config: the trust domain from west's site record
        assert "allowed by rule west-gateway of ns/echo (rule ns/echo:west-gateway)" in out.stdout, out.stdout
        out = await meshfed("policy", "check", "--from", "edge", "--to", "ns/echo", "--network", "dmz",
                            "--config", str(tmp_path / "east.yaml"), *ep, ok=False)
        assert "denied: edge -> ns/echo: no Allow rule of ns/echo matches site edge" in out.stdout
        out = await meshfed("policy", "check", "--from", "west", "--to", "ns/other",
                            "--config", str(tmp_path / "east.yaml"), *ep, ok=False)
        assert "denied by the mesh default (Deny)" in out.stdout
    finally:
        for agent in agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        await echo.close()
