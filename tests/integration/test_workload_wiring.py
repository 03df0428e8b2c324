"""The agent hands its egress the site's workload index: a Kubernetes site's from its pods, a VM's from config."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from federation.agent.dataplane import DataPlane
from federation.agent.settings import parse_settings
from federation.agent.workloads import wire_workloads
from federation.core.view import MeshView
from federation.devkit.apiserver import DevApiServer
from federation.pki.issuing import save_site
from federation.runtime.values import Value
from tests.integration.test_dataplane import NoEtcd
from tests.pkihelp import Mesh


def config(tmp: Path, **extra: object) -> dict[str, object]:
    save_site(tmp / "ca", Mesh().site_ca("east"))
    return {"site": {"name": "east", "network": "net-east"}, "state_dir": str(tmp / "state"),
            "gateway": {"listen_address": "127.0.0.1", "listen_port": 0, "ca_dir": str(tmp / "ca"), "pool_size": 0},
            "dns": {"enabled": False}, **extra}


async def test_a_vm_egress_names_its_configured_workload_for_its_own_clients(tmp_path: Path) -> None:
    s = parse_settings(config(tmp_path, vm={"vip_interface": "", "address": "192.0.2.7",
                                            "workload_identity": "billing/batch"}), "east.yaml", {})
    plane = DataPlane(s, Value(MeshView.before_sync()), CollectorRegistry(), NoEtcd())
    await plane.start()
    try:
        await wire_workloads(plane)
        assert plane.egress is not None
        assert plane.egress.workloads.get().lookup("127.0.0.1") == "billing/batch"
        assert plane.egress.workloads.get().lookup("192.0.2.7") == "billing/batch"
        assert plane.egress.workloads.get().lookup("192.0.2.8") is None
    finally:
        await plane.close()


async def test_a_kubernetes_egress_follows_the_sources_pod_index(tmp_path: Path) -> None:
    async with DevApiServer() as api:
        s = parse_settings({**config(tmp_path, kubernetes={"enabled": True, "policies": False,
                                                           "kubeconfig": str(api.kubeconfig(tmp_path / "k"))}),
                            "site": {"name": "east", "network": "net-east", "kind": "kubernetes"}}, "east.yaml", {})
        plane = DataPlane(s, Value(MeshView.before_sync()), CollectorRegistry(), NoEtcd())
        await plane.start()
        try:
            await wire_workloads(plane)
            assert plane.egress is not None
            assert plane.kubernetes is not None
            assert plane.egress.workloads is plane.kubernetes.workloads  # the source's holder, followed live
        finally:
            await plane.close()
