"""Two site networks that cannot route to each other, joined only by their gateways over a "wan".

    nsA  client 198.18.1.10 --- 198.18.1.1 nsGA (site a: egress) 198.19.0.1 --+
                                                                              wan (bridge)
    nsB  server 198.18.2.10 --- 198.18.2.1 nsGB (site b: gateway) 198.19.0.2 -+

No namespace forwards packets, so the client reaches the server only through egress + gateway.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.core.records import Endpoint, EndpointPort, Gateway, ServiceExport, ServicePort
from federation.core.view import MeshView
from federation.pki.issuing import save_site
from tests.netns.node import dump_view
from tests.netns.nshelp import stop_by_stdin
from tests.pkihelp import Mesh

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
ECHO_PORT = 7777


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@contextlib.contextmanager
def topology() -> Iterator[dict[str, str]]:
    tag = f"mf{os.getpid() % 100000}"
    ns = {k: f"{tag}-{k}" for k in ("a", "ga", "b", "gb", "wan")}
    made: list[str] = []
    try:
        for name in ns.values():
            sh("ip", "netns", "add", name)
            made.append(name)

        def link(n1: str, if1: str, n2: str, if2: str) -> None:
            sh("ip", "link", "add", f"{tag}{if1}", "netns", ns[n1], "type", "veth", "peer", "name",
               f"{tag}{if2}", "netns", ns[n2])

        def addr(n: str, ifname: str, cidr: str) -> None:
            sh("ip", "-n", ns[n], "addr", "add", cidr, "dev", f"{tag}{ifname}")
            sh("ip", "-n", ns[n], "link", "set", f"{tag}{ifname}", "up")

        link("a", "a0", "ga", "ga0")
        link("b", "b0", "gb", "gb0")
        link("ga", "ga1", "wan", "w1")
        link("gb", "gb1", "wan", "w2")
        sh("ip", "-n", ns["wan"], "link", "add", "br0", "type", "bridge")
        for i in ("w1", "w2"):
            sh("ip", "-n", ns["wan"], "link", "set", f"{tag}{i}", "master", "br0", "up")
        sh("ip", "-n", ns["wan"], "link", "set", "br0", "up")
        addr("a", "a0", "198.18.1.10/24")
        addr("ga", "ga0", "198.18.1.1/24")
        addr("ga", "ga1", "198.19.0.1/24")
        addr("b", "b0", "198.18.2.10/24")
        addr("gb", "gb0", "198.18.2.1/24")
        addr("gb", "gb1", "198.19.0.2/24")
        for name in ns.values():
            sh("ip", "-n", name, "link", "set", "lo", "up")
        yield ns
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)


@contextlib.contextmanager
def node(ns: str, *args: str) -> Iterator[str]:
    """Run tests/netns/node.py in `ns`; yield what it printed after READY; stop it by closing stdin."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.node", *args],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.kill()
            raise AssertionError(f"node {args[0]} did not start: {line!r} {proc.communicate(timeout=10)[1]}")
        yield line.split(" ", 1)[1].strip()
    finally:
        stop_by_stdin(proc)


def in_ns(ns: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)


CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1] if len(sys.argv) > 1 else {host!r}, {port}), timeout=5)
payload = bytes(range(256)) * 4096
s.sendall(payload); s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(65536):
    got += chunk
print("OK" if got == payload else f"MISMATCH {{len(got)}}")
"""


def test_client_in_site_a_reaches_site_b_only_through_the_gateways(tmp_path: Path) -> None:
    mesh = Mesh()
    for site in ("a", "b"):
        save_site(tmp_path / site, mesh.site_ca(site))
    view = MeshView(
        sites={
            "a": mesh.site("a", network="net-a", gateways=(Gateway("gw", "198.19.0.1"),)),
            "b": mesh.site("b", network="net-b", gateways=(Gateway("gw", "198.19.0.2"),)),
        },
        exports={("b", "ns", "echo"): ServiceExport(
            "b", "ns", "echo", (ServicePort("tcp", 7),),
            endpoints=(Endpoint(("198.18.2.10",), (EndpointPort("tcp", ECHO_PORT),)),),
        )},
    )
    view_file = tmp_path / "view.json"
    view_file.write_text(dump_view(view))
    with topology() as ns, \
            node(ns["b"], "echo", "198.18.2.10", str(ECHO_PORT)), \
            node(ns["gb"], "gateway", "b", str(tmp_path / "b"), str(view_file), "198.19.0.2"), \
            node(ns["ga"], "egress", "a", str(tmp_path / "a"), str(view_file), "198.18.1.1") as ports:
        egress_port = json.loads(ports)["ns/echo/tcp"]
        # The direct path does not exist: site a has no route to site b's network.
        direct = in_ns(ns["a"], CLIENT.format(host="198.18.2.10", port=ECHO_PORT))
        assert direct.returncode != 0
        assert "unreachable" in direct.stderr.lower() or "timed out" in direct.stderr.lower(), direct.stderr
        from_gateway = in_ns(ns["ga"], CLIENT.format(host="198.18.2.10", port=ECHO_PORT))
        assert from_gateway.returncode != 0
        # Through the egress listener and the tunnel it works.
        via = in_ns(ns["a"], CLIENT.format(host="198.18.1.1", port=egress_port))
        assert via.stdout.strip() == "OK", via.stderr
