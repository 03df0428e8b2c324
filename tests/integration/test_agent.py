"""`meshfed agent` as a real process against a real etcd: readiness, lease expiry, restart, TLS, CLI."""

from __future__ import annotations

import base64
import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, dns_a, web_export, write_config


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


def revisions(etcd: EtcdProcess) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """The store's revision, and (create revision, mod revision, lease) of every registry key."""
    out = json.loads(etcdctl(etcd, "get", "--prefix", "/meshfed/", "-w", "json"))
    kvs = {base64.b64decode(kv["key"]).decode(): (kv["create_revision"], kv["mod_revision"], kv.get("lease", 0))
           for kv in out.get("kvs", [])}
    return out["header"]["revision"], kvs


class History:
    """`etcdctl watch --prefix /meshfed/ --rev N`: every event any peer's mirror sees from revision N on."""

    def __init__(self, etcd: EtcdProcess, tmp: Path, start: int) -> None:
        self.out = tmp / "watch.out"
        self._etcd = etcd
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(
                ["etcdctl", f"--endpoints={etcd.endpoint}", "watch", "--prefix", "/meshfed/", "--rev", str(start)],
                stdout=f, stderr=subprocess.STDOUT, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    def events(self) -> list[str]:
        """PUT/DELETE lines so far, each with its key, after a write of our own has come through (a barrier)."""
        etcdctl(self._etcd, "put", "/meshfed/test-barrier", "x")
        wait_for(lambda: "/meshfed/test-barrier" in self.out.read_text(), what="the watch to catch up")
        lines = self.out.read_text().splitlines()
        return [f"{op} {key}" for op, key in itertools.pairwise(lines)
                if op in ("PUT", "DELETE") and key != "/meshfed/test-barrier"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        etcdctl(self._etcd, "del", "/meshfed/test-barrier")


def test_a_restart_within_the_lease_ttl_rewrites_nothing_and_nothing_flaps(
        etcd: EtcdProcess, tmp_path: Path, agents: list[AgentProcess]) -> None:
    # A lease of 60 s: a restart fits in it by construction (stop, start and readiness are bounded by 10 + 20 s).
    east_cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east",
                            [web_export(), web_export("api", 8081)], ttl=60)
    west_cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west", [web_export("db")])
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    west = AgentProcess(west_cfg, tmp_path / "west").start()
    agents += [east, west]
    east.wait_ready()
    west.wait_ready()
    wait_for(lambda: {s["name"] for s in west.registry()["services"]} == {"web", "api", "db"}, what="west sees east")
    rev, before = revisions(etcd)
    assert {k for k in before if "/sites/east" in k} == {
        "/meshfed/v1/sites/east", "/meshfed/v1/sites/east/services/shop/web",
        "/meshfed/v1/sites/east/services/shop/api"}
    history = History(etcd, tmp_path, rev + 1)
    try:
        east.kill()
        east = AgentProcess(east_cfg, tmp_path / "east").start()
        agents.append(east)
        east.wait_ready()
        wait_for(lambda: {s["name"] for s in east.registry()["services"]} == {"web", "api", "db"},
                 what="the restarted east to see the mesh")
        # Every key of every site: same create and mod revision, same lease; and nobody saw an event.
        assert revisions(etcd)[1] == before
        assert history.events() == []
    finally:
        history.close()
    assert {s["name"] for s in west.registry()["services"]} == {"web", "api", "db"}


def test_sigkill_expires_records_and_a_new_agent_registers_once(etcd: EtcdProcess, tmp_path: Path,
                                                               agents: list[AgentProcess]) -> None:
    east_cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()], ttl=2)
    west_cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west", [web_export("db")])
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    west = AgentProcess(west_cfg, tmp_path / "west").start()
    agents += [east, west]
    east.wait_ready()
    west.wait_ready()
    wait_for(lambda: {s["name"] for s in west.registry()["services"]} == {"web", "db"}, what="west sees east")

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
        ("site: {name: east, network: n}\nregistry: {endpoints: [nohost]}", "registry.endpoints[0]: 'nohost' is not host:port"),
        ("site: {name: East_1, network: n}", "site.name: 'East_1' is not a DNS label"),
        ("site: {name: east, network: n}\nadmin: {port: 70000}", "admin.port: 70000 is not in 0..65535"),
        ("site: {name: east, network: n}\nexports: [{namespace: shop, name: web, ports: [{name: http, port: 0}]}]",
         "exports[0].ports[0].port: 0 is not in 1..65535"),
        ("site: {name: east, network: n}\nexports: [{namespace: shop, name: web, ports: [{name: http, port: 80}], "
         "endpoints: [{addresses: [not-an-ip]}]}]", "exports[0].endpoints[0].addresses[0]: 'not-an-ip' is not an IP"),
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
    assert out.stderr.strip() == f"meshfed: {cfg}: gateway.workers: 0 is not in 1..64"


def test_admin_documents_and_registry_ls_page_and_filter(etcd: EtcdProcess, tmp_path: Path,
                                                         agents: list[AgentProcess]) -> None:
    exports = [web_export(name=f"svc{i:02d}", port=8000 + i) for i in range(12)]
    east_cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", exports)
    west_cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west",
                            [web_export(name="svc00", port=8000, address="127.0.0.11")])
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    west = AgentProcess(west_cfg, tmp_path / "west").start()
    agents.extend([east, west])
    east.wait_ready()
    west.wait_ready()
    wait_for(lambda: len(west.registry()["services"]) == 12, what="east's exports at west")

    status, body = west.get("/registry?limit=5")
    assert status == 200
    first = json.loads(body)
    assert [s["name"] for s in first["services"]] == [f"svc{i:02d}" for i in range(5)]
    assert first["page"]["matched"] == 12
    second = json.loads(west.get(f"/registry?limit=5&after={first['page']['next']}")[1])
    assert [s["name"] for s in second["services"]] == [f"svc{i:02d}" for i in range(5, 10)]
    only_west = json.loads(west.get("/registry?site=west")[1])
    assert [s["name"] for s in only_west["sites"]] == ["west"]
    assert [s["name"] for s in only_west["services"]] == ["svc00"]
    imports = json.loads(west.get("/status?service=shop/svc1*")[1])
    assert [i["service"] for i in imports["imports"]] == ["shop/svc10", "shop/svc11"]
    assert west.get("/status?limit=-1") == (400, "/status: limit=-1 is outside 1..10000\n")
    assert west.get("/registry?colour=blue")[0] == 400

    out = meshfed("registry", "ls", "--endpoints", etcd.endpoint, "--json", "--service", "*/svc0?", "--limit", "3")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [s["name"] for s in report["services"]] == ["svc00", "svc01", "svc02"]
    assert report["page"]["next"] == "shop/svc02"
    text = meshfed("registry", "ls", "--endpoints", etcd.endpoint, "--site", "west").stdout
    assert "SITES (1)" in text
    assert "SERVICES (1 of 1 matching)" in text
    bad = meshfed("registry", "ls", "--endpoints", etcd.endpoint, "--limit", "lots")
    assert bad.returncode == 2
    assert "limit='lots' is not a number" in bad.stderr
    st = meshfed("status", "--config", str(west_cfg), "--json", "--limit", "1")
    assert st.returncode == 0, st.stderr
    assert len(json.loads(st.stdout)["imports"]) == 1


def test_scoped_imports_keep_other_services_out_of_the_mirror_and_dns(etcd: EtcdProcess, tmp_path: Path,
                                                                      agents: list[AgentProcess]) -> None:
    import dns.message
    import dns.query
    import dns.rcode
    import yaml

    east_cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east",
                            [web_export(name="web"), web_export(name="db", port=5432)])
    west_cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west",
                            [web_export(name="mine", port=9000, address="127.0.0.11")])
    data = yaml.safe_load(west_cfg.read_text())
    data["imports"] = ["shop/web"]
    west_cfg.write_text(yaml.safe_dump(data))
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    west = AgentProcess(west_cfg, tmp_path / "west").start()
    agents.extend([east, west])
    east.wait_ready()
    west.wait_ready()
    wait_for(lambda: len(east.registry()["services"]) == 3, what="every export at east")
    wait_for(lambda: {s["name"] for s in west.registry()["services"]} == {"web", "mine"}, what="west's scoped view")
    host, port = json.loads(west.get("/status")[1])["dns"]["udp"][0].rsplit(":", 1)

    def rcode(name: str) -> int:
        return dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=5).rcode()

    wait_for(lambda: rcode("web.shop.svc.clusterset.local") == dns.rcode.NOERROR, what="web in west's DNS")
    assert rcode("db.shop.svc.clusterset.local") == dns.rcode.NXDOMAIN
    assert "imports scoped to shop/web" in west.log.read_text()


def test_a_bad_import_pattern_is_refused_with_its_place(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("site: {name: east, network: n}\nimports: [shop/web, Shop/*]\n")
    out = meshfed("agent", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.startswith(f"meshfed: {cfg}: imports[1]: 'Shop/*' is not NAMESPACE/NAME")


def test_status_lists_a_vm_sites_own_exports_with_their_checks(etcd: EtcdProcess, tmp_path: Path,
                                                              agents: list[AgentProcess]) -> None:
    """Issue 14: a VM site's `meshfed status` printed `EXPORTED (none)` while it exported services, and the
    check results showed only in --json."""
    with socket.socket() as up, socket.socket() as down:
        up.bind(("127.0.0.1", 0))
        up.listen()
        down.bind(("127.0.0.1", 0))  # bound, never listening: its check is refused
        services = [{"namespace": "shop", "name": name, "address": "127.0.0.1",
                     "ports": [{"name": "http", "port": sock.getsockname()[1]}],
                     "check": {"kind": "tcp", "interval": 0.2, "rise": 1, "fall": 1}}
                    for name, sock in (("cart", up), ("gone", down))]
        cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west", [],
                           vm={"services": services, "egress_capture": "off"})
        west = AgentProcess(cfg, tmp_path / "west").start()
        agents.append(west)
        west.wait_ready()

        def exports() -> dict[str, str]:
            lines = meshfed("status", "--config", str(cfg)).stdout.split("EXPORTED\n", 1)[1].split("\n\n")[0]
            return {ln.split()[0]: ln for ln in lines.splitlines()[1:] if ln.strip()}

        wait_for(lambda: {"shop/cart", "shop/gone"} <= exports().keys() and "FAILING" in exports()["shop/gone"],
                 what="both exports in west's status")
        rows = exports()
        assert f"1/1    ok (tcp connect to 127.0.0.1:{up.getsockname()[1]} succeeded)" in rows["shop/cart"]
        assert "0/1    FAILING" in rows["shop/gone"]


def test_a_site_whose_vips_are_off_answers_no_vip(etcd: EtcdProcess, tmp_path: Path,
                                                  agents: list[AgentProcess]) -> None:
    """Nothing binds the VIPs at a site with `vm.vip_interface: ""` (the loopback demo): an address there would
    leave by the default route to a stranger, so its DNS answers none (NODATA) and says why once. The setting
    that answers them anyway is what the other loopback tests run with."""
    import dns.message
    import dns.query
    import dns.rcode

    east_cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [web_export()])
    west_cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west", [],
                            dns={"answer_unserved_vips": False})
    east = AgentProcess(east_cfg, tmp_path / "east").start()
    west = AgentProcess(west_cfg, tmp_path / "west").start()
    agents.extend([east, west])
    east.wait_ready()
    west.wait_ready()
    wait_for(lambda: dns_a(east, "web.shop.svc.clusterset.local"), what="a VIP where it is answered")
    host, port = json.loads(west.get("/status")[1])["dns"]["udp"][0].rsplit(":", 1)
    name = "web.shop.svc.clusterset.local"
    wait_for(lambda: any(s["name"] == "web" for s in west.registry()["services"]), what="web in west's view")
    reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR  # NODATA: the name exists, no address here
    assert not reply.answer
    assert west.log.read_text().count("ClusterSetIP names answer no address at this site") == 1
