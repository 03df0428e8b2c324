"""`meshfed agent` as a real process against a real etcd: readiness, lease expiry, restart, TLS, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, web_export, write_config


def etcdctl(etcd: EtcdProcess, *args: str) -> str:
    out = subprocess.run(["etcdctl", f"--endpoints={etcd.endpoint}", *args], check=True, capture_output=True,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, timeout=20)
    return out.stdout.decode()


def keys(etcd: EtcdProcess) -> list[str]:
    return [k for k in etcdctl(etcd, "get", "--prefix", "--keys-only", "/meshfed/v1/sites/").split() if k]


def meshfed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "federation", *args], capture_output=True, text=True, timeout=60)


def wait_for(check: object, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    errors = []
    for a in started:  # every agent gets its SIGTERM even when an earlier one fails to stop
        try:
            a.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


def test_agent_ready_metrics_and_registry(etcd: EtcdProcess, tmp_path: Path, agents: list[AgentProcess]) -> None:
    cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()])
    a = AgentProcess(cfg, tmp_path / "east").start()
    agents.append(a)
    a.wait_ready()
    assert a.get("/healthz") == (200, "alive\n")
    status, metrics = a.get("/metrics")
    assert status == 200
    for name in ("meshfed_registry_synced 1.0", "meshfed_registry_stale 0.0", "meshfed_registry_records_seen_total",
                 "meshfed_registry_records_rejected_total", "meshfed_registry_watch_restarts_total"):
        assert name in metrics
    wait_for(lambda: a.registry()["services"], what="export in the agent's own view")
    assert a.registry()["services"][0]["name"] == "web"
    assert sorted(keys(etcd)) == ["/meshfed/v1/sites/east", "/meshfed/v1/sites/east/services/shop/web"]
    assert a.stop() == 0


def test_sigkill_expires_records_and_restart_takes_over(etcd: EtcdProcess, tmp_path: Path,
                                                        agents: list[AgentProcess]) -> None:
    east_cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()], ttl=2)
    west_cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west", [web_export("db")])
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    west = AgentProcess(west_cfg, tmp_path / "west").start()
    agents += [east, west]
    east.wait_ready()
    west.wait_ready()
    wait_for(lambda: {s["name"] for s in west.registry()["services"]} == {"web", "db"}, what="west sees east")

    # A restart within the TTL takes over the same lease: nothing is rewritten, nothing flaps.
    before = etcdctl(etcd, "get", "/meshfed/v1/sites/east/services/shop/web", "-w", "json")
    east.kill()
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    agents.append(east)
    east.wait_ready()
    after = etcdctl(etcd, "get", "/meshfed/v1/sites/east/services/shop/web", "-w", "json")
    assert json.loads(before)["kvs"][0]["mod_revision"] == json.loads(after)["kvs"][0]["mod_revision"]

    # SIGKILL without a restart: the lease expires and east's records vanish from west's view.
    east.kill()
    wait_for(lambda: {s["name"] for s in west.registry()["services"]} == {"db"}, timeout=15, what="east to expire")
    assert not [k for k in keys(etcd) if "/sites/east" in k]

    # A new agent re-registers once, without duplicates.
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    agents.append(east)
    east.wait_ready()
    wait_for(lambda: {s["name"] for s in west.registry()["services"]} == {"web", "db"}, what="east back")
    assert sorted(k for k in keys(etcd) if "/sites/east" in k) == [
        "/meshfed/v1/sites/east", "/meshfed/v1/sites/east/services/shop/web"]


def test_registry_ls_shows_conflicts_and_falls_back_to_the_agent(etcd: EtcdProcess, tmp_path: Path,
                                                                   agents: list[AgentProcess]) -> None:
    east_cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()])
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    agents.append(east)
    east.wait_ready()
    wait_for(lambda: bool(east.registry()["services"]), what="east's export")
    west_cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west",
                            [web_export(port=9090)])
    west = AgentProcess(west_cfg, tmp_path / "west").start()
    agents.append(west)
    west.wait_ready()
    wait_for(lambda: len(east.registry()["sites"]) == 2, what="west's site")

    out = meshfed("registry", "ls", "--endpoints", etcd.endpoint, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    [web] = report["services"]
    assert web["ports"] == ["http/8080/TCP"]  # the oldest export wins the port
    conflicts = {c["site"]: c for c in web["conflicts"]}
    assert sorted(conflicts) == ["east", "west"]  # both exports are told (MCS)
    assert conflicts["west"]["kinds"] == ["ports"]
    assert "http/9090/TCP differ from http/8080/TCP exported first by east" in conflicts["west"]["reason"]
    text = meshfed("registry", "ls", "--config", str(east_cfg)).stdout
    assert "CONFLICTS" in text
    assert "shop/web from west" in text

    etcd.pause()
    try:
        out = meshfed("registry", "ls", "--config", str(east_cfg))
        assert out.returncode == 0, out.stderr
        assert "STALE" in out.stdout
        assert "shop/web" in out.stdout
    finally:
        etcd.resume()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site: [1, 2", "not valid YAML"),
        ("site: {name: east, network: n}\nregistry: {endpoints: [nohost]}", "registry.endpoints: 'nohost' is not host:port"),
        ("site: {name: East_1, network: n}", "site.name: 'East_1' is not a DNS label"),
        ("site: {name: east, network: n}\nadmin: {port: 70000}", "admin.port: 70000 is not a whole number in 0..65535"),
        ("site: {name: east, network: n}\nexports: [{namespace: shop, name: web, ports: [{name: http, port: 0}]}]",
         "exports[0].ports[0].port: 0 is not a whole number in 1..65535"),
        ("site: {name: east, network: n}\nexports: [{namespace: shop, name: web, ports: [{name: http, port: 80}], "
         "endpoints: [{addresses: [not-an-ip]}]}]", "exports[0].endpoints[0].addresses: 'not-an-ip' is not an IP"),
        ("site: {name: east, network: n}\nsurprise: 1", "surprise: unknown field"),
        ("registry: {}", "site: is required"),
    ],
)
def test_bad_config_fails_with_one_line(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(text)
    out = meshfed("agent", "--config", str(cfg))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"meshfed: {cfg}:")
    assert expected in lines[0]


def test_version() -> None:
    out = meshfed("version")
    assert out.returncode == 0
    assert out.stdout.startswith("meshfed 0.")


def test_bad_section_and_bad_workers_flag_fail_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("site: {name: east, network: n}\ndns: {ttl: -1}\n")
    out = meshfed("agent", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.strip() == f"meshfed: {cfg}: dns.ttl: -1 is not in 0..86400"
    cfg.write_text("site: {name: east, network: n}\n")
    out = meshfed("agent", "--config", str(cfg), "--workers", "0")
    assert out.returncode == 2
    assert out.stderr.strip() == f"meshfed: {cfg}: gateway.workers: must be greater than 0"
