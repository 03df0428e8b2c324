"""SIGHUP reloads a running agent's config: live changes apply, restart-only ones are said, a bad file is refused."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, web_export, write_config
from tests.integration.test_agent import wait_for


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts (what a VM service's tcp check connects to)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, name="tcp-check-target", daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one series in a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == (labels or {}):
                return float(s.value)
    return None


def answer(agent: AgentProcess, name: str) -> tuple[list[str], int]:
    """The A records of `name` from the agent's DNS, and their TTL."""
    udp = json.loads(agent.get("/status")[1])["dns"]["udp"][0]
    host, port = udp.rsplit(":", 1)
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), host, port=int(port), timeout=5)
    rrs = [rr for rrset in reply.answer for rr in rrset]
    return sorted(rr.address for rr in rrs), (reply.answer[0].ttl if reply.answer else -1)


def test_sighup_applies_exports_checks_and_dns_and_refuses_a_bad_file(
        etcd: EtcdProcess, tmp_path: Path, listener: int) -> None:
    cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()])
    agent = AgentProcess(cfg, tmp_path / "east").start()
    try:
        agent.wait_ready()
        wait_for(lambda: answer(agent, "web.shop.svc.clusterset.local")[0], what="web's VIP")
        assert answer(agent, "web.shop.svc.clusterset.local")[1] == 5
        dns_port_before = json.loads(agent.get("/status")[1])["dns"]["udp"]

        data = yaml.safe_load(cfg.read_text())
        data["exports"].append(web_export("api", 8081, "127.0.0.11"))
        data["vm"]["services"] = [{"namespace": "shop", "name": "db", "ports": [{"name": "tcp", "port": listener}],
                                   "address": "127.0.0.1", "check": {"kind": "tcp", "interval": 1}}]
        data["dns"]["ttl"] = 42
        data["dns"]["zone"] = "mesh.internal"  # needs a restart
        cfg.write_text(yaml.safe_dump(data))
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)

        wait_for(lambda: {s["name"] for s in agent.registry()["services"]} == {"web", "api", "db"}, 20,
                 "the reloaded exports and the checked service in the registry")
        db = next(s for s in agent.registry()["services"] if s["name"] == "db")
        assert db["endpoints"][0]["ready"] is True
        wait_for(lambda: answer(agent, "api.shop.svc.clusterset.local")[0], what="api's VIP")
        assert answer(agent, "web.shop.svc.clusterset.local")[1] == 42  # the new TTL, zone unchanged
        status = json.loads(agent.get("/status")[1])
        assert status["config"]["needsRestart"] == ["dns.zone"]
        assert status["config"]["lastReload"]["applied"] == ["dns.ttl", "exports", "vm.services"]
        assert status["dns"]["udp"] == dns_port_before  # the same server went on answering
        _, metrics = agent.get("/metrics")
        assert sample(metrics, "meshfed_config_reloads_total", {"result": "applied"}) == 1
        assert sample(metrics, "meshfed_config_restart_pending") == 1

        good = cfg.read_text()
        data["gateway"] = {"connect_timeout": -1}
        cfg.write_text(yaml.safe_dump(data))
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reload refused" in agent.log.read_text(), what="the refusal in the log")
        line = next(x for x in agent.log.read_text().splitlines() if "config reload refused" in x)
        assert f"{cfg}: gateway.connect_timeout:" in line
        assert "the running config stays" in line
        status = json.loads(agent.get("/status")[1])
        assert status["config"]["lastReload"]["result"] == "refused"
        assert {s["name"] for s in agent.registry()["services"]} == {"web", "api", "db"}  # nothing lost
        assert answer(agent, "api.shop.svc.clusterset.local")[0]
        _, metrics = agent.get("/metrics")
        assert sample(metrics, "meshfed_config_reloads_total", {"result": "refused"}) == 1

        data["exports"] = data["exports"][:1]  # a good file again: api is withdrawn, live
        del data["gateway"]
        cfg.write_text(yaml.safe_dump(data))
        assert good != cfg.read_text()
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: {s["name"] for s in agent.registry()["services"]} == {"web", "db"}, 20,
                 "api withdrawn by the next reload")
    finally:
        assert agent.stop() == 0, agent.log.read_text()[-5000:]
