"""zonemaster-cli's nameserver, consistency and syntax tests against a real agent's DNS: nothing above NOTICE.

Zonemaster only speaks to port 53, so the agent runs in a namespace of the test's own with its DNS
on 198.18.0.53:53 (an address on that namespace's loopback), an embedded etcd and two static
exports; zonemaster runs in the same namespace as an undelegated test of `clusterset.local` with
that one nameserver. The agent answers authoritatively only (`forwarding: false`): zonemaster's
NAMESERVER01 would rightly call a forwarding agent a recursor, which is what a VM's resolver is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.netns.nshelp import scratch_netns

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("zonemaster-cli") is None, reason="zonemaster-cli not installed")]

ADDRESS = "198.18.0.53"
MODULES = ("nameserver", "consistency", "syntax")


@pytest.fixture
def agent_in_netns(tmp_path: Path) -> Iterator[str]:
    with scratch_netns("mfzm", loopback_up=True) as ns:
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{ADDRESS}/32", "dev", "lo"], check=True, timeout=20)
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(yaml.safe_dump({
            "site": {"name": "east", "network": "net-1", "region": "r1", "zone": "z1"},
            "registry": {"endpoints": [], "lease_ttl": 5,  # an embedded etcd inside the namespace
                         "signatures": "accept"},  # a DNS-only agent: no site CA to sign with
            "admin": {"address": "127.0.0.1", "port": 0},
            "state_dir": str(tmp_path / "state"),
            "dns": {"udp": [f"{ADDRESS}:53"], "tcp": [f"{ADDRESS}:53"], "forwarding": False,
                    "answer_unserved_vips": True},
            "vm": {"vip_interface": ""},
            "exports": [
                {"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 80}],
                 "endpoints": [{"addresses": ["10.0.0.1"]}]},
                {"namespace": "shop", "name": "db", "type": "Headless", "ports": [{"name": "pg", "port": 5432}],
                 "endpoints": [{"addresses": ["10.0.0.2"], "hostname": "db-0"}]},
            ],
        }))
        with open(tmp_path / "agent.log", "ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "federation", "agent",
                                     "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            wait_ready(ns, tmp_path, proc)
            yield ns
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(ns: str, tmp_path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    addr = tmp_path / "state" / "admin.addr"
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
        if addr.exists() and addr.read_text().strip():
            res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                                  "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)",
                                  f"http://{addr.read_text().strip()}/readyz"], capture_output=True, timeout=20,
                                 check=False)
            if res.returncode == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"agent not ready: {(tmp_path / 'agent.log').read_text()[-3000:]}")


def zonemaster(ns: str, level: str) -> list[str]:
    argv = ["ip", "netns", "exec", ns, "zonemaster-cli", "--no-progress", "--no-ipv6", "--show-testcase",
            "--level", level, "--ns", f"ns.clusterset.local/{ADDRESS}"]
    for module in MODULES:
        argv += ["--test", module]
    res = subprocess.run([*argv, "clusterset.local"], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    # Result lines are "<seconds> <LEVEL> <TESTCASE> <message>"; with nothing to show it says "Looks OK."
    return [line for line in res.stdout.splitlines() if re.match(r"^\s*[\d.]+\s+[A-Z]+\s+[A-Z]", line)
            and "UNSPECIFIED" not in line]


def test_zonemaster_finds_nothing_wrong_with_the_agents_zone(agent_in_netns: str) -> None:
    ran = zonemaster(agent_in_netns, "INFO")
    for case in ("NAMESERVER01", "NAMESERVER02", "NAMESERVER03", "NAMESERVER06", "NAMESERVER08",
                 "CONSISTENCY01", "CONSISTENCY04", "CONSISTENCY05", "CONSISTENCY06", "SYNTAX04", "SYNTAX07"):
        assert any(case in line for line in ran), f"{case} did not run:\n" + "\n".join(ran)
    problems = zonemaster(agent_in_netns, "WARNING")
    assert problems == [], "\n".join(problems)


def test_the_agent_answers_what_zonemaster_relies_on(agent_in_netns: str) -> None:
    out = subprocess.run(["ip", "netns", "exec", agent_in_netns, "dig", "+norec", f"@{ADDRESS}", "clusterset.local",
                          "NS"], capture_output=True, text=True, timeout=20, check=True).stdout
    assert "flags: qr aa;" in out  # authoritative, and no RA: it does not recurse
    assert "ns.clusterset.local." in out.split("ANSWER SECTION:")[1]
    assert f"ns.clusterset.local.\t5\tIN\tA\t{ADDRESS}" in out.split("ADDITIONAL SECTION:")[1]
    srv = subprocess.run(["ip", "netns", "exec", agent_in_netns, "dig", "+short", f"@{ADDRESS}",
                          "web.shop.svc.clusterset.local", "SRV"], capture_output=True, text=True, timeout=20,
                         check=True).stdout
    assert srv.split()[2:] == ["80", "web.shop.svc.clusterset.local."]
