"""An agent under a low open-files limit: it raises what it may, says which limit it hit, keeps serving."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import dns.message
import dns.query

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, web_export, write_config


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def test_the_soft_limit_is_raised_to_the_hard_one(etcd: EtcdProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()])
    agent = AgentProcess(cfg, tmp_path / "east").start(open_files=(256, 8192))
    try:
        agent.wait_ready()
        assert agent.proc is not None
        assert _soft_limit(agent.proc.pid) == 8192
        assert "open-files limit raised from 256 to 8192" in agent.log.read_text()
    finally:
        assert agent.stop() == 0


def test_out_of_descriptors_is_said_once_and_what_is_open_keeps_working(etcd: EtcdProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()])
    agent = AgentProcess(cfg, tmp_path / "east").start(open_files=(160, 160))
    held: list[socket.socket] = []
    try:
        agent.wait_ready()
        status = json.loads(agent.get("/status")[1])
        udp_host, udp_port = status["dns"]["udp"][0].rsplit(":", 1)
        tcp_host, tcp_port = status["dns"]["tcp"][0].rsplit(":", 1)
        assert "cannot be raised" in agent.log.read_text()
        # One connection open before the limit: it must keep being answered.
        kept = socket.create_connection((tcp_host, int(tcp_port)), timeout=5)
        query = dns.message.make_query("web.shop.svc.clusterset.local", "A")
        dns.query.send_tcp(kept, query)
        assert dns.query.receive_tcp(kept, expiration=time.time() + 5)[0].rcode() == 0
        # Then open connections (bounded) until the agent runs out of descriptors.
        for _ in range(400):
            held.append(socket.create_connection((tcp_host, int(tcp_port)), timeout=5))
            if "out of file descriptors" in agent.log.read_text():
                break
            time.sleep(0.005)
        deadline = time.monotonic() + 10
        while "out of file descriptors" not in agent.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = agent.log.read_text()
        assert "out of file descriptors" in log, log[-2000:]
        assert "the open-files limit (160" in log
        # Served while out of descriptors: the open TCP connection and UDP.
        dns.query.send_tcp(kept, query)
        assert dns.query.receive_tcp(kept, expiration=time.time() + 5)[0].rcode() == 0
        assert dns.query.udp(query, udp_host, port=int(udp_port), timeout=5).rcode() == 0
        time.sleep(2.5)  # asyncio retries the accept every second: still one warning
        assert agent.log.read_text().count("out of file descriptors") == 1
        for s in held:
            s.close()
        held.clear()
        deadline = time.monotonic() + 10
        while agent.get("/healthz")[0] != 200:
            assert time.monotonic() < deadline, "the admin endpoint did not come back"
            time.sleep(0.2)
        kept.close()
    finally:
        for s in held:
            s.close()
        assert agent.stop() == 0
