"""The kubernetes_asyncio adapter against the development API server: auth, errors, config failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.core.errors import ConfigError
from federation.devkit.apiserver import DevApiServer
from federation.devkit.objects import namespace, service
from federation.sources.kubernetes.client import ApiError, ApiUnavailable, Expired, KubeClient
from federation.sources.kubernetes.settings import KubernetesSettings


async def test_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^kubernetes\.kubeconfig: cannot load .*nope"):
        await KubeClient.connect(KubernetesSettings(kubeconfig=str(tmp_path / "nope")))


async def test_list_create_patch_delete_and_errors(tmp_path: Path) -> None:
    async with DevApiServer() as api:
        client = await KubeClient.connect(KubernetesSettings(kubeconfig=str(api.kubeconfig(tmp_path / "k"))))
        try:
            with pytest.raises(ApiError, match='namespaces "shop" not found'):
                await client.create("services", service())
            api.put(namespace("shop"))
            created = await client.create("services", service())
            assert created["spec"]["clusterIP"].startswith("10.96.")
            items, rv = await client.list_all("services")
            assert [i["metadata"]["name"] for i in items] == ["web"]
            assert int(rv) >= int(created["metadata"]["resourceVersion"])
            with pytest.raises(ApiError) as exc:
                await client.create("services", service())
            assert exc.value.code == 409
            patched = await client.patch("services", "shop", "web", {"metadata": {"labels": {"a": "b"}}})
            assert patched["metadata"]["labels"] == {"a": "b"}
            api.expire()
            with pytest.raises(Expired):
                async for _ in client.watch("services", rv, 5):
                    pass
            await client.delete("services", "shop", "web")
            with pytest.raises(ApiError) as exc:
                await client.delete("services", "shop", "web")
            assert exc.value.code == 404
            api.unavailable = True
            with pytest.raises(ApiUnavailable):
                await client.list_all("services")
        finally:
            await client.close()
        port = api.port
    client = await KubeClient.connect(KubernetesSettings(kubeconfig=str(tmp_path / "k"), request_timeout=2))
    try:
        assert port
        with pytest.raises(ApiUnavailable):  # nothing listens there any more
            await client.list_all("services")
    finally:
        await client.close()


async def test_a_reflector_that_keeps_only_labels_wakes_on_labels_only(tmp_path: Path) -> None:
    """The pods reflector keeps each pod's labels: a pod whose status changes (every probe, every restart in a
    big cluster) updates the store and wakes no reconcile; a relabelled one does."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from federation.core.backoff import Backoff
    from federation.sources.kubernetes.watching import Reflector, WatchMetrics
    from federation.sources.kubernetes.workloads import pod_kept
    from tests.util import eventually

    def pod(labels: dict[str, str], phase: str) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "shop", "name": "p", "labels": labels},
                "status": {"phase": phase}}

    async with DevApiServer() as api:
        client = await KubeClient.connect(KubernetesSettings(kubeconfig=str(api.kubeconfig(tmp_path / "k"))))
        wakes: list[int] = []
        reflector = Reflector(client, "pods", lambda: wakes.append(1), metrics=WatchMetrics(CollectorRegistry()),
                              backoff=Backoff(base=0.05, cap=0.3), keep=pod_kept)
        task = asyncio.create_task(reflector.run())
        try:
            api.put(pod({"version": "v1"}, "Pending"))
            await eventually(lambda: ("shop", "p") in reflector.store, what="the pod listed or watched")
            before = len(wakes)
            rv = reflector.store[("shop", "p")]["metadata"]["resourceVersion"]
            api.put(pod({"version": "v1"}, "Running"))
            await eventually(lambda: reflector.store[("shop", "p")]["metadata"]["resourceVersion"] != rv,
                             what="the status change seen")
            assert len(wakes) == before
            assert "status" not in reflector.store[("shop", "p")]
            api.put(pod({"version": "v2"}, "Running"))
            await eventually(lambda: len(wakes) == before + 1, what="a wake for the new label")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
