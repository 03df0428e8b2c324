"""Egress capture in network namespaces: one listener for the VIP range, the original destination recovered.

Through the gateways (the topology of test_gateway_netns):

    nsA  client 198.18.1.10 --- 198.18.1.1 nsGA (site a: capture egress) 198.19.0.1 --+
         route 240.240.0.0/16 via 198.18.1.1                                          wan
    nsB  echo   198.18.2.10 --- 198.18.2.1 nsGB (site b: gateway)         198.19.0.2 --+

A client on the egress's own host (output chain, IPv4 and IPv6) and one on its LAN routed through it
(prerouting chain) reach site b's echo server at the VIP. In a namespace of its own: the rules are
replaced after a SIGKILL, removed on stop, and without nft or CAP_NET_ADMIN the egress says so once and
falls back to per-port listeners that work; a captured client the access policy denies is reset and
counted, as a client of a per-port listener is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.core.policy.access import AccessState, from_document, state_document
from federation.core.records import Endpoint, EndpointPort, Gateway, ServiceExport, ServicePort, ServiceType
from federation.core.view import MeshView
from federation.pki.issuing import save_site
from federation.sources.vm.netlink import VipInterface
from federation.sources.vm.nftables import NftCapture
from federation.sources.vm.settings import VmSettings
from tests.netns.node import dump_view
from tests.netns.nshelp import scratch_netns
from tests.netns.test_gateway_netns import CLIENT, ECHO_PORT, in_ns, node, topology
from tests.pkihelp import Mesh

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
VIP4, VIP6 = "240.240.0.1", "fd6d:6573:6866:6564::1"
VIPS = {"ns/echo": [VIP4, VIP6]}

PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"ping")
    s.shutdown(socket.SHUT_WR)
    got = s.recv(100)
    print("OK" if got == b"ping" else f"GOT {got!r}")
except ConnectionResetError:
    print("RESET")
except ConnectionRefusedError:
    print("REFUSED")
except OSError as exc:
    print("ERROR", exc)
"""


def probe(ns: str, host: str, port: int) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, host, str(port)],
                         capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() or out.stderr.strip()


def tables(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "tables"], capture_output=True,
                         text=True, timeout=20, check=True)
    return [i["table"]["name"] for i in json.loads(out.stdout)["nftables"] if "table" in i]


def listening(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn"], capture_output=True, text=True, timeout=20,
                         check=True)
    return len([line for line in out.stdout.splitlines() if line.strip()])


def ipv6_works(ns: str) -> bool:
    out = in_ns(ns, "import socket; s = socket.socket(socket.AF_INET6); s.bind(('::1', 0)); print('ok')")
    return out.stdout.strip() == "ok"


@contextlib.contextmanager
def capture_node(ns: str, ca: Path, view: Path, host: str, mode: str = "on",
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
                 access: AccessState | None = None) -> Iterator[dict[str, Any]]:
    """tests/netns/node.py `capture` in `ns`: yields its READY document; on exit its STATS under "stats"."""
    state = [json.dumps(state_document(access))] if access is not None else []
    proc = subprocess.Popen(
        [shutil.which("ip") or "ip", "netns", "exec", ns, *prefix, sys.executable, "-m", "tests.netns.node",
         "capture", "a", str(ca), str(view), host, json.dumps(VIPS), mode, *state],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"capture node did not start: {line!r} {proc.communicate(timeout=10)[1]}")
    doc: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    doc["proc"] = proc
    try:
        yield doc
    finally:
        if proc.poll() is None:
            try:  # communicate() closes stdin: the node stops, prints STATS, exits
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate(timeout=10)
            doc["stderr"] = err
            stats = [x for x in out.splitlines() if x.startswith("STATS ")]
            doc["stats"] = json.loads(stats[0].split(" ", 1)[1]) if stats else None
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


def kill(doc: dict[str, Any]) -> None:
    proc: subprocess.Popen[str] = doc["proc"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def two_site_view(tmp: Path) -> Path:
    mesh = Mesh()
    for site in ("a", "b"):
        save_site(tmp / site, mesh.site_ca(site))
    echo = Endpoint(("198.18.2.10",), (EndpointPort("tcp", ECHO_PORT),))
    view = MeshView(
        sites={"a": mesh.site("a", network="net-a", gateways=(Gateway("gw", "198.19.0.1"),)),
               "b": mesh.site("b", network="net-b", gateways=(Gateway("gw", "198.19.0.2"),))},
        exports={("b", "ns", "echo"): ServiceExport("b", "ns", "echo", (ServicePort("tcp", 7),), endpoints=(echo,)),
                 # Headless: clients use endpoint addresses, not a VIP; it keeps a per-port listener.
                 ("b", "ns", "hl"): ServiceExport("b", "ns", "hl", (ServicePort("tcp", 8),), ServiceType.HEADLESS,
                                                  endpoints=(echo,))},
    )  # fmt: skip
    path = tmp / "view.json"
    path.write_text(dump_view(view))
    return path


async def test_clients_on_the_host_and_routed_through_it_reach_the_service_through_one_listener(
        tmp_path: Path) -> None:
    view = two_site_view(tmp_path)
    with topology() as ns, \
            node(ns["b"], "echo", "198.18.2.10", str(ECHO_PORT)), \
            node(ns["gb"], "gateway", "b", str(tmp_path / "b"), str(view), "198.19.0.2"):
        # The VIPs are local addresses on the VIP interface, as the VM source puts them: connect() finds a
        # route, and the output chain redirects before the packet goes anywhere.
        await VipInterface(VmSettings(), netns=ns["ga"]).reconcile({ipaddress.ip_address(VIP4),
                                                                    ipaddress.ip_address(VIP6)})
        subprocess.run(["ip", "-n", ns["a"], "route", "add", "240.240.0.0/16", "via", "198.18.1.1"], check=True,
                       timeout=20)
        with capture_node(ns["ga"], tmp_path / "a", view, "198.18.1.1") as egress:
            assert egress["mode"] == "capture", egress
            # One socket for every VIP; the headless service keeps its per-port listener.
            assert list(egress["listeners"]) == ["ns/hl/tcp"]
            assert listening(ns["ga"]) == 2
            installed = await NftCapture(["240.240.0.0/16"], netns=ns["ga"]).installed()
            assert installed is not None
            assert installed.port == egress["capture"]
            assert tables(ns["ga"]) == ["meshfed"]

            # From the egress's own host (output chain): the client's bytes come back from site b's echo.
            mine = in_ns(ns["ga"], CLIENT.format(host=VIP4, port=7))
            assert mine.stdout.strip() == "OK", mine.stderr
            # From a LAN client that routes the VIP range through the egress host (prerouting chain).
            lan = in_ns(ns["a"], CLIENT.format(host=VIP4, port=7))
            assert lan.stdout.strip() == "OK", lan.stderr
            relayed = 2
            if ipv6_works(ns["ga"]):
                v6 = in_ns(ns["ga"], CLIENT.format(host=VIP6, port=7))
                assert v6.stdout.strip() == "OK", v6.stderr
                relayed += 1
            # A VIP port no service has: accepted by the capture listener, then reset.
            assert probe(ns["ga"], VIP4, 9) == "RESET"
            # The capture port takes redirected connections only.
            assert probe(ns["ga"], "198.18.1.1", egress["capture"]) == "REFUSED"
            assert probe(ns["a"], "198.18.1.1", egress["capture"]) == "REFUSED"
        assert egress["stats"] == {"relayed": relayed, "unknown_destination": 1}, egress
        # Stopped: the table is gone, and nothing listens any more.
        assert tables(ns["ga"]) == []
        assert listening(ns["ga"]) == 0


async def test_a_captured_client_the_access_policy_denies_is_reset_and_counted(
        one_host: tuple[str, Path], tmp_path: Path) -> None:
    ns, view = one_host
    await VipInterface(VmSettings(), netns=ns).reconcile({ipaddress.ip_address(VIP4)})
    lockdown = from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy",
                              "metadata": {"namespace": "ns", "name": "echo"},
                              "spec": {"rules": [{"name": "not-a", "action": "Deny", "from": {"sites": ["a"]}}]}})
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1", access=AccessState({("ns", "echo"): lockdown})) as eg:
        assert eg["mode"] == "capture", eg
        assert probe(ns, VIP4, 7) == "RESET"  # before any route: the direct one to the echo server included
        assert probe(ns, VIP4, 9) == "RESET"  # no service port at all: reset too, and counted apart
    assert eg["stats"] == {"denied": 1, "unknown_destination": 1}, eg
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1") as open_:  # no policy: the same client is relayed
        assert probe(ns, VIP4, 7) == "OK"
    assert open_["stats"] == {"relayed": 1}, open_


@pytest.fixture
def one_host(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A namespace with an echo server on loopback exported by the egress's own site (a direct route)."""
    with scratch_netns("mfcap", loopback_up=True) as ns:
        mesh = Mesh()
        save_site(tmp_path / "a", mesh.site_ca("a"))
        with node(ns, "echo", "127.0.0.1", "0") as echo_port:
            echo = Endpoint(("127.0.0.1",), (EndpointPort("tcp", int(echo_port)),))
            view = MeshView(sites={"a": mesh.site("a", network="net-a")},
                            exports={("a", "ns", "echo"): ServiceExport("a", "ns", "echo", (ServicePort("tcp", 7),),
                                                                        endpoints=(echo,))})
            path = tmp_path / "view.json"
            path.write_text(dump_view(view))
            yield ns, path


async def test_a_start_after_sigkill_replaces_the_rules_and_a_stop_removes_them(
        one_host: tuple[str, Path], tmp_path: Path) -> None:
    ns, view = one_host
    await VipInterface(VmSettings(), netns=ns).reconcile({ipaddress.ip_address(VIP4)})
    rules = NftCapture(["240.240.0.0/16"], netns=ns)
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1") as first:
        assert probe(ns, VIP4, 7) == "OK"
        before = await rules.installed()
        kill(first)
    # Killed: its rules are still there, sending the VIPs to a port nobody listens on.
    left = await rules.installed()
    assert left == before
    assert left is not None
    assert left.port == first["capture"]
    assert probe(ns, VIP4, 7) == "REFUSED"
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1") as second:
        now = await rules.installed()
        assert now is not None
        assert now.port == second["capture"] != first["capture"]
        assert (now.rules, now.chains) == (left.rules, left.chains)  # replaced, nothing twice
        assert tables(ns) == ["meshfed"]
        assert probe(ns, VIP4, 7) == "OK"
    assert await rules.installed() is None
    assert tables(ns) == []

    # A start in listener mode after a SIGKILL removes the leftovers too (they would bypass its listeners).
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1") as third:
        kill(third)
    assert tables(ns) == ["meshfed"]
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1", mode="off") as off:
        assert off["mode"] == "listeners"
        assert tables(ns) == []
        assert probe(ns, "127.0.0.1", off["listeners"]["ns/echo/tcp"]) == "OK"


def test_without_nft_it_says_so_once_and_the_per_port_listeners_work(one_host: tuple[str, Path],
                                                                     tmp_path: Path) -> None:
    ns, view = one_host
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1", mode="auto", env=env) as egress:
        assert egress["mode"] == "listeners"
        assert "nft command is not installed" in egress["reason"]
        assert probe(ns, "127.0.0.1", egress["listeners"]["ns/echo/tcp"]) == "OK"
    assert egress["stderr"].count("egress capture is off") == 1, egress["stderr"]
    assert "nft command is not installed" in egress["stderr"]
    # "on" refuses to start instead.
    out = subprocess.run(
        [shutil.which("ip") or "ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.node", "capture", "a",
         str(tmp_path / "a"), str(view), "127.0.0.1", json.dumps(VIPS), "on"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "vm.egress_capture: on, but capture is impossible: the nft command is not installed" in out.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop CAP_NET_ADMIN")
def test_without_cap_net_admin_it_says_so_once_and_the_per_port_listeners_work(one_host: tuple[str, Path],
                                                                               tmp_path: Path) -> None:
    ns, view = one_host
    drop = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    with capture_node(ns, tmp_path / "a", view, "127.0.0.1", mode="auto", prefix=drop) as egress:
        assert egress["mode"] == "listeners"
        assert egress["reason"] == "no permission to change netfilter rules (needs root or CAP_NET_ADMIN)"
        assert probe(ns, "127.0.0.1", egress["listeners"]["ns/echo/tcp"]) == "OK"
    assert egress["stderr"].count("egress capture is off") == 1, egress["stderr"]
    assert tables(ns) == []
