"""A headless service across networks, by hostname: the remote pods' addresses cannot be routed from the asker.

    nsA  client 198.18.1.10 --- 198.18.1.1 nsGA (site a: the agent's data plane, meshfed0) 198.19.0.1 --+
         route 240.241.0.0/16 via 198.18.1.1                                                           wan
    nsB  db-0 198.18.2.10, db-1 198.18.2.11 --- 198.18.2.1 nsGB (site b: gateway)         198.19.0.2 --+

Site b exports the headless `db` with two StatefulSet pods, each a sample service that says who it is.
The client in nsA asks site a's DNS (dnspython) for `db-N.b.db.shop.svc.clusterset.local`, gets the
address site a gave that endpoint, connects to it by name, and must reach exactly that pod; neither the
client nor site a's host can reach the pods' own addresses.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.core.records import Endpoint, Gateway, ServiceExport, ServicePort, ServiceType
from federation.core.view import MeshView
from federation.pki.issuing import save_site
from tests.netns.node import dump_view
from tests.netns.nshelp import stop_by_stdin
from tests.netns.test_gateway_netns import ROOT, in_ns, node, sh, topology
from tests.pkihelp import Mesh

pytestmark = pytest.mark.netns

PODS = {"db-0": "198.18.2.10", "db-1": "198.18.2.11"}
DB_PORT = 5432
ZONE = "shop.svc.clusterset.local"

RESOLVE_AND_GET = """
import socket, sys
import dns.message, dns.query, dns.rcode, dns.rdatatype
server, port, name, rtype = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
reply = dns.query.udp(dns.message.make_query(name, rtype), server, port=port, timeout=5)
answers = sorted(r.to_text() for rrset in reply.answer for r in rrset)
print("ANSWER", " ".join(answers) or "-", dns.rcode.to_text(reply.rcode()))
if rtype == "A" and len(answers) == 1:
    s = socket.create_connection((answers[0], {port}), timeout=5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    print("BODY", got.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip())
""".replace("{port}", str(DB_PORT))


def ask(ns: str, dns_port: int, name: str, rtype: str = "A") -> dict[str, str]:
    out = in_ns(ns, RESOLVE_AND_GET.replace("sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]",
                                            f"'198.18.1.1', {dns_port}, {name!r}, {rtype!r}"))
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    lines["stderr"] = out.stderr
    return lines


@contextlib.contextmanager
def sample(ns: str, host: str, name: str) -> Iterator[None]:
    """The devkit sample service on host:DB_PORT in `ns`, answering "db served by b (<host>:5432)"."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "federation.devkit.sample",
                             "--listen", f"{host}:{DB_PORT}", "--service", name, "--site", "b"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("sample "), (line, proc.stderr.read() if proc.stderr else "")
        yield
    finally:
        proc.terminate()
        stop_by_stdin(proc)


@contextlib.contextmanager
def asking_site(ns: str, ca: Path, view_file: Path, state: Path, capture: str) -> Iterator[dict[str, object]]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.headlessnode", "a", "net-a", str(ca),
         str(view_file), "198.18.1.1", "198.19.0.1", str(state), capture],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.kill()
            raise AssertionError(f"site a did not start: {line!r} {proc.communicate(timeout=10)[1]}")
        yield json.loads(line.split(" ", 1)[1])
    finally:
        stop_by_stdin(proc)


@pytest.mark.parametrize("capture", ["off", "on"])
def test_a_remote_statefulset_pod_is_reached_by_its_hostname_through_the_gateways(tmp_path: Path, capture: str) -> None:
    """With the egress in per-port listener mode (a listener at each endpoint's address) and in capture mode
    (the endpoint range is redirected to the one capture listener, like the VIP range: no socket each)."""
    if capture == "on" and not shutil.which("nft"):
        pytest.skip("nft is not installed (Debian package nftables)")
    mesh = Mesh()
    for s in ("a", "b"):
        save_site(tmp_path / s, mesh.site_ca(s))
    view = MeshView(
        sites={
            "a": mesh.site("a", network="net-a", gateways=(Gateway("gw", "198.19.0.1"),)),
            "b": mesh.site("b", network="net-b", gateways=(Gateway("gw", "198.19.0.2"),)),
        },
        exports={("b", "shop", "db"): ServiceExport(
            "b", "shop", "db", (ServicePort("tcp", DB_PORT),), type=ServiceType.HEADLESS,
            endpoints=tuple(Endpoint((ip,), hostname=host) for host, ip in PODS.items()),
        )},
    )  # fmt: skip
    view_file = tmp_path / "view.json"
    view_file.write_text(dump_view(view))
    with topology() as ns:
        tag = ns["a"].split("-")[0]
        sh("ip", "-n", ns["b"], "addr", "add", "198.18.2.11/24", "dev", f"{tag}b0")
        sh("ip", "-n", ns["a"], "route", "add", "240.241.0.0/16", "via", "198.18.1.1")
        with sample(ns["b"], PODS["db-0"], "db"), sample(ns["b"], PODS["db-1"], "db"), \
                node(ns["gb"], "gateway", "b", str(tmp_path / "b"), str(view_file), "198.19.0.2"), \
                asking_site(ns["ga"], tmp_path / "a", view_file, tmp_path / "state", capture) as ready:
            dns_port = int(ready["dns"])  # type: ignore[call-overload]
            assert ready["mode"] == ("capture" if capture == "on" else "listeners"), ready
            # The pods' own addresses are not routable from the asking site's network, nor from its host.
            for where in (ns["a"], ns["ga"]):
                direct = in_ns(where, f"import socket; socket.create_connection(('{PODS['db-0']}', {DB_PORT}), 3)")
                assert direct.returncode != 0, f"{where} reached a remote pod directly"
            seen: dict[str, str] = {}
            # An order that round robin over the two pods would not give: each name reaches its own pod.
            for host in ("db-1", "db-1", "db-0", "db-1", "db-0", "db-0"):
                got = ask(ns["a"], dns_port, f"{host}.b.db.{ZONE}")
                address, _, rcode = got["ANSWER"].partition(" ")
                assert rcode == "NOERROR", got
                assert address.startswith("240.241."), f"{host}: {address} is not site a's address for it"
                assert got.get("BODY") == f"db served by b ({PODS[host]}:{DB_PORT})", got
                assert seen.setdefault(host, address) == address, (host, address, seen)
            assert len(set(seen.values())) == len(PODS), seen
            listening = subprocess.run(["ip", "netns", "exec", ns["ga"], "ss", "-ltnH"], capture_output=True,
                                       text=True, timeout=20, check=True).stdout
            on_db = [line for line in listening.splitlines() if f":{DB_PORT} " in line]
            assert len(on_db) == (0 if capture == "on" else len(PODS)), listening
            # Capture mode: the headless service has no per-port loopback listener either (per-port mode: one).
            assert ready["per_port"] == (0 if capture == "on" else 1), ready
            # The service name answers the same per-endpoint addresses, and SRV names each pod.
            bare = ask(ns["a"], dns_port, f"db.{ZONE}")
            assert sorted(bare["ANSWER"].rsplit(" ", 1)[0].split()) == sorted(seen.values()), bare
            srv = ask(ns["a"], dns_port, f"db.{ZONE}", "SRV")
            for host in PODS:
                assert f"{DB_PORT} {host}.b.db.{ZONE}." in srv["ANSWER"], srv
