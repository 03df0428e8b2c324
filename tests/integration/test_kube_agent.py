"""`meshfed agent` with the kubernetes section, as a real process, against the development API server and a real etcd."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from federation.devkit.apiserver import DevApiServer
from federation.devkit.objects import endpoint, endpointslice, service, serviceexport
from federation.registry.embedded import EtcdProcess
from tests.integration.agentproc import AgentProcess, write_config
from tests.util import eventually


def status_conditions(api: DevApiServer, name: str) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message) of a ServiceExport's conditions, as the API server holds them."""
    se = api.get("serviceexports", "shop", name) or {}
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in (se.get("status") or {}).get("conditions", [])}


async def test_agent_exports_from_kubernetes_and_writes_status(etcd: EtcdProcess, tmp_path: Path) -> None:
    async with DevApiServer() as api:
        api.put(service())
        api.put(endpointslice(endpoints=[endpoint("10.244.1.5")]))
        api.put(serviceexport())
        api.put(serviceexport(name="ghost"))  # exported, but there is no Service of that name
        kube = {"enabled": True, "kubeconfig": str(api.kubeconfig(tmp_path / "kubeconfig")), "backoff_base": 0.05,
                "backoff_cap": 0.5, "reconcile_delay": 0.01}
        cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [], kubernetes=kube)
        data = yaml.safe_load(cfg.read_text())
        data["site"]["kind"] = "kubernetes"
        cfg.write_text(yaml.safe_dump(data))
        agent = AgentProcess(cfg, tmp_path / "east").start()

        def conditions(name: str) -> dict[str, tuple[str, str, str]]:
            return status_conditions(api, name)
        try:
            await asyncio.to_thread(agent.wait_ready, 30.0)
            services: list[dict[str, object]] = []

            async def poll() -> None:
                nonlocal services
                while True:
                    services = (await asyncio.to_thread(agent.registry))["services"]
                    await asyncio.sleep(0.1)

            poller = asyncio.create_task(poll(), name="registry-poll")
            try:
                await eventually(lambda: any(s.get("name") == "web" for s in services), 20, "export in the registry")
                se = api.objects["serviceexports"][("shop", "web")]
                # Valid at once; Ready and Conflict known (and none) once the agent's mirror holds its own export.
                await eventually(lambda: conditions("web") == {
                    "Valid": ("True", "Valid", "the service is exported to the mesh"),
                    "Ready": ("True", "Exported", "the service is in the mesh registry, where other sites import it"),
                    "Conflict": ("False", "NoConflicts", "the service agrees with every other site's export"),
                }, 20, "web's ServiceExport conditions")
                await eventually(lambda: conditions("ghost").get("Valid", ("",))[:2] == ("False", "NoService"), 20,
                                 "ghost's ServiceExport conditions")
                assert conditions("ghost")["Conflict"][:2] == ("Unknown", "Pending")
                assert conditions("ghost")["Ready"][:2] == ("False", "Failed")
                for name in ("web", "ghost"):
                    for c in api.get("serviceexports", "shop", name)["status"]["conditions"]:  # type: ignore[index]
                        assert c["observedGeneration"] == 1
                        assert c["lastTransitionTime"].endswith("Z")
                await eventually(lambda: api.get("serviceimports", "shop", "web") is not None, 20, "own import")
            finally:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            assert se["metadata"]["name"] == "web"
        finally:
            code = await asyncio.to_thread(agent.stop)
        assert code == 0, agent.log.read_text()[-5000:]


async def test_agent_syncs_a_traffic_policy_object_into_the_registry(etcd: EtcdProcess, tmp_path: Path) -> None:
    """The agent's own wiring: its Kubernetes source syncs policy objects (unsigned: this mesh accepts them)."""
    from federation.core.keys import Keys
    from federation.core.policy.codec import policy_key
    from federation.devkit.objects import namespace
    from federation.registry.etcd import EtcdClient

    async with DevApiServer() as api:
        api.put(namespace("shop"))
        api.put({"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy",
                 "metadata": {"namespace": "shop", "name": "web", "generation": 1},
                 "spec": {"retries": {"attempts": 2}}})
        kube = {"enabled": True, "kubeconfig": str(api.kubeconfig(tmp_path / "kubeconfig")), "backoff_base": 0.05,
                "backoff_cap": 0.5, "reconcile_delay": 0.01}
        cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [], kubernetes=kube)
        data = yaml.safe_load(cfg.read_text())
        data["site"]["kind"] = "kubernetes"
        cfg.write_text(yaml.safe_dump(data))
        agent = AgentProcess(cfg, tmp_path / "east").start()

        def accepted() -> tuple[str, str] | None:
            obj = api.get("trafficpolicies", "shop", "web") or {}
            found = [(c["status"], c["message"]) for c in (obj.get("status") or {}).get("conditions", [])]
            return found[0] if found else None
        try:
            await asyncio.to_thread(agent.wait_ready, 30.0)
            await eventually(lambda: accepted() == ("True", "in the registry (unsigned)"), 20, "Accepted")
            async with EtcdClient([etcd.endpoint]) as client:
                kv = await client.get(policy_key(Keys(), "shop", "web"))
            assert kv is not None
            assert b'"meshfed.io/owner":"kubernetes/east"' in kv.value
        finally:
            code = await asyncio.to_thread(agent.stop)
        assert code == 0, agent.log.read_text()[-5000:]
