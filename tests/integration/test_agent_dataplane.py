"""Two agents with gateways on loopback: a client of west reaches east's service through egress + mTLS gateway."""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, write_config


def meshfed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "federation", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def web_server() -> Iterator[int]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from east\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def site_ca(tmp: Path, site: str) -> Path:
    if not (tmp / "ca" / "ca.crt").exists():
        assert meshfed("ca", "init", "--trust-domain", "mesh.example", "--out", str(tmp / "ca")).returncode == 0
    out = tmp / f"ca-{site}"
    res = meshfed("ca", "site", site, "--ca", str(tmp / "ca"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def wait_for(check: object, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def workers_of(pid: int) -> list[int]:
    """PIDs of the `python -m gateway.workers` children of `pid`."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"gateway.workers" in cmdline:
            out.append(int(proc.name))
    return out


def accepted_by(port: int) -> dict[str, int]:
    """Established TCP connections whose local port is `port` (accepted there): peer address -> owning PID."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=True, timeout=20).stdout
    owners = {}
    for line in out.splitlines():
        pid = re.search(r"pid=(\d+)", line)
        if pid:
            owners[line.split()[3]] = int(pid.group(1))
    return owners


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_cross_network_request_dns_and_status(etcd: EtcdProcess, tmp_path: Path, web_server: int) -> None:
    agents = []
    try:
        for site, exports in (("east", [{"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 80}],
                                          "endpoints": [{"addresses": ["127.0.0.1"], "ports": {"http": web_server}}]}]),
                              ("west", [])):
            gateway = {"ca_dir": str(site_ca(tmp_path, site)), "listen_address": "127.0.0.1", "listen_port": 0}
            if site == "east":
                gateway["workers"] = 2  # a second gateway process on the same port (SO_REUSEPORT)
            cfg = write_config(tmp_path / f"{site}.yaml", site, [etcd.endpoint], tmp_path / site, exports,
                               gateway=gateway)
            agents.append(AgentProcess(cfg, tmp_path / site).start())
        east, west = agents
        east.wait_ready()
        west.wait_ready()

        def west_status() -> dict:  # type: ignore[type-arg]
            return dict(json.loads(west.get("/status")[1]))

        wait_for(lambda: any(i["listeners"] for i in west_status()["imports"]), what="west's egress listener")
        # east's gateway admits west only once west's site record (with its CA chain) is in east's view.
        wait_for(lambda: {s["name"] for s in east.registry()["sites"]} == {"east", "west"}, what="east to know west")
        [imp] = west_status()["imports"]
        assert imp["service"] == "shop/web"
        assert imp["sites"][0]["via"].startswith("127.0.0.1:")  # east is on another network: through its gateway
        host, port = imp["listeners"]["http"].rsplit(":", 1)
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as resp:
            assert resp.read() == b"hello from east\n"

        # 16 clients at once hold 16 tunnels: the kernel spreads their connections over both gateway
        # processes of east (SO_REUSEPORT hashes each connection; all on one would be a 1 in 2^15 chance).
        gw_port = int(imp["sites"][0]["via"].rsplit(":", 1)[1])
        assert east.proc is not None
        processes = {east.proc.pid, *workers_of(east.proc.pid)}
        assert len(processes) == 2
        clients = [socket.create_connection((host, int(port)), timeout=10) for _ in range(16)]
        try:
            wait_for(lambda: len(accepted_by(gw_port)) >= 16, what="16 tunnels at east's gateway")
            owners = accepted_by(gw_port)
            assert set(owners.values()) == processes, owners
            for c in clients:
                c.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
            for c in clients:
                assert read_all(c).endswith(b"\r\n\r\nhello from east\n")
        finally:
            for c in clients:
                c.close()

        # west's DNS answers the federated name with the mesh-wide VIP that east's DNS gives too.
        def answer(agent: AgentProcess) -> list[str]:
            udp = json.loads(agent.get("/status")[1])["dns"]["udp"][0]
            h, p = udp.rsplit(":", 1)
            q = dns.message.make_query("web.shop.svc.clusterset.local", dns.rdatatype.A)
            r = dns.query.udp(q, h, port=int(p), timeout=5)
            return sorted(rr.address for rrset in r.answer for rr in rrset)

        wait_for(lambda: bool(answer(west)), what="a VIP in west's DNS")
        assert answer(west) == answer(east)
        assert answer(west)[0].startswith("240.240.")

        text = meshfed("status", "--config", str(west.config))
        assert text.returncode == 0, text.stderr
        assert "site west" in text.stdout
        assert "shop/web" in text.stdout
        assert "east 1/1 via 127.0.0.1:" in text.stdout
        # No VIPs in the host's namespace, so no capture: the status says which mode runs, and why.
        assert "egress: 1 per-port listener(s); capture off: VIPs are off (vm.vip_interface is empty)" in text.stdout
        assert west_status()["egress"]["mode"] == "listeners"
    finally:
        errors = []
        for a in agents:
            try:
                a.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, "\n".join(errors)


def test_gateway_ca_of_another_site_is_refused(etcd: EtcdProcess, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "west.yaml", "west", [etcd.endpoint], tmp_path / "west", [],
                       gateway={"ca_dir": str(site_ca(tmp_path, "east")), "listen_address": "127.0.0.1",
                                "listen_port": 0})
    out = meshfed("agent", "--config", str(cfg))
    assert out.returncode == 2
    assert "gateway.ca_dir: the CA in" in out.stderr
    assert "belongs to site 'east', not 'west'" in out.stderr
