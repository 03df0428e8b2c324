"""Agents restarted while etcd has no quorum serve the registry view they saved: DNS answers, the egress
relays, the gateway admits the peer it knew; readiness says what is degraded; nothing is withdrawn, and a
returning quorum is seen within seconds."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from federation.agent.root import SNAPSHOT_FILE
from federation.core.keys import Keys
from federation.registry.embedded import EtcdCluster, free_port
from federation.registry.snapshot import decode
from tests.integration.agentproc import AgentProcess, dns_a, write_config
from tests.integration.test_agent import wait_for
from tests.integration.test_agent_dataplane import site_ca, web_server  # noqa: F401 - the fixture

KEYS = Keys()
WEB = "web.shop.svc.clusterset.local"


def snapshot_has(state_dir: Path, *sites: str) -> bool:
    """True once the agent's snapshot holds the site records of `sites` and a VIP for shop/web."""
    try:
        saved = decode((state_dir / SNAPSHOT_FILE).read_bytes(), KEYS.root(), 1 << 26)
    except (OSError, ValueError):
        return False
    keys = set(saved.listing)
    return all(KEYS.site(s) in keys for s in sites) and any("/vips/" in k and k.endswith("/web") for k in keys)


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_a_restart_during_quorum_loss_serves_the_saved_view(etcd_cluster: EtcdCluster, tmp_path: Path,
                                                             web_server: int) -> None:  # noqa: F811
    endpoints = etcd_cluster.endpoints
    agents: dict[str, AgentProcess] = {}
    for site, exports in (("east", [{"namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 80}],
                                     "endpoints": [{"addresses": ["127.0.0.1"], "ports": {"http": web_server}}]}]),
                          ("west", [])):
        # A fixed gateway port: the peer's saved view names it, and no new site record can be written now.
        gateway = {"ca_dir": str(site_ca(tmp_path, site)), "listen_address": "127.0.0.1", "listen_port": free_port()}
        cfg = write_config(tmp_path / f"{site}.yaml", site, endpoints, tmp_path / site, exports, ttl=4,
                           gateway=gateway)
        agents[site] = AgentProcess(cfg, tmp_path / site).start()
    east, west = agents["east"], agents["west"]
    try:
        for a in agents.values():
            a.wait_ready(30)
        vip = []
        wait_for(lambda: (vip := dns_a(west, WEB)) != [], 30, "web's VIP in west's DNS")  # noqa: F841
        vip = dns_a(west, WEB)

        def via_egress() -> tuple[int, bytes]:
            imports = json.loads(west.get("/status")[1])["imports"]
            listener = next(i["listeners"]["http"] for i in imports if i["service"] == "shop/web")
            return get(f"http://{listener}/")

        wait_for(lambda: {s["name"] for s in east.registry()["sites"]} == {"east", "west"}, 20, "east knows west")
        wait_for(lambda: any(i["listeners"] for i in json.loads(west.get("/status")[1])["imports"]), 20,
                 "west's egress listener")
        assert via_egress() == (200, b"hello from east\n")
        for site, a in agents.items():
            wait_for(lambda a=a: snapshot_has(a.state_dir, "east", "west"), 30, f"{site}'s registry snapshot")
            assert (a.state_dir / SNAPSHOT_FILE).stat().st_mode & 0o777 == 0o600

        leader = etcd_cluster.leader()
        lost = [leader, (leader + 1) % 3]
        for i in lost:
            etcd_cluster.members[i].kill()  # one member left: no quorum
        for a in agents.values():
            assert a.stop() == 0, a.log.read_text()[-5000:]  # stopping never waits for etcd
            a.start()

        for site, a in agents.items():
            wait_for(lambda a=a: a.get("/readyz")[0] == 200, 30, f"{site} ready on its saved view")
            body = a.get("/readyz")[1]
            assert "degraded: registry: serving a view restored from disk" in body, body
            wait_for(lambda a=a: "mirror cannot reach etcd" in a.get("/readyz")[1], 15, f"{site}'s readiness detail")
        assert dns_a(west, WEB) == vip  # DNS answers what it knew
        wait_for(lambda: any(i["listeners"] for i in json.loads(west.get("/status")[1])["imports"]), 20,
                 "west's egress listener on the saved view")
        # west's egress opens a new tunnel to east's restarted gateway, which admits west: a site it knew.
        assert via_egress() == (200, b"hello from east\n")
        status = json.loads(west.get("/status")[1])
        assert status["registry"]["view"] == "restored"
        assert status["registry"]["stale"] is True
        clients = {c["client"]: c for c in status["registry"]["clients"]}
        assert clients["mirror"]["reachable"] is False
        _, metrics = west.get("/metrics")
        assert 'meshfed_registry_reachable{client="mirror"} 0.0' in metrics
        assert "meshfed_registry_stale 1.0" in metrics

        for i in lost:
            etcd_cluster.restart(i)
        back = time.monotonic()
        for site, a in agents.items():
            wait_for(lambda a=a: json.loads(a.get("/status")[1])["registry"]["view"] == "live", 30,
                     f"{site}'s first real listing after the quorum returned")
        took = time.monotonic() - back
        assert took < 10, f"the returning quorum took {took:.1f}s to be seen"
        assert dns_a(west, WEB) == vip
        assert {s["name"] for s in east.registry()["sites"]} == {"east", "west"}  # nothing was withdrawn
        assert via_egress() == (200, b"hello from east\n")
        wait_for(lambda: "degraded" not in west.get("/readyz")[1], 20, "readiness without the degraded lines")
    finally:
        errors = []
        for a in agents.values():
            try:
                a.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, "\n".join(errors)
