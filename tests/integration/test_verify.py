"""`meshfed verify` against real agents: a healthy mesh passes; each fault it claims to find fails its line.

Two agents (east exports ns/echo, west imports it) with real TLS from our own CA, a real etcd, DNS asked
with dnspython. Faults: east's gateway killed while its record is still fresh (a long lease), a site record
bound to no lease (it outlives its agent), a site CA from another mesh root, a DNS port held by another
process; and a usage error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, write_config
from tests.integration.twoagents import meshfed, two_agents, until
from tests.tunnelhelp import EchoServer

POLICY = """\
apiVersion: meshfed.io/v1alpha1
kind: TrafficPolicy
metadata: {namespace: ns, name: echo}
spec:
  split: [{weight: 100, site: east}]
  circuitBreaker: {maxConnections: 50}
  faults:
    - {sourceSites: [west], delay: {fixed: 1ms, percent: 1}}
    - {sourceSites: [north], abort: {kind: Refuse, percent: 100}}
  ports:
    - port: tcp
      timeouts: {connectPerTry: 1s, idle: 30m}
      retries: {attempts: 2}
"""


async def verify(config: Path, *args: str) -> tuple[int, str, list[dict[str, Any]]]:
    text = await meshfed("verify", "--config", str(config), *args, ok=False)
    js = await meshfed("verify", "--config", str(config), "--json", *args, ok=False)
    assert js.returncode == text.returncode, js.stderr
    return text.returncode, text.stdout + text.stderr, json.loads(js.stdout)["lines"]


def results(lines: list[dict[str, Any]], check: str) -> list[tuple[str, str, str]]:
    return [(ln["subject"], ln["result"], ln["detail"]) for ln in lines if ln["check"] == check]


def etcdctl(etcd: EtcdProcess, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, *args], input=data, capture_output=True,
                          check=True, timeout=30).stdout


async def test_a_healthy_mesh_passes_then_a_killed_gateway_and_a_record_without_lease_fail(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    await meshfed("ca", "operator", "ops", "--ca", str(ca), "--out", str(tmp_path / "ops"))
    (tmp_path / "policy.yaml").write_text(POLICY)
    echo = EchoServer()
    port = await echo.start()
    agents: dict[str, AgentProcess] = {}
    try:
        address = await two_agents(agents, tmp_path, etcd.endpoint, ca, port, ttl=60)
        west = agents["west"].config
        code, out, lines = await verify(west)
        assert code == 0, out
        assert [r for r in results(lines, "gateway") if r[1] != "PASS"] == []
        assert results(lines, "site-record")[0][:2] == ("east", "PASS")
        assert results(lines, "mtls")[0][1] == "PASS"
        assert results(lines, "clock")[0][1] == "PASS"
        assert results(lines, "stream") == [("ns/echo:tcp at east", "PASS",
                                             "the gateway connected a stream to an endpoint")]
        assert echo.connections >= 1  # the stream reached the endpoint
        (dns_line,) = results(lines, "dns")
        assert dns_line[:2] == ("echo.ns.svc.clusterset.local", "PASS"), dns_line
        assert results(lines, "etcd")[0][1] == "PASS"
        assert ("/meshfed/v1/sites/west", "PASS", "may write its own prefix") in results(lines, "etcd-write")
        assert {r[1] for r in results(lines, "certificate")} == {"PASS"}
        assert results(lines, "open-files")[0][1] in ("PASS", "WARN")
        assert "0 failed" in out
        print(out)  # the sample in docs/operations.md
        assert "PASS  stream" in out

        code, _, lines = await verify(west, "--site", "east", "--service", "ns/echo")
        assert code == 0
        code, out, lines = await verify(west, "--site", "east", "--service", "ns/nothing")
        assert code == 1
        assert ("ns/nothing at east", "FAIL", "east exports no service ns/nothing") in results(lines, "service")
        code, out, _ = await verify(west, "--site", "nowhere")
        assert code == 1
        assert "FAIL  site-record  nowhere" in out, out
        bad = await meshfed("verify", "--config", str(west), "--service", "echo", ok=False)
        assert bad.returncode == 2
        assert "is not NAMESPACE/NAME" in bad.stderr

        # explain: the same mesh, step by step.
        out = await meshfed("explain", "echo.ns.svc.clusterset.local", "--live", "--config", str(west))
        print(out.stdout)  # the sample in docs/operations.md
        steps = {s["step"]: s for s in json.loads((await meshfed("explain", "ns/echo", "--live", "--json",
                                                                 "--config", str(west))).stdout)["steps"]}
        assert steps["dns"]["answer"] == dns_line[2].split(" ")[0]  # the VIP verify found DNS answering
        assert steps["port"]["answer"] == "tcp (7/TCP)"
        assert steps["access-policy"]["answer"].startswith("allowed for site west")
        (route,) = steps["routes"]["routes"]
        assert (route["kind"], route["site"], route["health"]) == ("gateway", "east", "ALIVE")
        assert steps["live"]["ok"], steps["live"]
        assert steps["live"]["handshakeMs"] > 0
        assert steps["traffic-policy"]["answer"].startswith("defaults (no TrafficPolicy for ns/echo)")
        assert "1) gateway gateway of east at 127.0.0.1:" in out.stdout
        east_view = await meshfed("explain", "ns/echo", "--from", "east", "--config", str(west), ok=False)
        assert "this site's own endpoint" in east_view.stdout, east_view.stdout
        missing = await meshfed("explain", "ns/nothing", "--config", str(west), ok=False)
        assert missing.returncode == 1
        assert "NXDOMAIN: no site exports ns/nothing" in missing.stdout
        bad = await meshfed("explain", "www.example.com", "--config", str(west), ok=False)
        assert bad.returncode == 2
        assert "is not in the federated zone" in bad.stderr

        # A traffic policy, signed by the operator: explain shows what it does to west's clients.
        await meshfed("policy", "apply", "-f", str(tmp_path / "policy.yaml"), "--operator", str(tmp_path / "ops"),
                      "--endpoints", etcd.endpoint)

        async def traffic() -> dict[str, Any] | None:
            out = await meshfed("explain", "ns/echo", "--json", "--config", str(west))
            step = {s["step"]: s for s in json.loads(out.stdout)["steps"]}["traffic-policy"]
            return step if step["policy"] else None

        step = await until(traffic, "west's egress enforcing the policy", timeout=10)
        assert step["answer"] == "TrafficPolicy ns/echo applies, with its entry for port tcp"
        assert step["timeouts"]["connectPerTry"] == "1s"
        assert step["live"] == {"ejected": [], "connections": 0, "pending": 0}  # no client yet

        await asyncio.to_thread(agents["east"].kill)  # its record stays for the 60 s lease
        code, out, lines = await verify(west)
        assert code == 1, out
        (gw,) = results(lines, "gateway")
        assert gw[1:] == ("FAIL", "connection refused (no gateway listening there)")
        assert "next: is the agent of east running" in out
        assert results(lines, "stream") == []  # not tried through a gateway that is not there
        # One client of the dead site: two refused tries eject east's gateway; explain says so.
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(*address)
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
        out = await meshfed("explain", "ns/echo", "--config", str(west), ok=False)
        print(out.stdout)  # the sample in docs/operations.md
        assert "ejected now: gateway gateway of east (" in out.stdout, out.stdout
        assert "split: 100% to site east: 1 ready endpoint(s) (east 1)" in out.stdout
        assert "circuit breaker: service connections 50, pending 1024; per site connections no limit, pending 256; " \
               "now 0 open, 0 pending" in out.stdout
        assert "timeouts: connect 10s in all, 1s per try, idle 30m, max duration none" in out.stdout
        assert "retries: 2 attempt(s) in all" in out.stdout
        assert "fault rule 1 for clients of west, routed to any site: delay 1ms on 1%" in out.stdout
        assert "fault rule 2" not in out.stdout  # north's drill

        # A record bound to no lease outlives its agent: what a hand-written or left-over record looks like.
        key = "/meshfed/v1/sites/east"
        value = etcdctl(etcd, "get", key, "--print-value-only").rstrip(b"\n")
        etcdctl(etcd, "put", key, data=value)
        code, out, lines = await verify(west, "--site", "east")
        assert code == 1
        (lease,) = results(lines, "record-lease")
        assert lease[:2] == ("east", "FAIL")
        assert "bound to no lease" in lease[2]
    finally:
        for agent in agents.values():
            await asyncio.to_thread(agent.stop)
        await echo.close()


async def test_a_site_ca_from_another_root_fails_the_mtls_line(etcd: EtcdProcess, tmp_path: Path) -> None:
    ca, other = tmp_path / "ca", tmp_path / "other"
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(ca))
    await meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(other))
    echo = EchoServer()
    port = await echo.start()
    agents: dict[str, AgentProcess] = {}
    try:
        await two_agents(agents, tmp_path, etcd.endpoint, ca, port)
        # east again, with a site CA from another root (and that root's trust bundle).
        await asyncio.to_thread(agents["east"].stop)
        await meshfed("ca", "site", "east", "--ca", str(other), "--out", str(tmp_path / "ca-east-other"))
        cfg = agents["east"].config
        cfg.write_text(cfg.read_text().replace(str(tmp_path / "ca-east"), str(tmp_path / "ca-east-other")))
        agents["east"] = AgentProcess(cfg, tmp_path / "east").start()

        async def east_refused() -> bool:
            reg = json.loads((await asyncio.to_thread(agents["west"].get, "/registry"))[1])
            return "/meshfed/v1/sites/east" in {r["key"] for r in reg["rejected"]}

        await until(east_refused, "west refusing east's new site record")
        code, out, lines = await verify(agents["west"].config, "--site", "east")
        assert code == 1, out
        failed = [(ln["check"], ln["subject"], ln["detail"]) for ln in lines if ln["result"] == "FAIL"]
        # West refuses east's records first: their signer's chain ends at a root west does not trust.
        assert len(failed) == 1, out
        check, subject, detail = failed[0]
        assert (check, subject) == ("site-record", "east")
        assert detail.startswith("site east's record is in etcd but refused: "), detail
        assert "a site CA from another mesh root?" in out, out
        status = await meshfed("status", "--config", str(agents["west"].config))
        assert "WARNING: site record /meshfed/v1/sites/east is refused: " in status.stdout
    finally:
        for agent in agents.values():
            await asyncio.to_thread(agent.stop)
        await echo.close()


async def test_a_dns_port_held_by_another_process_is_named(etcd: EtcdProcess, tmp_path: Path) -> None:
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", 0))
    taken = squatter.getsockname()[1]
    try:
        cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west", [],
                           dns={"udp": [f"127.0.0.1:{taken}"], "tcp": ["127.0.0.1:0"]})
        agent = AgentProcess(cfg, tmp_path / "west").start()
        assert await asyncio.to_thread(agent.proc.wait, 30) != 0  # type: ignore[union-attr]
        code, out, lines = await verify(cfg)
        assert code == 1
        assert results(lines, "agent")[0][1] == "FAIL"
        assert results(lines, "dns-port") == [(f"127.0.0.1:{taken}/udp", "FAIL",
                                               "held by another process: the agent cannot serve DNS there")]
        assert f"next: ss -lnp 'sport = :{taken}'" in out
    finally:
        squatter.close()
