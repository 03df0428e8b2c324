"""The hybrid end-to-end test: the demo's topology in network namespaces, every step asserted.

Three sites on two networks with real agents, a real etcd, real mTLS gateways, real DNS (meshfed
resolve and dig) and curl as the client. Also: DNS agrees across sites, a killed agent's service
leaves the others' DNS within the lease TTL and comes back after a restart, and an etcd outage of
10 s changes nothing a client can see.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.devkit.lab import namespaces
from federation.devkit.stage import LEASE_TTL, ZONE, Demo

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    demo = Demo(tmp_path_factory.mktemp("hybrid"), netns=True, out=io.StringIO(), prefix=f"mfe{os.getpid() % 1000}",
                lan_discovery="edge", wan=None)  # a wan of its own: a demo may run beside it
    try:
        demo.up()
        yield demo
    finally:
        demo.down()
        assert not [ns for ns in namespaces() if ns.startswith(demo.lab.prefix)], "namespaces left behind"
        assert not list(Path("/etc/netns").glob(f"{demo.lab.prefix}-*")), "resolver files left in /etc/netns"


def capture_port(demo: Demo, site: str) -> int:
    """The port the site's nft capture rules redirect the VIP range to (each rule names the same one)."""
    doc = json.loads(demo.lab.run(site, ["nft", "-j", "list", "table", "inet", "meshfed"]).stdout)
    ports = {e["redirect"]["port"] for i in doc["nftables"] if "rule" in i for e in i["rule"]["expr"]
             if "redirect" in e}
    assert len(ports) == 1, doc
    return int(ports.pop())


def dig(demo: Demo, site: str, name: str, rtype: str = "A") -> list[str]:
    res = demo.lab.run(site, ["dig", "+short", "+time=2", "+tries=1", "@127.0.0.1", name, rtype])
    return sorted(line for line in res.stdout.split("\n") if line)


def test_registry_lists_every_site_and_service(mesh: Demo) -> None:
    mesh.wait_for(lambda: "shop/cart" in mesh.registry_ls().stdout and "shop/api" in mesh.registry_ls().stdout,
                  30, "every export")
    out = mesh.registry_ls().stdout
    for line in ("east  net-1    demo/zone-a  kubernetes", "edge  net-1", "west  net-2",
                 "shop/web   ClusterSetIP  http/80/TCP  east,edge  2/2"):
        assert line in out


def test_dns_answers_agree_across_sites(mesh: Demo) -> None:
    for service in ("web", "api", "cart"):
        name = f"{service}.shop.svc.{ZONE}"
        mesh.wait_for(lambda name=name: all(dig(mesh, s, name) for s in mesh.sites), 30, f"{name} everywhere")
        answers = {site: dig(mesh, site, name) for site in mesh.sites}
        # VM sites agree on the mesh-wide VIP; the Kubernetes site answers its ServiceImport's ClusterIP.
        assert answers["west"] == answers["edge"], answers
        assert answers["west"][0].startswith("240.240."), answers
        assert answers["east"][0].startswith("10.96."), answers
    res = mesh.resolve("west", f"_http._tcp.web.shop.svc.{ZONE}", "SRV")
    assert "SRV" in res.stdout
    assert dig(mesh, "east", f"dns-version.{ZONE}", "TXT") == ['"1.0.0"']
    assert dig(mesh, "east", f"nothing.shop.svc.{ZONE}") == []


def test_west_reaches_east_through_the_gateways_and_not_directly(mesh: Demo) -> None:
    ok, body, _ = mesh.wait_curl("west", f"http://web.shop.svc.{ZONE}/")
    assert ok, body
    assert body.startswith("web served by east")
    ok, body, _ = mesh.curl("west", f"http://{mesh.sites['east'].address}:8080/", timeout=2)
    assert not ok  # the networks really are separate
    # The VM agents run as root with nft: one capture listener takes every VIP, no socket per service.
    egress = mesh.status("west")["egress"]
    assert (egress["mode"], egress["listeners"], egress["table"]) == ("capture", 0, "inet meshfed"), egress
    assert capture_port(mesh, "west") == int(egress["capture"].rsplit(":", 1)[1])


def test_edge_reaches_east_directly_on_the_same_network(mesh: Demo) -> None:
    ok, body, _ = mesh.wait_curl("edge", f"http://api.shop.svc.{ZONE}/")
    assert ok, body
    assert body.startswith("api served by east")
    [imp] = [i for i in mesh.status("edge")["imports"] if i["service"] == "shop/api"]
    assert imp["sites"][0]["via"] == "direct"
    ok, body, _ = mesh.curl("edge", f"http://{mesh.sites['east'].address}:8081/", timeout=2)
    assert ok  # same network: the endpoint is reachable without any gateway


def test_failover_to_another_site_when_the_endpoint_stops(mesh: Demo) -> None:
    url = f"http://web.shop.svc.{ZONE}/"
    mesh.stop_sample("east", "web")
    try:
        ok, body, _ = mesh.curl("west", url)
        assert ok, body
        assert body.startswith("web served by edge")  # refused behind east's gateway: the egress tried edge
        mesh.set_endpoint_ready("east", "web", ready=False)  # what the EndpointSlice controller does
        mesh.wait_for(lambda: _ready(mesh, "west", "shop/web", "east") == 0, 20, "east's slice update")
    finally:
        mesh.start_sample("east", "web")
        mesh.set_endpoint_ready("east", "web", ready=True)
    mesh.wait_for(lambda: _ready(mesh, "west", "shop/web", "east") == 1, 20, "east's endpoint back")
    # West's active health took east's web out while it refused; it is back after its healthy threshold of
    # good probes (gateway.serviceprobes), and then east, the nearer site, serves again.
    mesh.wait_for(lambda: mesh.curl("west", url)[1].startswith("web served by east"), 20, "west to route to east")


def test_killed_agent_disappears_from_dns_within_the_ttl_and_returns(mesh: Demo) -> None:
    name = f"cart.shop.svc.{ZONE}"
    before = dig(mesh, "edge", name)
    assert before
    mesh.kill_agent("west")
    # The lease expires at most LEASE_TTL after the kill (the last keepalive came before it). The margin:
    # etcd revokes expired leases every 0.5 s, the watch and the DNS update take milliseconds, one poll
    # round (two digs through `ip netns exec`, 0.1 s apart) a few hundred; 2 s covers a loaded machine.
    margin = 2.0
    gone = mesh.wait_for(lambda: dig(mesh, "edge", name) == [] and dig(mesh, "east", name) == [], LEASE_TTL + 10,
                         "west's cart to leave the other sites' DNS")
    assert gone <= LEASE_TTL + margin, f"gone from DNS {gone:.1f}s after the kill; the lease TTL is {LEASE_TTL}s"
    mesh.start_agent("west")
    mesh.wait_ready("west")
    mesh.wait_for(lambda: dig(mesh, "edge", name) == before, 30, "west's cart back with the same VIP")
    mesh.wait_for(lambda: bool(dig(mesh, "east", name)), 30, "west's cart back in the Kubernetes site")
    _, body, _ = mesh.wait_curl("edge", f"http://{name}/")
    assert body.startswith("cart served by west"), body

    # The restarted VM agent converged: in capture mode meshfed0 holds one address per captured range (a route
    # to the whole range; the nft rules redirect it): the VIP range and the range for headless endpoints of
    # other networks (vm.endpoint_ranges), not one address per VIP: nothing twice, nothing left over from the
    # killed instance, and every service of the mesh (its own cart included) still answers a VIP in it.
    services = [f"{s}.shop.svc.{ZONE}" for s in ("web", "api", "cart")]

    def converged() -> bool:
        want = {a for n in services for a in dig(mesh, "west", n)}
        addrs = mesh.lab.run("west", ["ip", "-4", "-o", "addr", "show", "dev", "meshfed0"]).stdout.split("\n")
        have = [line.split()[3] for line in addrs if line.strip()]
        ranges = ["240.240.0.1/16", "240.241.0.1/16"]
        return len(want) == 3 and all(a.startswith("240.240.") for a in want) and sorted(have) == ranges

    mesh.wait_for(converged, 20, "west's VIPs to converge")
    # The SIGKILLed agent's capture rules were replaced, not doubled: one table, pointing at the new listener.
    tables = json.loads(mesh.lab.run("west", ["nft", "-j", "list", "tables"]).stdout)["nftables"]
    assert [t["table"]["name"] for t in tables if "table" in t] == ["meshfed"]
    assert capture_port(mesh, "west") == int(mesh.status("west")["egress"]["capture"].rsplit(":", 1)[1])
    _, body, _ = mesh.wait_curl("west", f"http://{name}/")  # its own service, at its VIP
    assert body.startswith("cart served by west"), body


def test_etcd_outage_of_ten_seconds_changes_nothing_clients_see(mesh: Demo) -> None:
    assert mesh.etcd is not None
    url = f"http://web.shop.svc.{ZONE}/"
    names = [f"{s}.shop.svc.{ZONE}" for s in ("web", "api", "cart")]
    # A steady state first: an import re-created by an earlier test gets its new ClusterIP on east a moment later.
    mesh.wait_for(lambda: all(dig(mesh, site, n) for site in mesh.sites for n in names), 30, "every name everywhere")
    before = {(site, n): dig(mesh, site, n) for site in mesh.sites for n in names}
    # ...and west's probes settled: a restarted west (the test before) routes to east once it probed it ALIVE.
    mesh.wait_for(lambda: mesh.curl("west", url)[1].startswith("web served by east"), 30, "west to route web to east")
    mesh.etcd.stop()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ok, body, _ = mesh.curl("west", url)
            assert ok, f"request failed during the etcd outage: {body}"
            assert body.startswith("web served by east"), body
            assert dig(mesh, "edge", names[2]) == before[("edge", names[2])]
            time.sleep(1)
        assert mesh.status("west")["registry"]["stale"] is True
    finally:
        mesh.etcd.start()
    mesh.wait_for(lambda: mesh.status("west")["registry"]["stale"] is False, 30, "west to reconnect")
    after = {(site, n): dig(mesh, site, n) for site in mesh.sites for n in names}
    assert after == before
    ok, body, _ = mesh.curl("west", url)
    assert ok, body


def _ready(mesh: Demo, site: str, service: str, exporter: str) -> int:
    for imp in mesh.status(site)["imports"]:
        if imp["service"] == service:
            return sum(s["ready"] for s in imp["sites"] if s["site"] == exporter)
    return -1


def test_kubernetes_site_imports_a_vm_service_as_native_objects(mesh: Demo) -> None:
    """east (Kubernetes) gets a ServiceImport and a derived Service for west's cart; the derived
    EndpointSlice points at east's egress listener, and a pod connecting there (as kube-proxy would send
    it) reaches west's VM through the gateways."""
    import json as _json

    def get(path: str) -> dict:  # type: ignore[type-arg]
        res = mesh.kubectl("east", "get", "--raw", path)  # TLS and the token, from east's kubeconfig
        assert res.returncode == 0, res.stderr
        return dict(_json.loads(res.stdout))

    def cart_slice() -> dict | None:  # type: ignore[type-arg]
        for item in get("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices")["items"]:
            if item["metadata"].get("labels", {}).get("kubernetes.io/service-name", "").startswith("cart-mf-"):
                return dict(item)
        return None

    mesh.wait_for(lambda: cart_slice() is not None, 30, "the derived EndpointSlice for cart")
    imports = {i["metadata"]["name"]: i for i in get("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports")["items"]}
    assert imports["cart"]["spec"]["type"] == "ClusterSetIP"
    assert imports["cart"]["spec"]["ips"][0].startswith("10.96.")
    # An import that came and went (the agent-restart test) gets a new egress port; the slice follows it.
    deadline = time.monotonic() + 30
    while True:
        slice_ = cart_slice()
        assert slice_ is not None
        address = slice_["endpoints"][0]["addresses"][0]
        port = slice_["ports"][0]["port"]
        assert address == mesh.sites["east"].address  # east's egress listener, not west's unreachable endpoint
        ok, body, _ = mesh.curl("east", f"http://{address}:{port}/")
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ok, body
    assert body.startswith("cart served by west")
    status = get("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceexports/web")["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Valid"] == "True"


def test_lan_service_announced_by_mdns_is_reachable_from_another_network(mesh: Demo) -> None:
    """A device on edge's LAN (net-1) announces itself with mDNS; edge exports it; west, on net-2, reaches
    it by its federated name through the gateways; its goodbye withdraws it everywhere."""
    import subprocess as sp
    import sys

    lan_ip = mesh.sites["east"].address  # another host on net-1: not edge itself
    mesh.lab.popen("east", [sys.executable, "-m", "federation.devkit.sample", "--listen", f"{lan_ip}:9631",
                            "--service", "printer", "--site", "the-lan"], log=mesh.state / "printer.log")
    announcer = mesh.lab.popen("east", [sys.executable, "-m", "tests.netns.mdnsnode", "_http._tcp.local.",
                                        "Office Printer", lan_ip, "9631", "120"], stdin=sp.PIPE,
                               log=mesh.state / "mdns.log")
    name = f"office-printer.lan.svc.{ZONE}"
    try:
        mesh.wait_for(lambda: bool(dig(mesh, "west", name)), 30, "the LAN printer in west's DNS")
        ok, body, _ = mesh.wait_curl("west", f"http://{name}:9631/")
        assert ok, body
        assert body.startswith("printer served by the-lan")
    finally:
        assert announcer.stdin is not None
        announcer.stdin.close()  # the announcer says goodbye (TTL 0) and exits
        announcer.wait(15)
    mesh.wait_for(lambda: dig(mesh, "west", name) == [], 30, "the printer to be withdrawn")
