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


async def test_agent_exports_from_kubernetes_and_writes_status(etcd: EtcdProcess, tmp_path: Path) -> None:
    async with DevApiServer() as api:
        api.put(service())
        api.put(endpointslice(endpoints=[endpoint("10.244.1.5")]))
        api.put(serviceexport())
        kube = {"enabled": True, "kubeconfig": str(api.kubeconfig(tmp_path / "kubeconfig")), "backoff_base": 0.05,
                "backoff_cap": 0.5, "reconcile_delay": 0.01}
        cfg = write_config(tmp_path / "east.yaml", "east", [etcd.endpoint], tmp_path / "east", [], kubernetes=kube)
        data = yaml.safe_load(cfg.read_text())
        data["site"]["kind"] = "kubernetes"
        cfg.write_text(yaml.safe_dump(data))
        agent = AgentProcess(cfg, tmp_path / "east").start()
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
                await eventually(lambda: bool((api.get("serviceexports", "shop", "web") or {}).get("status")), 20,
                                 "ServiceExport status")
                await eventually(lambda: api.get("serviceimports", "shop", "web") is not None, 20, "own import")
            finally:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            assert se["metadata"]["name"] == "web"
        finally:
            code = await asyncio.to_thread(agent.stop)
        assert code == 0, agent.log.read_text()[-5000:]
