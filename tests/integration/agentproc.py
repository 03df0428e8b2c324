"""Run `meshfed agent` as a real child process for tests."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def write_config(path: Path, site: str, endpoints: list[str], state_dir: Path, exports: list[dict[str, Any]],
                 ttl: int = 3, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "site": {"name": site, "network": f"net-{site}", "region": "r1", "zone": "z1"},
        "registry": {"endpoints": endpoints, "lease_ttl": ttl, "timeout": 2},
        "admin": {"address": "127.0.0.1", "port": 0},
        "state_dir": str(state_dir),
        "exports": exports,
        # Loopback tests share the host: DNS on free ports, no VIP interface in the host's namespace, and DNS
        # still answers the VIPs (the tests check them; nothing connects to them).
        "dns": {"udp": ["127.0.0.1:0"], "tcp": ["127.0.0.1:0"], "answer_unserved_vips": True},
        "vm": {"vip_interface": ""},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    # The heartbeat is a registry write every interval: tests that count keys and writes ask for it by name
    # (tests/integration/test_heartbeat.py does).
    data["registry"].setdefault("heartbeat_interval", 0)
    if not data.get("gateway", {}).get("ca_dir"):
        # No site CA, so nothing to sign with or verify against: the registry is trusted as it is.
        data["registry"].setdefault("signatures", "accept")
    path.write_text(yaml.safe_dump(data))
    return path


def web_export(name: str = "web", port: int = 8080, address: str = "127.0.0.10") -> dict[str, Any]:
    return {"namespace": "shop", "name": name, "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": [address]}]}


class AgentProcess:
    """`python -m federation agent --config FILE` with its log captured to a file."""

    def __init__(self, config: Path, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, open_files: tuple[int, int] | None = None) -> AgentProcess:
        """Start the agent (with `open_files`, the (soft, hard) RLIMIT_NOFILE a unit file would give it)."""
        (self.state_dir / "admin.addr").unlink(missing_ok=True)  # a SIGKILLed agent leaves its address behind

        def limit() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        with open(self.log, "ab") as logf:  # the child gets its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "federation", "agent", "--config", str(self.config)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ),
                preexec_fn=limit if open_files is not None else None,
            )
        return self

    def admin(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        path = self.state_dir / "admin.addr"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log.read_text()}")
            if path.exists() and path.read_text().strip():
                return "http://" + path.read_text().strip()
            time.sleep(0.05)
        raise AssertionError(f"agent did not start its admin endpoint: {self.log.read_text()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin() + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"agent not ready: {self.get('/readyz')}: {self.log.read_text()}")

    def registry(self) -> dict[str, Any]:
        return dict(json.loads(self.get("/registry")[1]))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the agent logs every task's stack
            time.sleep(1)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not stop on SIGTERM; its log:\n{self.log.read_text()[-20000:]}") from None


def dns_a(agent: AgentProcess, name: str) -> list[str]:
    """The A records the agent's DNS answers for `name` (empty on NXDOMAIN, NODATA or SERVFAIL)."""
    import dns.message
    import dns.query
    import dns.rdatatype

    udp = json.loads(agent.get("/status")[1])["dns"]["udp"][0]
    host, port = udp.rsplit(":", 1)
    reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), host, port=int(port), timeout=5)
    return sorted(rr.address for rrset in reply.answer for rr in rrset)


def contextlib_open(path: Path) -> Any:
    return open(path, "ab")
