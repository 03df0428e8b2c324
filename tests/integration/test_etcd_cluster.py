"""Agents against a real 3-member etcd cluster: kill the first listed member, the leader and a follower in turn.

Two agents as real processes, every client listing the three members in the same order: east is a
Kubernetes site (the stand-in API server) exporting shop/web, west a VM site (DNS, VIP allocation)
exporting shop/db. With each member down in turn, every part that uses etcd has work to do at once:
east's Kubernetes source exports a new ServiceExport (its publisher), west's DNS answers it with a
VIP (west's mirror and VIP allocator), west exports a new service by a reload and east's Kubernetes
sync imports it (west's publisher, east's mirror), and a traffic policy written now reaches a policy
reader. Nothing a client sees changes meanwhile: the same VIPs answer, /readyz stays 200, no lease
expires and no site is written again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from federation.core.errors import RegistryUnavailable
from federation.core.keys import Keys
from federation.core.policy.codec import from_document
from federation.devkit.apiserver import DevApiServer
from federation.devkit.objects import endpoint, endpointslice, service, serviceexport
from federation.registry.embedded import EtcdCluster
from federation.registry.etcd import EtcdClient
from federation.registry.policies import PolicyReader, PolicyStore
from tests.integration.agentproc import AgentProcess, dns_a, web_export, write_config

KEYS = Keys()
ZONE = "svc.clusterset.local"


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` (blocking: run in a thread, the API server runs on this loop) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def retried(call: Callable[[], Any], timeout: float, what: str) -> Any:
    """`await call()` until it does not raise RegistryUnavailable, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except RegistryUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def policy(name: str) -> Any:
    return from_document({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                          "metadata": {"namespace": "shop", "name": name}, "spec": {"timeouts": {"idle": "1h"}}})


def ready(agent: AgentProcess) -> bool:
    return agent.get("/readyz")[0] == 200


async def test_every_part_fails_over_when_a_member_dies_and_clients_see_no_change(
        etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    endpoints = etcd_cluster.endpoints
    async with DevApiServer() as api:
        api.put(service())
        api.put(endpointslice(endpoints=[endpoint("10.244.1.5")]))
        api.put(serviceexport())
        kube = {"enabled": True, "kubeconfig": str(api.kubeconfig(tmp_path / "kubeconfig")), "backoff_base": 0.05,
                "backoff_cap": 0.5, "reconcile_delay": 0.01}
        east_cfg = write_config(tmp_path / "east.yaml", "east", endpoints, tmp_path / "east", [], ttl=4,
                                kubernetes=kube)
        data = yaml.safe_load(east_cfg.read_text())
        data["site"]["kind"] = "kubernetes"
        east_cfg.write_text(yaml.safe_dump(data))
        west_cfg = write_config(tmp_path / "west.yaml", "west", endpoints, tmp_path / "west",
                                [web_export("db", 5432, "127.0.0.20")], ttl=4)
        east = AgentProcess(east_cfg, tmp_path / "east").start()
        west = AgentProcess(west_cfg, tmp_path / "west").start()
        client = EtcdClient(endpoints, timeout=2)
        reader = PolicyReader(EtcdClient(endpoints, timeout=2), KEYS)
        policies = asyncio.create_task(reader.run(), name="policy-reader")
        store = PolicyStore(client, KEYS)
        try:
            await asyncio.to_thread(east.wait_ready, 30)
            await asyncio.to_thread(west.wait_ready, 30)
            web = await until(lambda: dns_a(west, f"web.shop.{ZONE}"), 30, "web's VIP in west's DNS")
            db = await until(lambda: dns_a(west, f"db.shop.{ZONE}"), 30, "db's VIP in west's DNS")
            await until(lambda: api.get("serviceimports", "shop", "db"), 30, "east importing west's db")

            async def sites() -> dict[str, tuple[int, int]]:
                kvs, _ = await client.get_prefix(KEYS.sites())
                return {k: (v.create_revision, v.lease) for k, v in kvs.items()
                        if k in (KEYS.site("east"), KEYS.site("west"))}

            registered = await sites()
            assert len(registered) == 2

            for case in ("first", "leader", "follower"):
                leader = etcd_cluster.leader()
                victim = {"first": 0, "leader": leader,
                          "follower": next(i for i in (2, 1) if i != leader)}[case]
                etcd_cluster.members[victim].kill()
                started = time.monotonic()
                try:
                    api.put(service(name=f"api-{case}"))
                    api.put(endpointslice(service_name=f"api-{case}", endpoints=[endpoint("10.244.1.9")]))
                    api.put(serviceexport(name=f"api-{case}"))
                    data = yaml.safe_load(west_cfg.read_text())
                    data["exports"].append(web_export(f"cache-{case}", 6379, "127.0.0.21"))
                    west_cfg.write_text(yaml.safe_dump(data))
                    assert west.proc is not None
                    west.proc.send_signal(signal.SIGHUP)
                    # The test's own write, like an operator's `meshfed policy apply`, may land in the
                    # election that follows a leader's death and fail; the agents must not notice either way.
                    await retried(lambda c=case: store.apply(policy(f"web-{c}")), 20, f"applying web-{case}")

                    vip = await until(lambda c=case: dns_a(west, f"api-{c}.shop.{ZONE}"), 20,
                                      f"east's new export answered with a VIP in west's DNS ({case} member down)")
                    assert vip[0].startswith("240.240.")
                    await until(lambda c=case: api.get("serviceimports", "shop", f"cache-{c}"), 20,
                                f"west's reloaded export imported by east's Kubernetes sync ({case} member down)")
                    await until(lambda c=case: ("shop", f"web-{c}") in reader.policies.get(), 20,
                                f"the policy reaching the reader ({case} member down)")
                    took = time.monotonic() - started
                    # What clients see did not change: the same VIPs, ready agents, no site written again.
                    assert dns_a(west, f"web.shop.{ZONE}") == web
                    assert dns_a(west, f"db.shop.{ZONE}") == db
                    assert await asyncio.to_thread(ready, east)
                    assert await asyncio.to_thread(ready, west)
                    assert await sites() == registered, f"a site was registered again ({case} member down)"
                    assert took < 20
                finally:
                    await asyncio.to_thread(etcd_cluster.restart, victim)
                status = json.loads((await asyncio.to_thread(west.get, "/status"))[1])
                assert not status["registry"]["stale"]

            # Every client moved at least once (the first listed member, where all of them started, died).
            _, metrics = await asyncio.to_thread(west.get, "/metrics")
            moved = {line.split('"')[1] for line in metrics.splitlines()
                     if line.startswith("meshfed_registry_failovers_total{") and not line.endswith(" 0.0")}
            assert {"mirror", "publisher", "vip-allocator", "access-policies"} <= moved, moved
        finally:
            policies.cancel()
            await asyncio.gather(policies, return_exceptions=True)
            await client.close()
            codes = [await asyncio.to_thread(a.stop) for a in (east, west)]
            assert codes == [0, 0], (east.log.read_text()[-3000:], west.log.read_text()[-3000:])
